"""One guided denoising step: torch eager vs ONNX Runtime vs TensorRT, and the fraction of the GPU's limit.

    python bench/unet.py [--arch sd15|tiny] [--height 512] [--images 1] [--dtype float16]
                         [--reps 10] [--calls 10] [--device auto] [--threads 1]
                         [--workdir DIR] [--peak-tflops X]

A guided step is one UNet call on 2 x images rows (unconditional and conditional
halves), the audit's unit of work. The UNet is built from its architecture with random
weights (`--arch sd15`: Stable Diffusion 1.5's 860M-parameter UNet; `tiny`: the zoo's),
exported through the project's own exporter (the fp32 graph, and the fp16 graph for
`--dtype float16`) and run by each backend available here:

- torch eager, in `--dtype` on `--device`;
- ONNX Runtime on the graph of that precision (CUDA provider with IO binding on a GPU,
  so no host copies are timed; CPU provider otherwise);
- TensorRT (CUDA hosts with tensorrt) on an engine built from the same graph, strongly
  typed, cached in `--workdir`.

Rounds alternate the backends (each round times `--calls` calls of each), medians of
the per-call means are reported. FLOPs per call are counted by torch's FlopCounterMode
on the module (on the meta device: no compute), so the fraction of the physical limit
is achieved FLOP/s over the card's dense fp16 tensor peak (a table of known cards, or
`--peak-tflops`). Each backend's output is compared with torch fp32 on the same inputs.
The last lines read `speedup onnx/torch: X.XX` and, where TensorRT ran,
`speedup tensorrt/torch: X.XX`.
"""

from __future__ import annotations

import argparse
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


def _unet(arch: str):
    if arch == "sd15":
        from export.testing import sd15_unet

        return sd15_unet(0), 8, 77, 768
    from auditor.zoo.models import TOKENIZER_MAX_LENGTH, make_unet

    return make_unet(0).eval(), 4, TOKENIZER_MAX_LENGTH, 32


