"""Generators over an engine bundle: ONNX Runtime and TensorRT, with a torch fallback.

    load_engine_generator(bundle, backend="onnx" | "tensorrt", device="auto", dtype=..., batch_size=...)

Both backends run the single denoising loop of `export.loop` and differ only in the
component runners they hand it. Opening a bundle re-hashes every file and, when a
`model=` is given, checks it is the bundle's source (`export.manifest.load_bundle`);
those failures are refusals, never fallbacks.

Fallback: when the bundle failed its parity check at export, or the backend cannot run
here (no onnxruntime / provider, no TensorRT or CUDA, an engine off its tolerance),
the loader returns a TorchGenerator on the source model instead: the `model=` given,
or the manifest's relative path to it when that folder still has the recorded digest.
`describe().note` then says what was asked for and why it did not run. With no source
model at hand the loader raises BadInputError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from auditor.config import GenerationSettings
from auditor.errors import BadInputError
from auditor.generation import BackendInfo, TorchGenerator, _check_pairs, resolve_device
from export.contract import COMPONENTS, compare
from export.errors import BackendUnavailable
from export.loop import DenoisingLoop, PipelineSpec
from export.manifest import Bundle, check_source, load_bundle

ENGINE_BACKENDS = ("onnx", "tensorrt")
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16"}


def engine_precision(dtype: str) -> str:
    """The bundle graph precision that runs `dtype` (engine backends have no bfloat16 graphs)."""
    for precision, name in PRECISION_DTYPES.items():
        if dtype == name:
            return precision
    raise BadInputError(f"dtype {dtype!r}: engine backends run float32 or float16 graphs")


def _versions(**extra: str) -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        **extra,
    }


class EngineGenerator:
    """What the ONNX Runtime and TensorRT generators share: bundle, tokenizer, scheduler, loop."""

    backend = "engine"

    def __init__(self, bundle: Bundle, runners, batch_size: int) -> None:
        import diffusers
        import transformers

        from export.exporter import quiet_hf

        quiet_hf()
        if batch_size < 1:
            raise BadInputError(f"batch size {batch_size}: expected at least 1")
        self.bundle = bundle
        self.batch_size = batch_size
        manifest = bundle.manifest
        try:
            tokenizer_cls = getattr(transformers, manifest.pipeline.tokenizer_class)
            tokenizer = tokenizer_cls.from_pretrained(bundle.path("tokenizer"))
            raw = json.loads(bundle.path("scheduler/scheduler_config.json").read_text(encoding="utf-8"))
            scheduler = getattr(diffusers, str(raw.get("_class_name", manifest.pipeline.scheduler_class)))
            scheduler_config = dict(scheduler.from_config(raw).config)
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise BadInputError(
                f"{bundle.root}: could not load the bundle's tokenizer or scheduler ({exc})"
            ) from None
        shapes = manifest.shapes
        spec = PipelineSpec(
            height=shapes.height,
            width=shapes.width,
            latent_channels=shapes.latent_channels,
            vae_scale_factor=shapes.vae_scale_factor,
            scaling_factor=manifest.pipeline.scaling_factor,
        )
        self.loop = DenoisingLoop(runners, tokenizer, scheduler_config, spec)

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        _check_pairs(prompts, seeds)
        return self.loop.generate(prompts, seeds, settings, self.batch_size)


# ---------------------------------------------------------------- ONNX Runtime


class OrtRunners:
    """ComponentRunners over three ONNX Runtime sessions (numpy at the session boundary)."""

    def __init__(self, sessions: dict) -> None:
        import torch

        self.sessions = sessions
        self.device = torch.device("cpu")
        self.max_images = None

    def _run(self, component: str, output: str, feeds: dict):
        import torch

        arrays = {name: np.ascontiguousarray(value.detach().cpu().numpy()) for name, value in feeds.items()}
        return torch.from_numpy(self.sessions[component].run([output], arrays)[0])

    def encode_text(self, input_ids):
        return self._run("text_encoder", "last_hidden_state", {"input_ids": input_ids})

    def predict_noise(self, sample, timestep, encoder_hidden_states):
        feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states}
        return self._run("unet", "noise_pred", feeds)

    def decode(self, latents):
        return self._run("vae_decoder", "sample", {"latent_sample": latents})


def _requested_providers(device: str, providers: Sequence[str] | None) -> list[str]:
    from export.ort import CPU_PROVIDER, CUDA_PROVIDER, available_providers, provider_name

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
    ) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from None
        from export.ort import CPU_PROVIDER, available_providers

        if validate not in ("auto", "always", "never"):
            raise BadInputError(f"validate {validate!r}: expected auto, always or never")
        self.note: str | None = None
        self.precision = precision
        graphs = {name: bundle.manifest.graph_for(name, precision) for name in COMPONENTS}
        requested = _requested_providers(device, providers)
        missing = [p for p in requested if p not in available_providers()]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime {onnxruntime.__version__} lacks {', '.join(missing)}"
                f" (available: {', '.join(available_providers())}; for GPUs install onnxruntime-gpu"
                " and not onnxruntime beside it)"
            )
        sessions = self._sessions(bundle, requested, threads, graphs)
        lacking = [s.get_providers() for s in sessions.values() if requested[0] not in s.get_providers()]
        if lacking:
            got = lacking[0]
            if device == "auto" and not providers:
                self.note = (
                    f"{requested[0]} was listed but the session fell back to {got[0]}; running on the CPU"
                )
                requested = [CPU_PROVIDER]
                sessions = self._sessions(bundle, requested, threads, graphs)
            else:
                raise BackendUnavailable(
                    f"ONNX Runtime did not get {requested[0]} (the session runs on {', '.join(got)});"
                    " no usable GPU behind the provider"
                )
        self.providers = sessions["unet"].get_providers()
        self.threads = threads
        recorded = bundle.manifest.tools.get("onnxruntime")
        if validate == "always" or (
            validate == "auto" and (self.providers[0] != CPU_PROVIDER or recorded != onnxruntime.__version__)
        ):
            for name in COMPONENTS:
                record = bundle.manifest.components[name]
                self._check_parity(bundle, name, sessions[name], record)
        super().__init__(bundle, OrtRunners(sessions), batch_size)

    @staticmethod
    def _sessions(bundle: Bundle, providers: list[str], threads: int | None, graphs: dict[str, str]) -> dict:
        from export.ort import CPU_PROVIDER, make_session

        cpu_only = providers == [CPU_PROVIDER]
        out = {}
        for name in COMPONENTS:
            record = bundle.manifest.components[name]
            # the offline-optimized CPU graph exists for the fp32 graph only
            path = bundle.path(record.ort_cpu if cpu_only and graphs[name] == record.onnx else graphs[name])
            try:
                out[name] = make_session(path, providers, threads)
            except Exception as exc:  # onnxruntime raises its own exception types  # noqa: BLE001
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BackendUnavailable(f"ONNX Runtime could not load {name} ({first})") from None
        return out

    def _check_parity(self, bundle: Bundle, name: str, session, record) -> None:
        from export.exporter import load_validation

        inputs, references = load_validation(bundle.path(record.validation.path))
        contract = record.contract
        values = session.run(contract.output_names, {n: inputs[n] for n in contract.input_names})
        exported = record.fp16.parity if self.precision == "fp16" and record.fp16 else record.parity
        parity = compare(
            dict(zip(contract.output_names, values, strict=True)),
            references,
            exported.tolerance,
            f"onnxruntime {session.get_providers()[0]} ({self.precision})",
            record.parity.seed,
        )
        if not parity.passed:
            raise BackendUnavailable(f"{name} misses its tolerance on this host ({parity.summary()})")

    def describe(self) -> BackendInfo:
        import onnxruntime

        from export.ort import CPU_PROVIDER

        if self.providers[0] == CPU_PROVIDER:
            device = "cpu"
        else:
            import torch

            device = torch.cuda.get_device_name() if torch.cuda.is_available() else self.providers[0]
        return BackendInfo(
            backend="onnx",
            device=device,
            dtype=PRECISION_DTYPES[self.precision],
            versions=_versions(
                onnxruntime=onnxruntime.__version__,
                providers=",".join(self.providers),
                bundle_source=self.bundle.manifest.source.digest,
            ),
            note=self.note,
        )


# ---------------------------------------------------------------- TensorRT


class TensorRTGenerator(EngineGenerator):
    """The bundle's graphs as TensorRT engines (cached per TensorRT version and GPU, built on a miss)."""

    backend = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 16,
        engine_cache: str | os.PathLike[str] | None = None,
        reporter=None,
    ) -> None:
        from export.trt import open_engines, tensorrt_status

        reason = tensorrt_status()
        if reason:
            raise BackendUnavailable(reason)
        import tensorrt
        import torch

        precision = engine_precision(dtype)
        if device == "cpu":
            raise BackendUnavailable("TensorRT needs a CUDA device and --device cpu was given")
        device = resolve_device(device)
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        runners, parities, built = open_engines(
            bundle, precision, self.device, Path(engine_cache) if engine_cache else None, reporter
        )
        failed = [p.summary() for p in parities if not p.passed]
        if failed:
            raise BackendUnavailable(f"TensorRT engines miss their tolerance: {'; '.join(failed)}")
        self.note = f"engines built on this host for {', '.join(built)}" if built else None
        self.tensorrt_version = str(tensorrt.__version__)
        super().__init__(bundle, runners, batch_size)

    def describe(self) -> BackendInfo:
        import torch

        return BackendInfo(
            backend="tensorrt",
            device=torch.cuda.get_device_name(self.device),
            dtype=self.dtype,
            versions=_versions(
                tensorrt=self.tensorrt_version, bundle_source=self.bundle.manifest.source.digest
            ),
            note=self.note,
        )


