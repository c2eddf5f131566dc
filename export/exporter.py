"""Export a diffusers Stable Diffusion or SDXL folder into an engine bundle.

    text encoder (input_ids -> last_hidden_state)
    UNet         (sample, timestep, encoder_hidden_states -> noise_pred)
    VAE decoder  (latents / scaling_factor -> image in [-1, 1])

SDXL (components_xl.py): both text encoders (input_ids -> penultimate hidden states, and
the second's pooled text_embeds), the UNet with its text_embeds and time_ids inputs, and
the VAE decoder, which stays fp32 in an fp16 bundle (its fp16 record points at the fp32
graph: SDXL's VAE overflows in fp16).

Each component is exported with the TorchScript exporter (`torch.onnx.export(...,
dynamo=False)`: the dynamo exporter needs onnxscript and was 7-13x slower here), the
batch axis dynamic and the resolution fixed. Weights beyond the 2 GB protobuf limit go
to one external-data file per component. ONNX Runtime then optimizes each graph
offline for its CPU provider (extended level, else basic, else none: the first level
whose graph still validates is kept; the UNet's first candidate is ONNX Runtime's
transformer optimizer's fused graph, `export.ort_fusion`). Validation runs torch and the graph on seeded
random inputs and holds the result to the component's contract tolerance; the figures
go into the manifest, and a miss raises `ParityError` (exit 2) after the bundle is
written with `parity_passed: false`, so engine backends refuse it and fall back.

`--precision fp16` adds an fp16 graph per component beside the fp32 one, traced from an
fp16 copy of the torch module (each component's fp16 rules: `ComponentSpec.half`). The precision has to live in the graph: TensorRT 11
removed the FP16 builder flag (every network is strongly typed), and the same graph
runs on ONNX Runtime, so it is validated here, on any host, against torch's fp32
outputs at the fp16 tolerance. The fp16 UNet is also fused for ONNX Runtime's CUDA
provider (`unet/model.fp16.cuda.onnx`), validated where that provider runs.

Why not optimum: its ONNX exporters now live in `optimum-onnx`, which pins
transformers < 4.58, while this project runs transformers 5 (docs/export.md).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from auditor.backends.engines.bundle import (
    MANIFEST_NAME,
    BundleManifest,
    ComponentRecord,
    FileRecord,
    HalfGraphRecord,
    PipelineRecord,
    SourceRecord,
    file_record,
    save_manifest,
    save_validation,
)
from auditor.backends.engines.components import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCES,
    SPECS,
    SUPPORTED_OPSETS,
    ComponentContract,
    ComponentSpec,
    ExportShapes,
    Tolerance,
    build_contracts,
    compare,
)
from auditor.errors import BadInputError
from auditor.progress import Reporter
from export.errors import ExportError, ParityError
from export.ort_fusion import cpu_record, fuse_for_cpu, fuse_for_cuda
from export.source import SourcePipeline
from export.validation import optimize_and_validate, run_graph, validation_providers

# protobuf refuses messages over 2 GiB; leave room for the graph itself
EXTERNAL_DATA_MIN_BYTES = 1_800_000_000
VALIDATION_BATCH = 3  # differs from the trace batch (2), so a batch size baked into the graph shows
TRACE_BATCH = 2


# ---------------------------------------------------------------- graphs


# ---------------------------------------------------------------- inputs


def torch_outputs(
    module, contract: ComponentContract, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    import torch

    args = [torch.from_numpy(inputs[name]) for name in contract.input_names]
    with torch.inference_mode():
        result = module(*args)
    result = result if isinstance(result, tuple) else (result,)
    return {name: value.float().numpy() for name, value in zip(contract.output_names, result, strict=True)}


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
    spec: ComponentSpec | None = None,
) -> bool:
    """Trace `module` to `dst` (ONNX, opset `opset`); return whether weights went to external data.
    `spec`: the component's spec (default: the StableDiffusionPipeline component of that name)."""
    import onnx
    import torch

    spec = spec or SPECS[contract.component]
    inputs = spec.sample_inputs(contract, shapes, TRACE_BATCH, seed=12345, scaling_factor=1.0)
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
    for part in ("tokenizer", "tokenizer_2", "scheduler"):
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
        from auditor.backends.engines.trt import require_tensorrt

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
    parity_prompts: Sequence[str] | None = None,
    parity_steps: int | None = None,
    cpu_graphs: bool = True,
    validate_on: str = "cpu",
) -> BundleManifest:
    """Export `model` (a diffusers Stable Diffusion or SDXL folder) to a new bundle folder `out`.

    With `precision="fp16"`, the fp16 graphs also run the denoising loop on `parity_prompts`
    (default: a few generic prompts) for `parity_steps` steps (0: skip) against the fp32
    graphs (`export.loop_parity`). `cpu_graphs=False` skips ONNX Runtime's offline CPU graphs
    (a bundle for GPU hosts); `validate_on="auto"` runs the checks on the CUDA provider when it
    works here."""
    reporter = reporter or Reporter()
    check_options(precision, opset, trt)
    if validate_on not in ("cpu", "auto"):
        raise BadInputError(f"--validate-on {validate_on!r}: expected cpu or auto")
    if parity_steps is not None and not 0 <= parity_steps <= 1000:
        raise BadInputError(f"--parity-steps {parity_steps}: expected 0 (skip the check) to 1000")
    model, out = Path(model), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists and is not empty; choose another --out")
    source = SourcePipeline(model)
    shapes = source.shapes(height, width, batch_sizes)
    specs = source.specs()
    contracts = build_contracts(shapes, "fp32", tolerances, specs)

    from auditor.identity import hash_model

    identity = hash_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        components: dict[str, ComponentRecord] = {}
        graphs = source.graphs()
        with reporter.task("export: ONNX", len(specs)) as advance:
            for done, name in enumerate(specs):
                components[name] = _export_one(
                    specs[name],
                    graphs[name],
                    contracts[name],
                    shapes,
                    source,
                    opset,
                    staging,
                    external_data_min_bytes,
                    seed,
                    half=precision == "fp16",
                    cpu_graphs=cpu_graphs,
                    validate_on=validate_on,
                )
                advance(done + 1)
        pipeline = PipelineRecord(
            scaling_factor=source.scaling_factor,
            tokenizer_class=source.tokenizer_class,
            scheduler_class=str(source.scheduler_config.get("_class_name", "DDIMScheduler")),
            upcast_attention=source.upcast_attention,
            vae_force_upcast=bool(getattr(source.vae.config, "force_upcast", False)),
            pipeline_class=source.pipeline,
            tokenizer_2_class=source.tokenizer_2_class,
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
        if precision == "fp16" and parity_steps != 0 and manifest.parity_passed:
            from auditor.backends.engines.bundle import Bundle
            from export.loop_parity import DEFAULT_PROMPTS, DEFAULT_STEPS, fp16_loop_parity

            with reporter.task("export: fp16 denoising-loop parity", 1) as advance:
                loop = fp16_loop_parity(
                    Bundle(staging, manifest),
                    tuple(parity_prompts or DEFAULT_PROMPTS[:2]),
                    steps=parity_steps or DEFAULT_STEPS,
                )
                advance(1)
            manifest = manifest.model_copy(
                update={"fp16_loop_parity": loop, "parity_passed": manifest.parity_passed and loop.passed}
            )
        if trt and manifest.parity_passed:
            from auditor.backends.engines.tensorrt_backend import build_bundle_engines

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
    spec: ComponentSpec,
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
    cpu_graphs: bool = True,
    validate_on: str = "cpu",
) -> ComponentRecord:
    start = time.perf_counter()
    name = spec.name
    comp_dir = root / name
    external = export_onnx(
        module, contract, shapes, opset, comp_dir / "model.onnx", root / f".work-{name}", external_min, spec
    )
    inputs = spec.sample_inputs(contract, shapes, VALIDATION_BATCH, seed, source.scaling_factor)
    references = torch_outputs(module, contract, inputs)
    save_validation(comp_dir / "validation.npz", inputs, references)
    fusions = []
    fused = fuse_for_cpu(comp_dir, external) if spec.name == "unet" and cpu_graphs else None
    ort_name, level, parity = optimize_and_validate(
        comp_dir,
        contract,
        external,
        inputs,
        references,
        seed,
        cpu_graphs=cpu_graphs,
        providers=validation_providers(validate_on, "fp32"),
        fused=fused[0] if fused else None,
    )
    if fused:
        fusions.append(cpu_record(name, *fused, ort_name, level, parity))
    fp16 = None
    if half and spec.keep_fp32_in_half:  # the fp16 set runs the fp32 graph, held to the fp16 bound
        outputs, ran_on = run_graph(comp_dir / "model.onnx", contract, inputs)
        label = f"onnxruntime {ran_on} (fp32 graph kept)"
        kept = compare(outputs, references, DEFAULT_TOLERANCES["fp16"], label, seed)
        fp16 = HalfGraphRecord(
            onnx=f"{name}/model.onnx",
            external_data=external,
            attention="sdpa-fp32",  # the fp32 graph: diffusers' SDPA, all fp32
            normalization="fp32",
            parity=kept,
            precision="fp32",
        )
    elif half:
        upcast = name == "unet" and source.upcast_attention
        fp16 = _export_half(
            spec,
            spec.half(module, upcast),
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
            validation_providers(validate_on, "fp16"),
        )
        if spec.name == "unet":  # ONNX Runtime's fused fp16 graph for its CUDA provider
            fusions.append(fuse_for_cuda(comp_dir, contract, inputs, references, seed, fp16.external_data))
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
        ort_fusions=tuple(fusions),
    )


def _export_half(
    spec: ComponentSpec,
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
    providers: list | None = None,
) -> HalfGraphRecord:
    """Trace the fp16 graph and hold it to the fp16 tolerance against torch's fp32 outputs."""
    dst = comp_dir / "model.fp16.onnx"
    external = export_onnx(module, contract, shapes, opset, dst, work, external_min, spec)
    outputs, ran_on = run_graph(dst, contract, inputs, providers)
    label = f"onnxruntime {ran_on} (fp16 graph)"
    parity = compare(outputs, references, DEFAULT_TOLERANCES["fp16"], label, seed)
    return HalfGraphRecord(
        onnx=f"{comp_dir.name}/{dst.name}",
        external_data=external,
        attention=getattr(module, "attention", None) or ("sdpa-fp32" if upcast_attention else "sdpa-fp16"),
        normalization="fp32",
        parity=parity,
    )
