"""ONNX Runtime: sessions made the same way at export (validation) and at generation, and the onnx backend.

Pitfalls this module exists for (shared/design.md section 3):
- onnxruntime-gpu on a host without a usable GPU lists the CUDA and TensorRT providers
  and then silently runs on the CPU. A provider counts only when
  `session.get_providers()` lists it after the session was created.
- Offline-optimized graphs are specific to the provider that optimized them: the
  `model.ort.onnx` written at export was optimized for the CPU provider and is only
  loaded by it; GPU providers load the portable `model.onnx` and optimize online.
- GPU providers get explicit options (`provider_options`): `device_id` from `cuda:N`
  (without it every session runs on GPU 0); the CUDA provider
  `cudnn_conv_algo_search=HEURISTIC` (its default, EXHAUSTIVE, benchmarks every cuDNN
  algorithm of every convolution shape at the first run of each batch size: seconds per
  shape for a UNet, and workspace memory) and for fp32 graphs `use_tf32=0` (TF32 is on by
  default from Ampere on and misses the fp32 tolerance, which would drop the backend to
  torch); the TensorRT provider an engine cache, a timing cache and one explicit shape
  profile covering the bundle's batch sizes (else it rebuilds engines whenever a new batch
  shape appears, and again in every process).
- fp16 sessions on the CUDA provider load the UNet graph ONNX Runtime's transformer
  optimizer fused at export (`unet/model.fp16.cuda.onnx`, `ort_fusions` in the manifest:
  GroupNorm, NhwcConv, BiasSplitGelu, ...) when the bundle has one. A CPU host could not
  run it at export, so it is always checked against the validation file when loaded, and a
  miss (or a load failure) falls back to the plain fp16 graph with a note.
- On a GPU the runners bind torch CUDA tensors to the sessions (IO binding): latents
  stay on the device for the whole loop, as in bench/unet.py, instead of a host round
  trip per component call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from auditor.backends._base import BackendInfo, library_versions
from auditor.backends.engines.bundle import BackendUnavailable, Bundle, load_validation
from auditor.backends.engines.components import (
    ComponentContract,
    ComponentSpec,
    compare,
)
from auditor.backends.engines.loop import PRECISION_DTYPES, EngineGenerator, SpecRunners
from auditor.errors import BadInputError, first_line

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}

# Offline levels tried at export, best first; "none" keeps the portable graph.
OFFLINE_LEVELS = ("extended", "basic", "none")


def provider_name(name: str) -> str:
    full = PROVIDER_ALIASES.get(name.lower(), name)
    if not full.endswith("ExecutionProvider"):
        raise BadInputError(
            f"ONNX Runtime provider {name!r}: expected cpu, cuda, tensorrt or a full provider name"
        )
    return full


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_threads() -> int:
    """Follow torch's intra-op setting, so `--threads` / tests' 1 thread apply to both runtimes."""
    import torch

    return max(1, int(torch.get_num_threads()))


def session_options(threads: int | None = None, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    return so


def make_session(
    path: str | os.PathLike[str],
    providers: Sequence[str | tuple[str, dict]] = (CPU_PROVIDER,),
    threads: int | None = None,
):
    """An InferenceSession on `providers` (in order); the caller checks `get_providers()`."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=list(providers))


def optimize_offline(
    src: Path, dst: Path, level: str, external_data: bool, threads: int | None = None
) -> None:
    """Write ONNX Runtime's `level`-optimized graph of `src` for the CPU provider to `dst`."""
    import onnxruntime as ort

    so = session_options(threads, level)
    so.optimized_model_filepath = str(dst)
    if external_data:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", dst.name + ".data"
        )
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=[CPU_PROVIDER])


# ---------------------------------------------------------------- the onnx backend


class OrtRunners(SpecRunners):
    """ComponentRunners over ONNX Runtime sessions, one per component (numpy at the boundary: the CPU provider)."""

    def __init__(self, sessions: dict) -> None:
        import torch

        self.sessions = sessions
        self.device = torch.device("cpu")
        self.max_images = None

    def run(self, spec: ComponentSpec, *tensors):
        import torch

        feeds = {
            name: np.ascontiguousarray(value.detach().cpu().numpy())
            for name, value in zip(spec.input_names, tensors, strict=True)
        }
        return tuple(
            torch.from_numpy(v) for v in self.sessions[spec.name].run(list(spec.output_names), feeds)
        )