# ---------------------------------------------------------------- loading, fallback


class FallbackGenerator:
    """TorchGenerator on the source model, standing in for an engine backend that cannot run."""

    def __init__(self, inner: TorchGenerator, note: str) -> None:
        self.inner = inner
        self.note = note

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        return self.inner.generate(prompts, seeds, settings)

    def describe(self) -> BackendInfo:
        return self.inner.describe().model_copy(update={"note": self.note})


def _fallback_source(bundle: Bundle, model: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The verified source model folder for a torch fallback, or None and why not."""
    if model is not None:
        return Path(model), ""  # already checked against the manifest by load_bundle
    candidate = bundle.source_candidate()
    if candidate is None or not (candidate / "model_index.json").is_file():
        return (
            None,
            f"the source model is not at {bundle.manifest.source.relative_path!r} relative to the bundle",
        )
    try:
        check_source(bundle.manifest, candidate)
    except BadInputError as exc:
        return None, str(exc)
    return candidate, ""


def load_engine_generator(
    bundle: str | os.PathLike[str],
    backend: str = "onnx",
    *,
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int = 16,
    model: str | os.PathLike[str] | None = None,
    source_model: str | os.PathLike[str] | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    validate: str = "auto",
    engine_cache: str | os.PathLike[str] | None = None,
):
    """Open `bundle` with an engine backend, or fall back to torch on its source model (see module doc).

    `model` (alias `source_model`, the name to use through `auditor.generation.load_generator`,
    whose first parameter is already called `model`) is the source model: checked against
    the manifest's digest, and the torch fallback's model.
    """
    if model is not None and source_model is not None and Path(model) != Path(source_model):
        raise BadInputError("model= and source_model= name two different models; pass one")
    model = model if model is not None else source_model
    if backend not in ENGINE_BACKENDS:
        raise BadInputError(f"backend {backend!r}: expected one of {list(ENGINE_BACKENDS)}")
    precision = engine_precision(dtype)
    opened = load_bundle(bundle, model=model)
    try:
        if not opened.manifest.parity_passed:
            failed = opened.manifest.failed_parity() or ["TensorRT engines"]
            raise BackendUnavailable(f"the bundle failed its parity check at export: {'; '.join(failed)}")
        if backend == "onnx":
            return OnnxGenerator(
                opened,
                device=device,
                providers=providers,
                batch_size=batch_size,
                threads=threads,
                validate=validate,
                precision=precision,
            )
        return TensorRTGenerator(
            opened, device=device, dtype=dtype, batch_size=batch_size, engine_cache=engine_cache
        )
    except BackendUnavailable as exc:
        reason = str(exc)
    source, why_not = _fallback_source(opened, model)
    if source is None:
        raise BadInputError(
            f"{bundle}: the {backend} backend cannot run this bundle ({reason}), and there is no torch fallback"
            f" ({why_not}); pass the source model with model=/--model"
        )
    inner = TorchGenerator(source, device=device, dtype=dtype, batch_size=batch_size)
    return FallbackGenerator(
        inner, f"{backend} backend not used: {reason}; fell back to torch on {source.name}"
    )
