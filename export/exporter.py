"""Export a diffusers Stable Diffusion folder into an engine bundle.

    text encoder (input_ids -> last_hidden_state)
    UNet         (sample, timestep, encoder_hidden_states -> noise_pred)
    VAE decoder  (latents / scaling_factor -> image in [-1, 1])

Each component is exported with the TorchScript exporter (`torch.onnx.export(...,
dynamo=False)`: the dynamo exporter needs onnxscript and was 7-13x slower here), the
batch axis dynamic and the resolution fixed. Weights beyond the 2 GB protobuf limit go
to one external-data file per component. ONNX Runtime then optimizes each graph
offline for its CPU provider (extended level, else basic, else none: the first level
whose graph still validates is kept). Validation runs torch and the graph on seeded
random inputs and holds the result to the component's contract tolerance; the figures
go into the manifest, and a miss raises `ParityError` (exit 2) after the bundle is
written with `parity_passed: false`, so engine backends refuse it and fall back.

`--precision fp16` adds an fp16 graph per component beside the fp32 one, traced from an
fp16 copy of the torch module. The precision has to live in the graph: TensorRT 11
removed the FP16 builder flag (every network is strongly typed), and the same graph
runs on ONNX Runtime, so it is validated here, on any host, against torch's fp32
outputs at the fp16 tolerance.

Why not optimum: its ONNX exporters now live in `optimum-onnx`, which pins
transformers < 4.58, while this project runs transformers 5 (docs/export.md).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from auditor.errors import BadInputError
from auditor.fileio import atomic_write_bytes
from auditor.progress import Reporter
from export.contract import (
    COMPONENTS,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCES,
    SUPPORTED_OPSETS,
    ComponentContract,
    ExportShapes,
    ParityRecord,
    Tolerance,
    build_contracts,
    compare,
)
from export.errors import ExportError, ParityError
from export.manifest import (
    MANIFEST_NAME,
    BundleManifest,
    ComponentRecord,
    FileRecord,
    HalfGraphRecord,
    PipelineRecord,
    SourceRecord,
    file_record,
    save_manifest,
)

# protobuf refuses messages over 2 GiB; leave room for the graph itself
EXTERNAL_DATA_MIN_BYTES = 1_800_000_000
VALIDATION_BATCH = 3  # differs from the trace batch (2), so a batch size baked into the graph shows
TRACE_BATCH = 2
SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)


def quiet_hf() -> None:
    """No progress bars from diffusers/transformers loading inside a CLI command or a test."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


# ---------------------------------------------------------------- graphs


def _graph_modules():
    import torch

    class TextEncoderGraph(torch.nn.Module):
        def __init__(self, text_encoder) -> None:
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):
            return self.text_encoder(input_ids, return_dict=False)[0]

    class UNetGraph(torch.nn.Module):
        def __init__(self, unet) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(
                sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False
            )[0]

    class VaeDecoderGraph(torch.nn.Module):
        def __init__(self, vae) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    return TextEncoderGraph, UNetGraph, VaeDecoderGraph


def half_graph(module, contract: ComponentContract, upcast_attention: bool = False):
    """An fp16 copy of a graph module, float32 at the contract's boundary (Cast nodes in the graph).

    Mirrors StableDiffusionPipeline at torch_dtype=float16: weights and activations fp16,
    timesteps float32 (the UNet embeds them in fp32, then casts; Euler's fractional
    timesteps would lose digits in fp16), token ids untouched, the VAE in fp16 whatever
    its `force_upcast` says (the SD pipeline ignores it). A UNet configured with
    `upcast_attention` (SD 2.x) gets diffusers' classic attention processor, which
    computes QK^T and the softmax in fp32; the SDPA decomposition would run them in fp16,
    and SD 2.x's attention overflows there. The text encoder gets transformers' eager
    attention: its SDPA path traced in fp16 leaves a float32 tensor feeding an fp16
    LayerNormalization, a graph ONNX Runtime refuses to load (measured with
    transformers 5.23, torch 2.13).
    """
    import copy

    import torch

    class HalfPrecisionGraph(torch.nn.Module):
        def __init__(self, inner, cast: tuple[bool, ...]) -> None:
            super().__init__()
            self.inner = inner
            self.cast = cast

        def forward(self, *args):
            args = [a.half() if cast else a for a, cast in zip(args, self.cast, strict=True)]
            return self.inner(*args).float()

    inner = copy.deepcopy(module).half().eval()
    if contract.component == "text_encoder":
        inner.text_encoder.set_attn_implementation("eager")
    if upcast_attention:
        from diffusers.models.attention_processor import AttnProcessor

        inner.unet.set_attn_processor(AttnProcessor())
    cast = tuple(spec.dtype == "float32" and spec.name != "timestep" for spec in contract.inputs)
    return HalfPrecisionGraph(inner, cast).eval()