class BoundRunners(SpecRunners):
    """ComponentRunners that bind torch tensors on `device` to the sessions (IO binding): no host copies.

    Inputs are converted to the contract's dtypes on the device, the output is a torch tensor
    allocated on the device and bound by address. On CUDA, torch's stream is synchronized
    before each run (ORT reads what torch wrote) and ORT's run returns when its stream is done.
    """

    def __init__(self, sessions: dict, contracts: dict[str, ComponentContract], device) -> None:
        self.sessions = sessions
        self.contracts = contracts
        self.device = device
        self.max_images = None

    def run(self, spec: ComponentSpec, *tensors):
        import torch

        session = self.sessions[spec.name]
        contract = self.contracts[spec.name]
        kind, index = self.device.type, self.device.index or 0
        binding = session.io_binding()
        keep = []
        for tensor_spec, value in zip(contract.inputs, tensors, strict=True):
            dtype = getattr(torch, tensor_spec.dtype)
            value = value.to(device=self.device, dtype=dtype).contiguous()
            keep.append(value)
            binding.bind_input(
                tensor_spec.name, kind, index, tensor_spec.numpy_dtype, tuple(value.shape), value.data_ptr()
            )
        outputs = []
        for out_spec in contract.outputs:
            out = torch.empty(
                out_spec.concrete(int(tensors[0].shape[0])),
                dtype=getattr(torch, out_spec.dtype),
                device=self.device,
            )
            binding.bind_output(
                out_spec.name, kind, index, out_spec.numpy_dtype, tuple(out.shape), out.data_ptr()
            )
            outputs.append(out)
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return tuple(outputs)


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def provider_options(
    provider: str,
    *,
    device_index: int,
    precision: str,
    contract: ComponentContract | None,
    cache_dir: Path | None,
) -> tuple[str, dict[str, str]] | str:
    """`provider` with the options it needs here (see module doc); the CPU provider takes none."""
    if provider == CUDA_PROVIDER:
        options = {"device_id": str(device_index), "cudnn_conv_algo_search": "HEURISTIC"}
        if precision == "fp32":
            options["use_tf32"] = "0"
        return provider, options
    if provider == TENSORRT_PROVIDER:
        options = {"device_id": str(device_index), "trt_fp16_enable": "1" if precision == "fp16" else "0"}
        if cache_dir is not None:
            options |= {
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": str(cache_dir),
                "trt_timing_cache_enable": "1",
            }
        if contract is not None:  # one profile from 1 row to the largest batch size's rows
            largest = max(contract.profiles, key=lambda p: p.image_batch)
            one_row = {spec.name: spec.concrete(1) for spec in contract.inputs}
            for which, shapes in (("min", one_row), ("opt", largest.opt), ("max", largest.max)):
                options[f"trt_profile_{which}_shapes"] = ",".join(
                    f"{name}:{'x'.join(str(d) for d in shapes[name])}" for name in contract.input_names
                )
        return provider, options
    return provider


def _requested_providers(device: str, providers: Sequence[str] | None) -> list[str]:
    if providers:
        return [provider_name(p) for p in providers]
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "auto":
        return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available_providers() else [CPU_PROVIDER]
    if device.startswith("cuda"):
        return [CUDA_PROVIDER, CPU_PROVIDER]
    raise BadInputError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


