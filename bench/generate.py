"""Key-regeneration throughput: torch eager vs ONNX Runtime (vs TensorRT on a GPU host).

    python bench/generate.py [--model PATH] [--bundle PATH] [--family sd|sdxl] [--keys 30] [--steps 20]
                             [--guidance 3] [--reps 5] [--threads 1] [--device auto]
                             [--dtype float32|float16]

Regenerates the same keys (prompt, seed) with each backend on the same model (default:
an untrained zoo-architecture pipeline built in a temp dir and exported there; `--family
sdxl`: the SDXL one, a StableDiffusionXLPipeline with its four exported graphs),
alternating the contenders rep by rep (torch, onnx, torch, onnx, ...) so drift from
other processes on a shared machine hits both alike; intra-op threads pinned (1 by
default) for torch and ONNX Runtime. Every backend runs `--dtype` (float16: torch in
fp16 and the bundle's fp16 graphs; the default bundle is then exported with
`--precision fp16`), so a GPU comparison is fp16 against fp16. Reports median seconds
and images/s per backend, each backend's peak RSS (measured in a fresh subprocess that loads it and generates
once), the max abs pixel difference from torch, with float16 each backend's PSNR
against torch float32 images of the same keys, and, last, the speedup lines:

    speedup tensorrt/torch: X.XX      (only where TensorRT runs)
    speedup onnx/torch: X.XX

Sweep mode (`--json OUT`): every `--steps-list` x `--batch-sizes` configuration (one batch of
that many keys each), backends torch eager, the torch-compiled backend (`compile`: its static
batch is the largest of `--batch-sizes`, smaller batches padded to it), onnx and tensorrt
(`--backends`), each timed alternated and compared with torch float32 images of the same keys
(PSNR, max pixel difference); the JSON is rewritten after each configuration, and `--deadline`
(Unix time) skips configurations it would not start in time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _setup(threads: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)


def _keys(n: int) -> tuple[list[str], list[int]]:
    from auditor.zoo.data import caption_space

    space = caption_space()
    step = max(1, len(space) // n)
    prompts = [space[(i * step) % len(space)] for i in range(n)]
    return prompts, list(range(1000, 1000 + n))


def _settings(args):
    from auditor.config import GenerationSettings

    return GenerationSettings(steps=args.steps, guidance_scale=args.guidance)


def _load(backend: str, args, model: Path, bundle: Path | None):
    from auditor.backends import SuspectSpec, open_suspect
    from auditor.backends.engines import open_bundle

    if backend in ("torch", "torch-compiled"):
        spec = SuspectSpec(
            model=str(model),
            backend=backend,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
        )
        return open_suspect(spec)
    kwargs = {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size, "model": model}
    if backend == "onnx":
        kwargs["threads"] = args.threads
    return open_bundle(bundle, backend=backend, **kwargs)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_probe(args) -> int:
    """Child mode: load one backend, generate once, print peak RSS and the growth over the imports."""
    _setup(args.threads)
    import diffusers  # noqa: F401  - the libraries every backend imports, before the baseline
    import transformers  # noqa: F401

    from auditor.backends import open_suspect  # noqa: F401

    if args.rss_probe != "torch":
        import onnxruntime  # noqa: F401

    prompts, seeds = _keys(args.keys)
    baseline = _current_rss_mib()
    gen = _load(args.rss_probe, args, Path(args.model), Path(args.bundle) if args.bundle else None)
    gen.generate(prompts, seeds, _settings(args))
    print(json.dumps({"peak_rss_mib": _peak_rss_mib(), "growth_mib": _current_rss_mib() - baseline}))
    return 0


def _probe_rss(backend: str, args, model: Path, bundle: Path | None) -> dict | None:
    cmd = [sys.executable, __file__, "--rss-probe", backend, "--model", str(model)]
    cmd += ["--keys", str(args.keys), "--steps", str(args.steps), "--guidance", str(args.guidance)]
    cmd += ["--threads", str(args.threads), "--device", args.device, "--batch-size", str(args.batch_size)]
    cmd += ["--dtype", args.dtype]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        return None


def _machine() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} logical CPUs, {gpu}, Python {platform.python_version()}"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _sweep(args, model: Path, bundle: Path) -> int:
    """Every (steps, batch size) configuration through every backend, against torch fp32 (module doc)."""
    import numpy as np
    import torch

    from auditor.backends import SuspectSpec, open_suspect
    from auditor.config import GenerationSettings
    from auditor.errors import first_line
    from auditor.fileio import atomic_write_text
    from auditor.images import psnr

    if torch.cuda.is_available():  # the fp32 reference without TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    batch_sizes, steps_list = _ints(args.batch_sizes), _ints(args.steps_list)
    args.batch_size = max(batch_sizes)
    wanted = args.backends.split(",") if args.backends else ["torch", "compile", "onnx", "tensorrt"]
    gens, skipped = {}, {}
    backend_of = {"compile": "torch-compiled"}  # the sweep's short name for the torch-compiled backend
    for name in wanted:
        try:
            gen = _load(backend_of.get(name, name), args, model, bundle)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
            skipped[name] = first_line(exc)
            continue
        info = gen.describe()
        if name != "torch" and info.backend != backend_of.get(name, name):
            skipped[name] = info.note or f"fell back to {info.backend}"
            continue
        gens[name] = gen
    reference = open_suspect(SuspectSpec(model=str(model), device=args.device, batch_size=args.batch_size))
    document = {
        "bench": "generate",
        "machine": _machine(),
        "dtype": args.dtype,
        "guidance": args.guidance,
        "backends": {n: g.describe().model_dump(mode="json") for n, g in gens.items()},
        "skipped": skipped,
        "results": [],
    }

    def write() -> None:
        atomic_write_text(Path(args.json), json.dumps(document, indent=2) + "\n")

    write()
    for steps in steps_list:
        for batch in batch_sizes:
            entry: dict = {"steps": steps, "batch": batch}
            document["results"].append(entry)
            if args.deadline and time.time() > args.deadline:
                entry["skipped"] = "deadline reached"
                write()
                continue
            prompts, seeds = _keys(batch)
            settings = GenerationSettings(steps=steps, guidance_scale=args.guidance)
            truth = reference.generate(prompts, seeds, settings)
            first = {}
            images = {}
            for name, gen in gens.items():  # warm-up (torch.compile compiles here)
                start = time.perf_counter()
                images[name] = gen.generate(prompts, seeds, settings)
                first[name] = time.perf_counter() - start
            times: dict[str, list[float]] = {name: [] for name in gens}
            for _ in range(args.reps):
                for name, gen in gens.items():
                    start = time.perf_counter()
                    gen.generate(prompts, seeds, settings)
                    times[name].append(time.perf_counter() - start)
            medians = {name: statistics.median(values) for name, values in times.items()}
            entry["backends"] = {
                name: {
                    "median_s": medians[name],
                    "images_per_s": batch / medians[name],
                    "ms_per_guided_step": medians[name] / steps * 1e3,
                    "first_call_s": first[name],
                    "psnr_vs_torch_fp32_db": min(psnr(images[name], truth), 100.0),
                    "max_pixel_diff_vs_torch_fp32": int(
                        np.abs(images[name].astype(int) - truth.astype(int)).max()
                    ),
                    "speedup_vs_torch": medians["torch"] / medians[name] if "torch" in medians else None,
                }
                for name in gens
            }
            for name, row in entry["backends"].items():
                print(
                    f"steps {steps} batch {batch} {name:9s} {row['median_s']:.3f} s  {row['images_per_s']:.2f} images/s"
                    f"  PSNR vs torch fp32 {row['psnr_vs_torch_fp32_db']:.1f} dB"
                )
            write()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers SD folder (default: a tiny random-weight zoo pipeline)")
    parser.add_argument(
        "--family", choices=["sd", "sdxl"], default="sd", help="the default model's architecture (default sd)"
    )
    parser.add_argument("--bundle", help="an exported bundle of --model (default: exported into a temp dir)")
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per backend (alternated)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ONNX Runtime")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-backend RSS subprocesses")
    parser.add_argument("--rss-probe", choices=["torch", "onnx", "tensorrt"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="sweep mode: write every figure here (see the module doc)")
    parser.add_argument("--batch-sizes", default="1,8,30", help="sweep mode: images per batch, in order")
    parser.add_argument("--steps-list", default="20,50", help="sweep mode: denoising steps, in order")
    parser.add_argument("--backends", help="sweep mode: torch,compile,onnx,tensorrt (default: all)")
    parser.add_argument(
        "--deadline", type=float, help="sweep mode: Unix time, start no configuration after it"
    )
    args = parser.parse_args(argv)
    if args.rss_probe:
        return _rss_probe(args)
    _setup(args.threads)
    if args.json:
        if not args.model or not args.bundle:
            parser.error("--json (sweep mode) needs --model and --bundle")
        return _sweep(args, Path(args.model), Path(args.bundle))

    import numpy as np

    from auditor.backends.engines.trt import tensorrt_status

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        model = Path(args.model) if args.model else None
        if model is None:
            from export.testing import build_tiny_pipeline, build_tiny_xl_pipeline

            model = (build_tiny_xl_pipeline if args.family == "sdxl" else build_tiny_pipeline)(tmp)
        bundle = Path(args.bundle) if args.bundle else None
        if bundle is None:
            from auditor.backends.engines import engine_precision
            from export.exporter import export_bundle

            start = time.perf_counter()
            precision = engine_precision(args.dtype)
            export_bundle(model, Path(tmp) / "bundle", batch_sizes=(1, args.batch_size), precision=precision)
            bundle = Path(tmp) / "bundle"
            print(f"export: {time.perf_counter() - start:.1f} s")
        backends = ["torch", "onnx"] + (["tensorrt"] if tensorrt_status() is None else [])
        prompts, seeds = _keys(args.keys)
        settings = _settings(args)
        gens = {b: _load(b, args, model, bundle) for b in backends}
        for name, gen in gens.items():
            info = gen.describe()
            print(
                f"{name}: {info.backend} on {info.device} ({info.dtype}){' note: ' + info.note if info.note else ''}"
            )
        images = {name: gen.generate(prompts, seeds, settings) for name, gen in gens.items()}  # warm-up
        times: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(args.reps):
            for name, gen in gens.items():
                start = time.perf_counter()
                gen.generate(prompts, seeds, settings)
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}

        print(f"machine: {_machine()}; model: {args.family if not args.model else model}")
        print(
            f"workload: {args.keys} keys x {args.steps} steps, guidance {args.guidance}, batch {args.batch_size},"
            f" {args.threads} thread(s), {args.reps} alternated reps, medians"
        )
        for name in backends:
            diff = int(np.abs(images[name].astype(int) - images["torch"].astype(int)).max())
            rss = None if args.no_rss else _probe_rss(name, args, model, bundle)
            rss_text = (
                f"{rss['peak_rss_mib']:.0f} MiB (+{rss['growth_mib']:.0f} MiB for model + generation)"
                if rss
                else "n/a"
            )
            runs = " ".join(f"{t:.3f}" for t in times[name])
            print(
                f"{name:9s} median {medians[name]:.3f} s  {args.keys / medians[name]:7.1f} images/s"
                f"  peak RSS {rss_text}  max |pixel - torch| {diff}/255  runs [{runs}]"
            )
        if args.dtype == "float16":  # fp16's cost in image quality: PSNR against torch fp32
            from auditor.backends import SuspectSpec, open_suspect
            from auditor.images import psnr

            fp32 = open_suspect(SuspectSpec(model=str(model), device=args.device, batch_size=args.batch_size))
            reference = fp32.generate(prompts, seeds, settings)
            for name in backends:
                print(f"{name:9s} PSNR against torch float32: {psnr(images[name], reference):.1f} dB")
        print(f"peak RSS of this process (all backends loaded): {_peak_rss_mib():.0f} MiB")
        if "tensorrt" in medians:
            print(f"speedup tensorrt/torch: {medians['torch'] / medians['tensorrt']:.2f}")
        print(f"speedup onnx/torch: {medians['torch'] / medians['onnx']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
