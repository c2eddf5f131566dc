"""One guided denoising step: torch eager vs ONNX Runtime vs TensorRT, and the fraction of the GPU's limit.

    python bench/unet.py [--arch sd15|sdxl|tiny|tiny-sdxl] [--height 512] [--images 1[,8,30]] [--dtype float16]
                         [--backends torch,compile,onnx,tensorrt] [--bundle BUNDLE]
                         [--reps 10] [--calls 10] [--device auto] [--threads 1]
                         [--workdir DIR] [--peak-tflops X] [--json OUT] [--deadline EPOCH]

A guided step is one UNet call on 2 x images rows (unconditional and conditional
halves), the audit's unit of work. The UNet is built from its architecture with random
weights (`--arch sd15`: Stable Diffusion 1.5's 860M-parameter UNet; `sdxl`: SDXL base's
2.6B-parameter UNet at 1024x1024, with its pooled text embeddings and size-conditioning
time_ids as inputs; `tiny`, `tiny-sdxl`: the zoo's),
exported through the project's own exporter (the graph of `--dtype`'s precision only) and run
by each backend available here:

- torch eager, in `--dtype` on `--device`; `compile`: the same as the torch-compiled backend
  runs it (auditor.backends._compiled: SDPA attention, channels-last, `torch.compile` over
  static shapes, mode "reduce-overhead" (CUDA graphs) on CUDA; compile time reported apart as
  the first call; on a GPU only by default);
- ONNX Runtime on the graph of that precision (CUDA provider with IO binding on a GPU,
  as the audit's onnx backend now runs, so no host copies are timed; TF32 off for fp32;
  CPU provider otherwise);
- TensorRT (CUDA hosts with tensorrt) on an engine built from the same graph, strongly
  typed, cached in `--workdir`.

Rounds alternate the backends (each round times `--calls` calls of each), medians of
the per-call means are reported. FLOPs per call are counted by torch's FlopCounterMode
on the module (on the meta device: no compute), so the fraction of the physical limit
is achieved FLOP/s over the card's dense fp16 tensor peak (a table of known cards, or
`--peak-tflops`). Each backend's output is compared with torch fp32 on the same inputs.
The last lines read `speedup onnx/torch: X.XX` and, where TensorRT ran,
`speedup tensorrt/torch: X.XX` (of the first `--images` value).

`--bundle BUNDLE` takes the UNet graphs, contract and engine cache of an exported bundle
(the engine is then the one the tensorrt backend builds and caches for that bundle); `--json`
writes every figure, rewritten after each batch size, so a run stopped midway keeps what it
measured; `--deadline` (Unix time) skips the batch sizes it would not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# dense fp16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets
PEAK_FP16_TFLOPS = {
    "H200": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_FP16_TFLOPS.items():  # most specific names first
        if key in device_name:
            return value
    return None


ARCHS = ("sd15", "sdxl", "tiny", "tiny-sdxl")
DEFAULT_HEIGHT = {"sd15": 512, "sdxl": 1024, "tiny": 32, "tiny-sdxl": 32}


def _unet(arch: str, device="cpu"):
    """(UNet, VAE scale, text length, text width, pooled width or None: SDXL's added conditioning).
    SDXL's 2.6B parameters are initialized on `device` (10 GB in fp32: seconds on a GPU)."""
    if arch == "sd15":
        from export.testing import sd15_unet

        return sd15_unet(0), 8, 77, 768, None
    if arch == "sdxl":
        from export.testing import SDXL_POOLED_DIM, SDXL_TEXT_LENGTH, SDXL_TEXT_WIDTH, sdxl_unet

        return sdxl_unet(0, str(device)), 8, SDXL_TEXT_LENGTH, SDXL_TEXT_WIDTH, SDXL_POOLED_DIM
    from auditor.zoo.models import (
        TOKENIZER_MAX_LENGTH,
        XL_CROSS_ATTENTION_DIM,
        XL_POOLED_DIM,
        make_unet,
        make_xl_unet,
    )

    if arch == "tiny-sdxl":
        return make_xl_unet(0).eval(), 4, TOKENIZER_MAX_LENGTH, XL_CROSS_ATTENTION_DIM, XL_POOLED_DIM
    return make_unet(0).eval(), 4, TOKENIZER_MAX_LENGTH, 32, None


def _spec(pooled: int | None):
    """The UNet's ComponentSpec: SD's (3 inputs) or SDXL's (text_embeds and time_ids too)."""
    from auditor.backends.engines.components import UNET
    from auditor.backends.engines.components_xl import XL_UNET

    return UNET if pooled is None else XL_UNET


def _inputs(rows: int, latent: int, text: int, width: int, pooled: int | None, height: int, device="cpu"):
    """One guided step's inputs in the spec's order: seeded noise, t = 500, SDXL's default conditioning."""
    import torch

    generator = torch.Generator("cpu").manual_seed(0)
    if device == "meta":
        empty = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
        tensors = [empty(rows, 4, latent, latent), empty(rows), empty(rows, text, width)]
        return tuple(tensors + ([empty(rows, pooled), empty(rows, 6)] if pooled else []))
    tensors = [
        torch.randn(rows, 4, latent, latent, generator=generator),
        torch.full((rows,), 500.0),
        torch.randn(rows, text, width, generator=generator),
    ]
    if pooled:
        tensors.append(torch.randn(rows, pooled, generator=generator))
        tensors.append(
            torch.tensor([[height, height, 0, 0, height, height]], dtype=torch.float32).repeat(rows, 1)
        )
    return tuple(t.to(device) for t in tensors)


def _flops(unet, rows: int, latent: int, text: int, width: int, pooled: int | None = None) -> float:
    """FLOPs of one call, counted on a meta-device copy (shapes only, nothing computed)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = _spec(pooled).wrap(copy.deepcopy(unet).to("meta"))
    args = _inputs(rows, latent, text, width, pooled, latent * 8, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(*args)
    return float(counter.get_total_flops())


def _export(unet, args, latent: int, text: int, width: int, workdir: Path, pooled: int | None = None):
    """The UNet's ONNX graph in `--dtype`'s precision through the project's exporter (only that one:
    SD 1.5's fp32 graph is 3.4 GB and minutes of tracing an fp16 run never reads); reused from workdir.

    Returns (contract, {precision: graph path}, graph digests for the engine key or None).
    """
    from auditor.backends.engines import engine_precision
    from auditor.backends.engines.components import ExportShapes, build_contracts
    from auditor.backends.engines.components_xl import pipeline_specs
    from export.exporter import EXTERNAL_DATA_MIN_BYTES, export_onnx

    spec = _spec(pooled)

    precisions = [engine_precision(args.dtype)]
    if args.bundle:
        from auditor.backends.engines.bundle import read_manifest
        from auditor.backends.engines.engine_cache import graph_digest

        manifest = read_manifest(args.bundle)
        graphs = {p: manifest.graph_for("unet", p) for p in precisions}
        digests = {p: graph_digest(manifest, "unet", g) for p, g in graphs.items()}
        return (
            manifest.components["unet"].contract,
            {p: Path(args.bundle) / g for p, g in graphs.items()},
            digests,
        )
    scale = args.height // latent
    first = width if pooled is None else width - pooled  # SDXL: both encoders' widths add up to `width`
    shapes = ExportShapes(
        height=args.height,
        width=args.height,
        vae_scale_factor=scale,
        latent_channels=4,
        text_length=text,
        text_hidden_size=first,
        vocab_size=49408,
        batch_sizes=tuple(sorted(set(args.images))),  # one fixed-size TensorRT profile per batch size
        text_hidden_size_2=None if pooled is None else pooled,
        pooled_size=pooled,
    )
    pipeline = "StableDiffusionPipeline" if pooled is None else "StableDiffusionXLPipeline"
    contract = build_contracts(shapes, specs=pipeline_specs(pipeline))["unet"]
    module = spec.wrap(unet)
    graphs = {}
    for precision in precisions:
        folder = workdir / f"unet-{args.arch}-{args.height}-{precision}"
        if not (folder / "model.onnx").is_file():  # written whole into a staging folder, then renamed
            start = time.perf_counter()
            staging = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            graph = module if precision == "fp32" else spec.half(module)
            export_onnx(
                graph,
                contract,
                shapes,
                17,
                staging / "model.onnx",
                staging / "work",
                EXTERNAL_DATA_MIN_BYTES,
                spec,
            )
            os.replace(staging, folder)
            print(f"export {precision} graph: {time.perf_counter() - start:.1f} s -> {folder}")
        graphs[precision] = folder / "model.onnx"
    return contract, graphs, None


def _torch_runner(unet, dtype, device, compiled: bool = False, spec=None):
    """The UNet in `dtype` behind its spec's wrapper (float inputs cast as a pipeline in `dtype` would)."""
    import torch

    from auditor.backends.engines.components import UNET

    spec = spec or UNET
    unet = unet.to(device=device, dtype=dtype)
    if compiled:  # the torch-compiled backend's layout, attention and compile mode
        from auditor.backends._compiled import compile_mode, prepare_module

        prepare_module(unet)
    model = spec.wrap(unet)
    call = torch.compile(model, mode=compile_mode(str(device)), dynamic=False) if compiled else model
    cast = [name not in ("timestep", "time_ids") for name in spec.input_names]

    def run(*inputs):
        with torch.inference_mode():
            return call(*(t.to(dtype) if c else t for t, c in zip(inputs, cast, strict=True))).float()

    return run


def _ort_runner(path: Path, device, threads: int, precision: str, spec=None):
    """ONNX Runtime session; on CUDA with IO binding over torch tensors (no host copies), TF32 off for fp32."""
    import numpy as np
    import torch

    from auditor.backends.engines.components import UNET
    from auditor.backends.engines.ort import (
        CPU_PROVIDER,
        CUDA_PROVIDER,
        available_providers,
        make_session,
        provider_options,
    )

    spec = spec or UNET
    if device.type == "cuda":
        if CUDA_PROVIDER not in available_providers():
            return None, f"onnxruntime lacks {CUDA_PROVIDER} (install onnxruntime-gpu, not onnxruntime)"
        cuda = provider_options(
            CUDA_PROVIDER, device_index=device.index or 0, precision=precision, contract=None, cache_dir=None
        )
        session = make_session(path, [cuda, CPU_PROVIDER])
        if session.get_providers()[0] != CUDA_PROVIDER:
            return None, f"the session fell back to {session.get_providers()[0]}"

        def run(*inputs):
            binding = session.io_binding()
            out = torch.empty_like(inputs[0])
            for name, tensor in zip(spec.input_names, inputs, strict=True):
                tensor = tensor.contiguous()
                binding.bind_input(
                    name, "cuda", device.index or 0, np.float32, tuple(tensor.shape), tensor.data_ptr()
                )
            binding.bind_output(
                spec.output, "cuda", device.index or 0, np.float32, tuple(out.shape), out.data_ptr()
            )
            torch.cuda.synchronize(device)  # inputs written by torch's stream before ORT's reads them
            session.run_with_iobinding(binding)
            return out

        return run, None
    session = make_session(path, [CPU_PROVIDER], threads)

    def run(*inputs):
        feeds = {n: t.numpy() for n, t in zip(spec.input_names, inputs, strict=True)}
        return torch.from_numpy(session.run([spec.output], feeds)[0])

    return run, None


def _trt_runner(
    path: Path, contract, precision: str, device, cache_root: Path, digest: str | None, spec=None
):
    """An engine from the project's engine cache (the bundle's key with --bundle), built on a miss."""
    from auditor.backends.engines.components import UNET
    from auditor.backends.engines.engine_cache import EngineCache, engine_key
    from auditor.backends.engines.trt import TrtEngine, build_engine, host_identity, tensorrt_status
    from auditor.fileio import sha256_file

    reason = tensorrt_status()
    if reason:
        return None, reason
    host = host_identity(device.index or 0)
    cache = EngineCache(cache_root)
    key = engine_key(digest or sha256_file(path), host, precision, contract)
    data = cache.load("unet", key)
    if data is None:
        start = time.perf_counter()
        data = build_engine(path, contract, precision, cache.root / "timing.cache")
        cache.store("unet", key, data, {"component": "unet", "precision": precision, **host})
        print(f"build TensorRT {precision} engine: {time.perf_counter() - start:.1f} s")
    engine = TrtEngine(data, device)
    spec = spec or UNET

    def run(*inputs):
        return engine(dict(zip(spec.input_names, inputs, strict=True)))[spec.output]

    return run, None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_json(path: str | None, document: dict) -> None:
    if path:
        from auditor.fileio import atomic_write_text

        atomic_write_text(Path(path), json.dumps(document, indent=2, default=str) + "\n")


def _images_list(text: str) -> list[int]:
    values = [int(part) for part in str(text).split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="sd15")
    parser.add_argument(
        "--height", type=int, help="image side in pixels (default 512 for sd15, 1024 for sdxl, 32 for tiny)"
    )
    parser.add_argument(
        "--images",
        type=_images_list,
        default=[1],
        help="images per guided step, e.g. 1,8,30 (rows = 2 x images)",
    )
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float16")
    parser.add_argument(
        "--backends", help="comma-separated: torch,compile,onnx,tensorrt (default: all that apply)"
    )
    parser.add_argument(
        "--bundle", help="take the UNet graphs, contract and engine cache of this exported bundle"
    )
    parser.add_argument("--reps", type=int, default=10, help="alternated rounds")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per backend per round")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU")
    parser.add_argument("--workdir", help="keep graphs and engines here between runs (default: a temp dir)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 peak, if not in the table")
    parser.add_argument("--json", help="write every figure here (rewritten after each batch size)")
    parser.add_argument("--deadline", type=float, help="Unix time: start no batch size after it")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    from auditor.backends._base import quiet_hf_libraries
    from auditor.backends.engines import engine_precision

    quiet_hf_libraries()
    torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":  # the fp32 reference and fp32 contenders: no TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    args.height = args.height or DEFAULT_HEIGHT[args.arch]
    if args.dtype == "float16" and device.type == "cpu":
        print("note: float16 on the CPU measures nothing useful about a GPU (no fast fp16 kernels)")
    wanted = (
        args.backends.split(",")
        if args.backends
        else ["torch", "onnx", "tensorrt"] + (["compile"] if device.type == "cuda" else [])
    )

    unet, scale, text, width, pooled = _unet(args.arch, device)
    spec = _spec(pooled)
    if args.height % (scale * 8):
        parser.error(f"--height {args.height}: expected a multiple of {scale * 8}")
    latent = args.height // scale
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = args.peak_tflops or (peak_tflops(gpu) if gpu else None)
    document: dict = {
        "bench": "unet",
        "device": gpu or "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "height": args.height,
        "dtype": args.dtype,
        "peak_fp16_tflops": peak,
        "results": [],
        "skipped": {},
    }

    with tempfile.TemporaryDirectory(prefix="bench-unet-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        contract, graphs, digests = None, {}, None
        if {"onnx", "tensorrt"} & set(wanted):  # torch alone needs no graphs (SDXL's fp32 one is 10 GB)
            contract, graphs, digests = _export(unet, args, latent, text, width, workdir, pooled)
        precision = engine_precision(args.dtype)
        import copy

        reference_model = spec.wrap(copy.deepcopy(unet).to(device=device, dtype=torch.float32))
        runners, skipped = {}, {}
        if "torch" in wanted:
            runners["torch"] = _torch_runner(
                copy.deepcopy(unet), getattr(torch, args.dtype), device, spec=spec
            )
        if "compile" in wanted:
            runners["compile"] = _torch_runner(
                copy.deepcopy(unet), getattr(torch, args.dtype), device, compiled=True, spec=spec
            )
        if "onnx" in wanted:
            ort, why = _ort_runner(graphs[precision], device, args.threads, precision, spec)
            if ort:
                runners["onnx"] = ort
            else:
                skipped["onnx"] = why
        if "tensorrt" in wanted:
            if device.type != "cuda":
                skipped["tensorrt"] = "needs a CUDA device"
            else:
                cache_root = Path(args.bundle) / ".engines" if args.bundle else workdir / "engines"
                digest = digests[precision] if digests else None
                trt, why = _trt_runner(
                    graphs[precision], contract, precision, device, cache_root, digest, spec
                )
                if trt:
                    runners["tensorrt"] = trt
                else:
                    skipped["tensorrt"] = why
        document["skipped"] = skipped
        print(f"device: {gpu or 'cpu'}; torch {torch.__version__}")
        for name, why in skipped.items():
            print(f"{name:9s} skipped: {why}")
        first_medians: dict[str, float] = {}
        for images in args.images:
            if args.deadline and time.time() > args.deadline:
                document["results"].append({"images": images, "skipped": "deadline reached"})
                print(f"images {images}: skipped, deadline reached")
                continue
            rows = 2 * images
            flops = _flops(unet, rows, latent, text, width, pooled)
            inputs = _inputs(rows, latent, text, width, pooled, args.height, device)
            with torch.inference_mode():
                reference = reference_model(*inputs).float().cpu().numpy()
            errors, first_call = {}, {}
            for name, run in runners.items():  # warm-up (compile happens here), and the error against fp32
                start = time.perf_counter()
                out = run(*inputs)
                _sync(device)
                first_call[name] = time.perf_counter() - start
                got = out.float().cpu().numpy()
                errors[name] = float(np.max(np.abs(got - reference))) / float(np.max(np.abs(reference)))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            per_call: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(args.reps):
                for name, run in runners.items():
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        run(*inputs)
                    _sync(device)
                    per_call[name].append((time.perf_counter() - start) / args.calls)
            medians = {name: statistics.median(values) for name, values in per_call.items()}
            first_medians = first_medians or medians
            print(
                f"workload: {args.arch} UNet, {args.height}x{args.height} ({latent}x{latent} latents), {images} image(s)"
                f" = {rows} rows per guided step, {args.dtype}; {args.reps} alternated rounds x {args.calls} calls"
            )
            print(
                f"FLOPs per guided step (FlopCounterMode): {flops / 1e9:.4g} GFLOP ({flops / rows / 1e9:.4g} per row)"
            )
            entry = {"images": images, "rows": rows, "gflop_per_step": flops / 1e9, "backends": {}}
            for name, seconds in medians.items():
                achieved = flops / seconds / 1e12
                fraction = achieved / peak if peak and args.dtype == "float16" else None
                shown = (
                    f"{fraction:.1%} of {peak:.0f} TFLOP/s"
                    if fraction is not None
                    else "n/a (fp16 on a known GPU only)"
                )
                print(
                    f"{name:9s} {seconds * 1e3:9.2f} ms per guided step  {achieved:8.4g} TFLOP/s  {shown}"
                    f"  max|out - torch fp32| / max|torch fp32| {errors[name]:.2e}"
                )
                entry["backends"][name] = {
                    "ms_per_step": seconds * 1e3,
                    "tflops": achieved,
                    "fraction_of_peak": fraction,
                    "rel_error_vs_torch_fp32": errors[name],
                    "first_call_s": first_call[name],
                    "speedup_vs_torch": medians["torch"] / seconds if "torch" in medians else None,
                }
            if device.type == "cuda":
                entry["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                print(f"peak CUDA memory held by torch's allocator: {entry['peak_cuda_gib']:.2f} GiB")
            document["results"].append(entry)
            _write_json(args.json, document)
        _write_json(args.json, document)
        if "torch" in first_medians:
            for name in ("onnx", "tensorrt"):
                if name in first_medians:
                    print(f"speedup {name}/torch: {first_medians['torch'] / first_medians[name]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