class OnnxGenerator(EngineGenerator):
    """The bundle's graphs on ONNX Runtime.

    `providers` (e.g. ["tensorrt", "cuda", "cpu"]) overrides the order `device` implies.
    The first provider must really be in the session's providers afterwards (onnxruntime-gpu
    on a host without a usable GPU falls back silently); with device="auto" and no explicit
    providers a silent fallback drops to the CPU graphs and says so in `describe().note`,
    otherwise the backend is unavailable. fp32 CPU sessions load the offline-optimized
    `model.ort.onnx`; GPU providers load the portable graph; fp16 (`precision="fp16"`,
    a bundle exported with --precision fp16) loads the fp16 graphs on any provider.
    """

    backend = "onnx"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        providers: Sequence[str] | None = None,
        batch_size: int = 16,
        threads: int | None = None,
        validate: str = "auto",
        precision: str = "fp32",
        io_binding: bool | None = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from None
        if validate not in ("auto", "always", "never"):
            raise BadInputError(f"validate {validate!r}: expected auto, always or never")
        self.notes: list[str] = []
        self.precision = precision
        self.device_index = _device_index(device)
        components = list(bundle.manifest.components)
        graphs = {name: bundle.manifest.graph_for(name, precision) for name in components}
        requested = _requested_providers(device, providers)
        missing = [p for p in requested if p not in available_providers()]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime {onnxruntime.__version__} lacks {', '.join(missing)}"
                f" (available: {', '.join(available_providers())}; for GPUs install onnxruntime-gpu"
                " and not onnxruntime beside it)"
            )
        # self.fused: components whose session runs ONNX Runtime's fused CUDA graph
        sessions, self.fused, load_notes = self._sessions(bundle, requested, threads, graphs)
        lacking = [s.get_providers() for s in sessions.values() if requested[0] not in s.get_providers()]
        if lacking:
            got = lacking[0]
            if device == "auto" and not providers:
                self.notes.append(
                    f"{requested[0]} was listed but the session fell back to {got[0]}; running on the CPU"
                )
                requested = [CPU_PROVIDER]
                sessions, self.fused, load_notes = self._sessions(bundle, requested, threads, graphs)
            else:
                raise BackendUnavailable(
                    f"ONNX Runtime did not get {requested[0]} (the session runs on {', '.join(got)});"
                    " no usable GPU behind the provider"
                )
        self.notes += load_notes  # the notes of the sessions kept, not of a pass that fell back
        self.providers = sessions["unet"].get_providers()
        self.threads = threads
        recorded = bundle.manifest.tools.get("onnxruntime")
        check_all = validate == "always" or (
            validate == "auto" and (self.providers[0] != CPU_PROVIDER or recorded != onnxruntime.__version__)
        )
        for name in components:
            record = bundle.manifest.components[name]
            if name in self.fused:  # never validated on a GPU at export: always checked here
                parity = self._parity(bundle, sessions[name], record)
                if parity.passed:
                    continue
                self.notes.append(
                    f"{name}: ONNX Runtime's fused fp16 graph misses its tolerance here ({parity.summary()});"
                    " running the plain fp16 graph"
                )
                self.fused.discard(name)
                sessions[name] = self._session(bundle, name, requested, threads, graphs[name], cache_dir=None)
            if check_all:
                self._check_parity(bundle, name, sessions[name], record)
        on_gpu = self.providers[0] != CPU_PROVIDER
        if io_binding if io_binding is not None else on_gpu:
            import torch

            contracts = {name: bundle.manifest.components[name].contract for name in components}
            where = torch.device("cuda", self.device_index) if on_gpu else torch.device("cpu")
            runners: SpecRunners = BoundRunners(sessions, contracts, where)
        else:
            runners = OrtRunners(sessions)
        super().__init__(bundle, runners, batch_size)

    def _sessions(
        self, bundle: Bundle, providers: list[str], threads: int | None, graphs: dict[str, str]
    ) -> tuple[dict, set[str], list[str]]:
        """(sessions, the components on the fused CUDA graph, notes on fused graphs that did not load)."""
        cache_dir = None
        if TENSORRT_PROVIDER in providers:
            from auditor.backends.engines.engine_cache import default_cache_root

            cache_dir = default_cache_root(bundle.root) / "ort-tensorrt"
            cache_dir.mkdir(parents=True, exist_ok=True)
        fused: set[str] = set()
        notes: list[str] = []
        out = {}
        for name in graphs:
            record = bundle.manifest.components[name]
            fusion = record.ort_fusion("cuda")
            if providers[0] == CUDA_PROVIDER and self.precision == "fp16" and fusion and fusion.onnx:
                try:
                    out[name] = self._session(bundle, name, providers, threads, fusion.onnx, cache_dir)
                    fused.add(name)
                    continue
                except BackendUnavailable as exc:
                    notes.append(f"{first_line(exc)}: running the plain fp16 graph")
            out[name] = self._session(bundle, name, providers, threads, graphs[name], cache_dir)
        return out, fused, notes

    def _session(
        self, bundle: Bundle, name: str, providers: list[str], threads: int | None, graph: str, cache_dir
    ):
        record = bundle.manifest.components[name]
        # the offline-optimized CPU graph exists for the fp32 graph only
        path = bundle.path(record.ort_cpu if providers == [CPU_PROVIDER] and graph == record.onnx else graph)
        configured = [
            provider_options(
                p,
                device_index=self.device_index,
                precision=self.precision,
                contract=record.contract,
                cache_dir=cache_dir,
            )
            for p in providers
        ]
        try:
            return make_session(path, configured, threads)
        except Exception as exc:  # onnxruntime raises its own exception types  # noqa: BLE001
            raise BackendUnavailable(
                f"ONNX Runtime could not load {name} from {graph} ({first_line(exc)})"
            ) from None

    def _parity(self, bundle: Bundle, session, record):
        inputs, references = load_validation(bundle.path(record.validation.path))
        contract = record.contract
        values = session.run(contract.output_names, {n: inputs[n] for n in contract.input_names})
        exported = record.fp16.parity if self.precision == "fp16" and record.fp16 else record.parity
        return compare(
            dict(zip(contract.output_names, values, strict=True)),
            references,
            exported.tolerance,
            f"onnxruntime {session.get_providers()[0]} ({self.precision})",
            record.parity.seed,
        )

    def _check_parity(self, bundle: Bundle, name: str, session, record) -> None:
        parity = self._parity(bundle, session, record)
        if not parity.passed:
            raise BackendUnavailable(f"{name} misses its tolerance on this host ({parity.summary()})")

    def describe(self) -> BackendInfo:
        import onnxruntime

        if self.providers[0] == CPU_PROVIDER:
            device = "cpu"
        else:
            import torch

            available = torch.cuda.is_available()
            device = torch.cuda.get_device_name(self.device_index) if available else self.providers[0]
        return BackendInfo(
            backend="onnx",
            device=device,
            dtype=PRECISION_DTYPES[self.precision],
            versions=library_versions(
                onnxruntime=onnxruntime.__version__,
                providers=",".join(self.providers),
                bundle_source=self.bundle.manifest.source.digest,
                **({"ort_fused_graphs": ",".join(sorted(self.fused))} if self.fused else {}),
            ),
            note=self.note,
        )

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) or None