class SourcePipeline:
    """The torch components of a diffusers Stable Diffusion folder, loaded for export."""

    def __init__(self, model: Path) -> None:
        import json

        import diffusers
        import transformers

        from auditor.generation import validate_pipeline_folder

        validate_pipeline_folder(model)
        quiet_hf()
        self.path = model
        try:
            self.index = json.loads((model / "model_index.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"{model}/model_index.json: expected JSON ({exc})") from None
        kind = self.index.get("_class_name")
        if kind not in SUPPORTED_PIPELINES:
            raise ExportError(
                f"{model}: pipeline {kind!r} is not exportable; expected one of {list(SUPPORTED_PIPELINES)}"
            )
        try:
            self.tokenizer_class = str(self.index["tokenizer"][1])
            encoder_class = str(self.index["text_encoder"][1])
            self.tokenizer = getattr(transformers, self.tokenizer_class).from_pretrained(model / "tokenizer")
            self.text_encoder = (
                getattr(transformers, encoder_class).from_pretrained(model / "text_encoder").eval()
            )
            self.unet = diffusers.UNet2DConditionModel.from_pretrained(model / "unet").eval()
            self.vae = diffusers.AutoencoderKL.from_pretrained(model / "vae").eval()
            self.scheduler_config = json.loads(
                (model / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(
                f"{model}: could not load the Stable Diffusion components ({first})"
            ) from None
        for module in (self.text_encoder, self.unet, self.vae):
            module.float()
        cfg = self.unet.config
        if (
            cfg.time_cond_proj_dim is not None
            or cfg.addition_embed_type is not None
            or cfg.class_embed_type is not None
        ):
            raise ExportError(
                f"{model}: UNet takes extra conditioning (timestep_cond / added_cond_kwargs / class labels);"
                " only plain text-conditioned Stable Diffusion UNets are exportable"
            )
        if cfg.in_channels != self.vae.config.latent_channels:
            raise ExportError(
                f"{model}: UNet in_channels {cfg.in_channels} != VAE latent channels {self.vae.config.latent_channels}"
                " (inpainting/depth UNets are not exportable)"
            )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.upcast_attention = bool(getattr(cfg, "upcast_attention", False))

    def default_size(self) -> tuple[int, int]:
        """What StableDiffusionPipeline uses when height/width are None."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (size[0], size[1])
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def shapes(self, height: int | None, width: int | None, batch_sizes: Sequence[int]) -> ExportShapes:
        dh, dw = self.default_size()
        height, width = height or dh, width or dw
        unit = self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)
        for label, value in (("height", height), ("width", width)):
            if value % 8 or value % unit:
                raise BadInputError(
                    f"--{label} {value}: expected a multiple of 8 and of {unit} (VAE and UNet downsampling)"
                )
        text_length = int(self.tokenizer.model_max_length)
        if text_length > int(self.text_encoder.config.max_position_embeddings):
            raise ExportError(
                f"{self.path}: tokenizer max length {text_length} exceeds the text encoder's"
                f" {self.text_encoder.config.max_position_embeddings} positions"
            )
        return ExportShapes(
            height=height,
            width=width,
            vae_scale_factor=self.vae_scale_factor,
            latent_channels=int(self.unet.config.in_channels),
            text_length=text_length,
            text_hidden_size=int(self.text_encoder.config.hidden_size),
            vocab_size=int(self.text_encoder.config.vocab_size),
            batch_sizes=tuple(sorted(set(batch_sizes))),
        )

    def graphs(self) -> dict:
        text, unet, vae = _graph_modules()
        return {
            "text_encoder": text(self.text_encoder).eval(),
            "unet": unet(self.unet).eval(),
            "vae_decoder": vae(self.vae).eval(),
        }


# ---------------------------------------------------------------- inputs


def sample_inputs(
    contract: ComponentContract, shapes: ExportShapes, batch: int, seed: int, scaling_factor: float
) -> dict[str, np.ndarray]:
    """Seeded random inputs in the ranges the denoising loop feeds each component."""
    rng = np.random.default_rng([seed, COMPONENTS.index(contract.component)])
    out: dict[str, np.ndarray] = {}
    for spec in contract.inputs:
        shape = spec.concrete(batch)
        if spec.name == "input_ids":
            out[spec.name] = rng.integers(0, shapes.vocab_size, size=shape).astype(spec.numpy_dtype)
        elif spec.name == "timestep":
            out[spec.name] = rng.integers(0, 1000, size=shape).astype(spec.numpy_dtype)
        elif spec.name == "latent_sample":
            out[spec.name] = (rng.standard_normal(shape) / scaling_factor).astype(spec.numpy_dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.numpy_dtype)
    return out


def torch_outputs(
    module, contract: ComponentContract, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    import torch

    args = [torch.from_numpy(inputs[name]) for name in contract.input_names]
    with torch.inference_mode():
        result = module(*args)
    result = result if isinstance(result, tuple) else (result,)
    return {name: value.float().numpy() for name, value in zip(contract.output_names, result, strict=True)}


def save_validation(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    arrays = {f"input.{k}": v for k, v in inputs.items()} | {f"output.{k}": v for k, v in outputs.items()}
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), mode=0o644)


def load_validation(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        inputs = {k.removeprefix("input."): data[k] for k in data.files if k.startswith("input.")}
        outputs = {k.removeprefix("output."): data[k] for k in data.files if k.startswith("output.")}
    return inputs, outputs


# ---------------------------------------------------------------- ONNX


def _weight_bytes(module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def export_onnx(
    module,
    contract: ComponentContract,
    shapes: ExportShapes,
    opset: int,
    dst: Path,
    work: Path,
    external_min: int,
) -> bool:
    """Trace `module` to `dst` (ONNX, opset `opset`); return whether weights went to external data."""
    import onnx
    import torch

    inputs = sample_inputs(contract, shapes, TRACE_BATCH, seed=12345, scaling_factor=1.0)
    args = tuple(torch.from_numpy(inputs[name]) for name in contract.input_names)
    work.mkdir(parents=True, exist_ok=True)
    traced = work / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape asserts; the parity check is the judge
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(traced),
                input_names=contract.input_names,
                output_names=contract.output_names,
                dynamic_axes=contract.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    # torch writes external data itself past 2 GB, one file per tensor: load and re-save as one file.
    proto = onnx.load(str(traced), load_external_data=True)
    external = _weight_bytes(module) >= external_min
    dst.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            proto,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=dst.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(dst))
    del proto
    onnx.checker.check_model(str(dst))
    shutil.rmtree(work, ignore_errors=True)
    return external


def run_onnx(path: Path, contract: ComponentContract, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from export.ort import make_session

    session = make_session(path)
    values = session.run(contract.output_names, {name: inputs[name] for name in contract.input_names})
    return dict(zip(contract.output_names, values, strict=True))


def optimize_and_validate(
    comp_dir: Path,
    contract: ComponentContract,
    external: bool,
    inputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    seed: int,
) -> tuple[str, str, ParityRecord]:
    """Offline ORT optimization, best level first; keep the first graph that validates."""
    from export.ort import OFFLINE_LEVELS, optimize_offline

    portable = comp_dir / "model.onnx"
    parity: ParityRecord | None = None
    for level in OFFLINE_LEVELS:
        if level == "none":
            candidate = portable
        else:
            candidate = comp_dir / "model.ort.onnx"
            try:
                optimize_offline(portable, candidate, level, external)
            except Exception:  # an optimizer failure only rules this level out
                _remove_graph(candidate)
                continue
        outputs = run_onnx(candidate, contract, inputs)
        parity = compare(
            outputs, references, contract.tolerance, f"onnxruntime CPUExecutionProvider ({level})", seed
        )
        if parity.passed or level == "none":
            return candidate.name, level, parity
        _remove_graph(candidate)
    raise AssertionError("unreachable: the 'none' level always returns")


def _remove_graph(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(str(path) + ".data").unlink(missing_ok=True)


# ---------------------------------------------------------------- bundle


def _tool_versions(trt: bool) -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    from auditor import __version__

    tools = {
        "t2i-auditor": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if trt:
        import tensorrt

        tools["tensorrt"] = tensorrt.__version__
    return tools


def _copy_assets(model: Path, root: Path) -> list[FileRecord]:
    records = []
    for part in ("tokenizer", "scheduler"):
        for src in sorted((model / part).rglob("*")):
            rel = src.relative_to(model)
            if src.is_file() and not any(p.startswith(".") for p in rel.parts):
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                records.append(file_record(root, rel.as_posix()))
    shutil.copyfile(model / "model_index.json", root / "model_index.json")
    records.append(file_record(root, "model_index.json"))
    return records


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BadInputError(f"--batch-sizes {text!r}: expected comma-separated positive integers") from None
    if not values or any(v < 1 or v > 1024 for v in values):
        raise BadInputError(f"--batch-sizes {text!r}: expected comma-separated integers in [1, 1024]")
    return values


def check_options(precision: str, opset: int, trt: bool) -> None:
    """Refuse impossible requests before any work (and before loading the model)."""
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"--opset {opset}: unsupported; expected {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
            f" (default {DEFAULT_OPSET}: attention needs 14+, the TorchScript exporter writes at most 20)"
        )
    if precision not in ("fp32", "fp16"):
        raise BadInputError(f"--precision {precision!r}: expected fp32 or fp16")
    if trt:
        from export.trt import require_tensorrt

        require_tensorrt()
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"export needs onnx and onnxruntime ({exc}); pip install 't2i-auditor[onnx]'"
        ) from None


def export_bundle(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    batch_sizes: Sequence[int] = (1, 16),
    height: int | None = None,
    width: int | None = None,
    trt: bool = False,
    tolerances: dict[str, Tolerance] | None = None,
    external_data_min_bytes: int = EXTERNAL_DATA_MIN_BYTES,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> BundleManifest:
    """Export `model` (a diffusers Stable Diffusion folder) to a new bundle folder `out`."""
    reporter = reporter or Reporter()
    check_options(precision, opset, trt)
    model, out = Path(model), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists and is not empty; choose another --out")
    source = SourcePipeline(model)
    shapes = source.shapes(height, width, batch_sizes)
    contracts = build_contracts(shapes, "fp32", tolerances)

    from auditor.identity import hash_model

    identity = hash_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        components: dict[str, ComponentRecord] = {}
        graphs = source.graphs()
        with reporter.task("export: ONNX", len(COMPONENTS)) as advance:
            for done, name in enumerate(COMPONENTS):
                components[name] = _export_one(
                    name,
                    graphs[name],
                    contracts[name],
                    shapes,
                    source,
                    opset,
                    staging,
                    external_data_min_bytes,
                    seed,
                    half=precision == "fp16",
                )
                advance(done + 1)
        pipeline = PipelineRecord(
            scaling_factor=source.scaling_factor,
            tokenizer_class=source.tokenizer_class,
            scheduler_class=str(source.scheduler_config.get("_class_name", "DDIMScheduler")),
            upcast_attention=source.upcast_attention,
            vae_force_upcast=bool(getattr(source.vae.config, "force_upcast", False)),
        )
        manifest = BundleManifest(
            created_by=f"t2i-auditor {_tool_versions(False)['t2i-auditor']}",
            source=SourceRecord(
                name=identity.name,
                digest=identity.digest,
                relative_path=Path(os.path.relpath(model.resolve(), out.resolve())).as_posix(),
            ),
            precision=precision,  # type: ignore[arg-type]
            opset=opset,
            shapes=shapes,
            pipeline=pipeline,
            components=components,  # type: ignore[arg-type]
            assets=tuple(_copy_assets(model, staging)),
            tools=_tool_versions(trt),
            parity_passed=all(
                record.parity.passed and (record.fp16 is None or record.fp16.parity.passed)
                for record in components.values()
            ),
        )
        if trt and manifest.parity_passed:
            from export.trt import build_bundle_engines

            engines = build_bundle_engines(staging, manifest, precision, reporter=reporter)
            manifest = manifest.model_copy(
                update={"engines": engines, "parity_passed": all(e.parity.passed for e in engines)}
            )
        save_manifest(staging, manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not manifest.parity_passed:
        failed = manifest.failed_parity() + [
            f"{e.component} ({e.parity.summary()})" for e in manifest.engines if not e.parity.passed
        ]
        raise ParityError(
            f"{out}: exported graphs miss their contract tolerance: {'; '.join(failed)};"
            f" the bundle is marked failed in {MANIFEST_NAME} and engine backends will fall back to torch"
        )
    return manifest


def _export_one(
    name: str,
    module,
    contract: ComponentContract,
    shapes: ExportShapes,
    source: SourcePipeline,
    opset: int,
    root: Path,
    external_min: int,
    seed: int,
    *,
    half: bool = False,
) -> ComponentRecord:
    start = time.perf_counter()
    comp_dir = root / name
    external = export_onnx(
        module, contract, shapes, opset, comp_dir / "model.onnx", root / f".work-{name}", external_min
    )
    inputs = sample_inputs(contract, shapes, VALIDATION_BATCH, seed, source.scaling_factor)
    references = torch_outputs(module, contract, inputs)
    save_validation(comp_dir / "validation.npz", inputs, references)
    ort_name, level, parity = optimize_and_validate(comp_dir, contract, external, inputs, references, seed)
    fp16 = None
    if half:
        upcast = name == "unet" and source.upcast_attention
        fp16 = _export_half(
            half_graph(module, contract, upcast),
            contract,
            shapes,
            opset,
            comp_dir,
            root / f".work-{name}-fp16",
            external_min,
            inputs,
            references,
            seed,
            upcast,
        )
    files = [
        file_record(root, f"{name}/{p.name}")
        for p in sorted(comp_dir.iterdir())
        if p.name != "validation.npz"
    ]
    return ComponentRecord(
        contract=contract,
        onnx=f"{name}/model.onnx",
        ort_cpu=f"{name}/{ort_name}",
        ort_optimization=level,
        external_data=external,
        files=tuple(files),
        validation=file_record(root, f"{name}/validation.npz"),
        parity=parity,
        export_seconds=round(time.perf_counter() - start, 3),
        fp16=fp16,
    )


def _export_half(
    module,
    contract: ComponentContract,
    shapes: ExportShapes,
    opset: int,
    comp_dir: Path,
    work: Path,
    external_min: int,
    inputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    seed: int,
    upcast_attention: bool,
) -> HalfGraphRecord:
    """Trace the fp16 graph and hold it to the fp16 tolerance against torch's fp32 outputs."""
    dst = comp_dir / "model.fp16.onnx"
    external = export_onnx(module, contract, shapes, opset, dst, work, external_min)
    outputs = run_onnx(dst, contract, inputs)
    parity = compare(
        outputs, references, DEFAULT_TOLERANCES["fp16"], "onnxruntime CPUExecutionProvider (fp16 graph)", seed
    )
    return HalfGraphRecord(
        onnx=f"{comp_dir.name}/{dst.name}",
        external_data=external,
        attention="fp32-upcast" if upcast_attention else "fp16",
        parity=parity,
    )