def _flops(unet, rows: int, latent: int, text: int, width: int) -> float:
    """FLOPs of one call, counted on a meta-device copy (shapes only, nothing computed)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(unet).to("meta")
    args = (
        torch.empty(rows, 4, latent, latent, device="meta"),
        torch.empty(rows, device="meta"),
        torch.empty(rows, text, width, device="meta"),
    )
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(args[0], args[1], encoder_hidden_states=args[2])
    return float(counter.get_total_flops())


def _export(unet, args, latent: int, text: int, width: int, workdir: Path):
    """The UNet's fp32 (and fp16) ONNX graphs through the project's exporter; reused from workdir."""
    from auditor.backends.engines import engine_precision
    from auditor.backends.engines.components import UNET, ExportShapes, build_contracts
    from export.exporter import EXTERNAL_DATA_MIN_BYTES, export_onnx

    scale = args.height // latent
    shapes = ExportShapes(
        height=args.height,
        width=args.height,
        vae_scale_factor=scale,
        latent_channels=4,
        text_length=text,
        text_hidden_size=width,
        vocab_size=49408,
        batch_sizes=(args.images,),
    )
    contract = build_contracts(shapes)["unet"]
    module = UNET.wrap(unet)
    graphs = {}
    for precision in sorted({"fp32", engine_precision(args.dtype)}):
        folder = workdir / f"unet-{args.arch}-{args.height}-{precision}"
        if not (folder / "model.onnx").is_file():  # written whole into a staging folder, then renamed
            start = time.perf_counter()
            staging = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            graph = module if precision == "fp32" else UNET.half(module)
            export_onnx(
                graph, contract, shapes, 17, staging / "model.onnx", staging / "work", EXTERNAL_DATA_MIN_BYTES
            )
            os.replace(staging, folder)
            print(f"export {precision} graph: {time.perf_counter() - start:.1f} s -> {folder}")
        graphs[precision] = folder / "model.onnx"
    return contract, graphs


def _torch_runner(unet, dtype, device):
    import torch

    model = unet.to(device=device, dtype=dtype)

    def run(sample, timestep, hidden):
        with torch.inference_mode():
            return model(sample.to(dtype), timestep, encoder_hidden_states=hidden.to(dtype)).sample.float()

    return run


def _ort_runner(path: Path, device, threads: int):
    """ONNX Runtime session; on CUDA with IO binding over torch tensors (no host copies)."""
    import numpy as np
    import torch

    from auditor.backends.engines.components import UNET
    from auditor.backends.engines.ort import CPU_PROVIDER, CUDA_PROVIDER, available_providers, make_session

    if device.type == "cuda":
        if CUDA_PROVIDER not in available_providers():
            return None, f"onnxruntime lacks {CUDA_PROVIDER} (install onnxruntime-gpu, not onnxruntime)"
        session = make_session(path, [(CUDA_PROVIDER, {"device_id": device.index or 0}), CPU_PROVIDER])
        if session.get_providers()[0] != CUDA_PROVIDER:
            return None, f"the session fell back to {session.get_providers()[0]}"

        def run(sample, timestep, hidden):
            binding = session.io_binding()
            out = torch.empty_like(sample)
            for name, tensor in zip(UNET.input_names, (sample, timestep, hidden), strict=True):
                tensor = tensor.contiguous()
                binding.bind_input(
                    name, "cuda", device.index or 0, np.float32, tuple(tensor.shape), tensor.data_ptr()
                )
            binding.bind_output(
                UNET.output, "cuda", device.index or 0, np.float32, tuple(out.shape), out.data_ptr()
            )
            torch.cuda.synchronize(device)  # inputs written by torch's stream before ORT's reads them
            session.run_with_iobinding(binding)
            return out

        return run, None
    session = make_session(path, [CPU_PROVIDER], threads)

    def run(sample, timestep, hidden):
        feeds = {n: t.numpy() for n, t in zip(UNET.input_names, (sample, timestep, hidden), strict=True)}
        return torch.from_numpy(session.run([UNET.output], feeds)[0])

    return run, None


def _trt_runner(path: Path, contract, precision: str, device, workdir: Path):
    """An engine from the project's engine cache (keyed by graph, TensorRT version, GPU), built on a miss."""
    from auditor.backends.engines.components import UNET
    from auditor.backends.engines.trt import (
        EngineCache,
        TrtEngine,
        build_engine,
        engine_key,
        host_identity,
        tensorrt_status,
    )
    from auditor.fileio import sha256_file

    reason = tensorrt_status()
    if reason:
        return None, reason
    host = host_identity(device.index or 0)
    cache = EngineCache(workdir / "engines")
    key = engine_key(sha256_file(path), host, precision, contract)
    data = cache.load("unet", key)
    if data is None:
        start = time.perf_counter()
        data = build_engine(path, contract, precision, cache.root / "timing.cache")
        cache.store("unet", key, data, {"component": "unet", "precision": precision, **host})
        print(f"build TensorRT {precision} engine: {time.perf_counter() - start:.1f} s")
    engine = TrtEngine(data, device)

    def run(sample, timestep, hidden):
        return engine(dict(zip(UNET.input_names, (sample, timestep, hidden), strict=True)))[UNET.output]

    return run, None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--height", type=int, help="image side in pixels (default 512 for sd15, 32 for tiny)")
    parser.add_argument("--images", type=int, default=1, help="images per guided step (rows = 2 x images)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float16")
    parser.add_argument("--reps", type=int, default=10, help="alternated rounds")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per backend per round")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU")
    parser.add_argument("--workdir", help="keep graphs and engines here between runs (default: a temp dir)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 peak, if not in the table")
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
    args.height = args.height or (512 if args.arch == "sd15" else 32)
    if args.dtype == "float16" and device.type == "cpu":
        print("note: float16 on the CPU measures nothing useful about a GPU (no fast fp16 kernels)")

    unet, scale, text, width = _unet(args.arch)
    if args.height % (scale * 8):
        parser.error(f"--height {args.height}: expected a multiple of {scale * 8}")
    latent = args.height // scale
    rows = 2 * args.images
    flops = _flops(unet, rows, latent, text, width)

    with tempfile.TemporaryDirectory(prefix="bench-unet-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        contract, graphs = _export(unet, args, latent, text, width, workdir)
        precision = engine_precision(args.dtype)

        generator = torch.Generator("cpu").manual_seed(0)
        sample = torch.randn(rows, 4, latent, latent, generator=generator)
        timestep = torch.full((rows,), 500.0)
        hidden = torch.randn(rows, text, width, generator=generator)
        with torch.inference_mode():
            reference = unet(sample, timestep, encoder_hidden_states=hidden).sample.float().numpy()
        inputs = tuple(t.to(device) for t in (sample, timestep, hidden))

        runners, skipped = {"torch": _torch_runner(unet, getattr(torch, args.dtype), device)}, {}
        ort, why = _ort_runner(graphs[precision], device, args.threads)
        if ort:
            runners["onnx"] = ort
        else:
            skipped["onnx"] = why
        if device.type == "cuda":
            trt, why = _trt_runner(graphs[precision], contract, precision, device, workdir)
            if trt:
                runners["tensorrt"] = trt
            else:
                skipped["tensorrt"] = why
        else:
            skipped["tensorrt"] = "needs a CUDA device"

        errors = {}
        for name, run in runners.items():  # warm-up, and the error against torch fp32
            out = run(*inputs)
            _sync(device)
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

        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        peak = args.peak_tflops or (peak_tflops(gpu) if gpu else None)
        print(f"device: {gpu or 'cpu'}; torch {torch.__version__}")
        print(
            f"workload: {args.arch} UNet, {args.height}x{args.height} ({latent}x{latent} latents), {args.images} image(s)"
            f" = {rows} rows per guided step, {args.dtype}; {args.reps} alternated rounds x {args.calls} calls"
        )
        print(
            f"FLOPs per guided step (FlopCounterMode): {flops / 1e9:.4g} GFLOP ({flops / rows / 1e9:.4g} per row)"
        )
        for name, why in skipped.items():
            print(f"{name:9s} skipped: {why}")
        for name, seconds in medians.items():
            achieved = flops / seconds / 1e12
            if peak and args.dtype == "float16":
                fraction = f"{achieved / peak:.1%} of {peak:.0f} TFLOP/s"
            else:
                fraction = "n/a (fp16 on a known GPU only)"
            print(
                f"{name:9s} {seconds * 1e3:9.2f} ms per guided step  {achieved:8.4g} TFLOP/s  {fraction}"
                f"  max|out - torch fp32| / max|torch fp32| {errors[name]:.2e}"
            )
        if device.type == "cuda":
            print(
                f"peak CUDA memory held by torch's allocator: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
            )
        if "onnx" in medians:
            print(f"speedup onnx/torch: {medians['torch'] / medians['onnx']:.2f}")
        if "tensorrt" in medians:
            print(f"speedup tensorrt/torch: {medians['torch'] / medians['tensorrt']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
