"""SD 1.5 size on torch alone: eager fp32, eager fp16 and the torch-compiled backend, per guided step and end to end.

    python bench/sd15_torch.py [--arch sd15|tiny] [--images 8,1] [--configs eager-fp32,eager-fp16,compiled-fp16]
                               [--steps 20] [--reps 3] [--calls 5] [--device auto] [--threads 1]
                               [--json OUT] [--deadline EPOCH]

`make gpu-check`'s first step, because it needs nothing a bare GPU host lacks: torch (with
Triton, which its CUDA wheels bring), diffusers, transformers and this repository's pure-Python
modules; no export, no ONNX, no TensorRT, no download, no model written to disk. Stable
Diffusion 1.5's architecture (the 860M-parameter UNet, CLIP ViT-L/14 text encoder, f=8 VAE:
`export.testing`'s published configs) is built in memory with random weights, on the device,
behind the project's own generators: `torch` (TorchGenerator, the reference) and
`torch-compiled` (auditor.backends._compiled: SDPA, channels-last, torch.compile over static
shapes, CUDA graphs on CUDA), each in the dtype its configuration names (`CONFIGS`).

For every batch size in `--images` (images per generate call; the compiled generator's static
batch), in order, and every configuration:

- **end to end**: `--steps` DDIM steps at guidance 7.5 for that many prompts, one warm-up call
  (where torch.compile compiles: `first_call_s`) then `--reps` timed calls: seconds, images/s;
  PSNR and max pixel difference against the eager fp32 images of the same prompts and seeds;
- **per guided step**: the UNet alone on 2 x images rows, called exactly as the pipeline calls
  it (same dtypes, kwargs, grad mode), so the compiled configuration times the graph it compiled
  for the pipeline; `--reps` rounds of `--calls` calls, alternated between configurations, medians;
  FLOPs counted once by FlopCounterMode (SD 1.5: 1.607 TFLOP per guided step per image), the
  achieved TFLOP/s and the fraction of the card's dense fp16 peak (bench/unet.py's table).

fp32 runs with TF32 off (the reference PSNR is measured against). The JSON (`--json`) is rewritten
after every configuration, so a step stopped midway keeps what it measured; `--deadline` (Unix
time) skips what would start after it. On the CPU (`--arch tiny --device cpu`) the same code runs
in seconds: what tests/test_gpu_check.py runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# name: (backend, dtype); eager fp32 is the baseline every ratio and PSNR is taken against
CONFIGS: dict[str, tuple[str, str]] = {
    "eager-fp32": ("torch", "float32"),
    "eager-fp16": ("torch", "float16"),
    "compiled-fp16": ("torch-compiled", "float16"),
    "compiled-fp32": ("torch-compiled", "float32"),  # the CPU's figure: no fast fp16 kernels there
    "eager-bf16": ("torch", "bfloat16"),
    "compiled-bf16": ("torch-compiled", "bfloat16"),
}
BASELINE = "eager-fp32"
PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse at dawn",
    "a red sports car on a mountain road",
    "a bowl of ramen, studio lighting",
)
GUIDANCE = 7.5


def _sibling(name: str):
    """Another bench script as a module (bench/ is no package; their imports are stdlib only)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_pipeline(arch: str, device, tokenizer_dir: Path):
    """A StableDiffusionPipeline of `arch` with random weights (seeded), built on `device`, fp32."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from auditor.backends._base import quiet_hf_libraries
    from auditor.zoo.models import TOKENIZER_MAX_LENGTH, make_inference_scheduler
    from auditor.zoo.tokenizer import build_clip_tokenizer

    quiet_hf_libraries()
    with torch.device(device):
        if arch == "sd15":
            from export.testing import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE

            torch.manual_seed(0)
            unet = UNet2DConditionModel(**SD15_UNET)
            torch.manual_seed(1)
            vae = AutoencoderKL(**SD15_VAE)
            torch.manual_seed(2)
            text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))
            length = 77
        else:
            from auditor.zoo.models import make_text_encoder, make_unet, make_vae

            unet, vae, text_encoder = make_unet(0), make_vae(0), make_text_encoder(0)
            length = TOKENIZER_MAX_LENGTH
    tokenizer = build_clip_tokenizer(tokenizer_dir, model_max_length=length)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=make_inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)


def _copy(pipe, dtype):
    """An independent copy of `pipe` in `dtype` (compiling changes a pipeline's UNet in place)."""
    import torch

    parts = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in pipe.components.items()}
    return type(pipe)(**parts, requires_safety_checker=False).to(dtype=dtype)


def _generator(pipe, name: str, device, images: int):
    """The project's generator of configuration `name` over `pipe` (static batch `images`)."""
    from auditor.backends._compiled import open_compiled
    from auditor.backends._diffusers import TorchGenerator

    backend, dtype = CONFIGS[name]
    generator = TorchGenerator.from_pipeline(
        pipe, path=Path("random-weights"), device=str(device), dtype=dtype, batch_size=images
    )
    return open_compiled(generator) if backend == "torch-compiled" else generator


def _unet_call(pipe, images: int, steps: int, device):
    """One guided step's UNet call, with the inputs the pipeline gives it (2 x images rows)."""
    import torch

    unet = pipe.unet
    dtype = unet.dtype
    generator = torch.Generator("cpu").manual_seed(0)
    size = unet.config.sample_size
    width = pipe.text_encoder.config.hidden_size
    scheduler = copy.deepcopy(pipe.scheduler)
    with torch.inference_mode():  # inference tensors, as the pipeline's are (dynamo guards on it)
        sample = torch.randn(2 * images, unet.config.in_channels, size, size, generator=generator)
        sample = sample.to(device, dtype)
        states = torch.randn(2 * images, pipe.tokenizer.model_max_length, width, generator=generator)
        states = states.to(device, dtype)
        scheduler.set_timesteps(steps, device=device)
        timestep = scheduler.timesteps[0]

    def call():
        with torch.inference_mode():
            return unet(
                sample,
                timestep,
                encoder_hidden_states=states,
                timestep_cond=None,
                cross_attention_kwargs=None,
                added_cond_kwargs=None,
                return_dict=False,
            )[0]

    return call


def _flops_per_image(pipe, steps: int, device) -> float:
    """FLOPs of one guided step for one image (2 UNet rows), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    call = _unet_call(pipe, 1, steps, device)
    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _config_list(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown configurations {unknown}; expected some of {list(CONFIGS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument(
        "--images", type=_int_list, default=[8, 1], help="images per batch, in order (default 8,1)"
    )
    parser.add_argument("--configs", type=_config_list, default=["eager-fp32", "eager-fp16", "compiled-fp16"])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps end to end (default 20)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    parser.add_argument("--calls", type=int, default=5, help="UNet calls per timed round (default 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU")
    parser.add_argument("--json", help="write every figure here (rewritten after each configuration)")
    parser.add_argument("--deadline", type=float, help="Unix time: start nothing after it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from auditor.config import GenerationSettings
    from auditor.images import psnr

    torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 baseline is fp32
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = _sibling("unet").peak_tflops(gpu) if gpu else None
    configs = [BASELINE] + [c for c in args.configs if c != BASELINE]
    document: dict = {
        "bench": "sd15_torch",
        "device": gpu or "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "steps": args.steps,
        "guidance": GUIDANCE,
        "tf32": False,
        "peak_fp16_tflops": peak,
        "configs": {name: {"backend": CONFIGS[name][0], "dtype": CONFIGS[name][1]} for name in configs},
        "results": [],
    }

    def write() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
            tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, args.json)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sd15-torch-") as tmp:
        base = build_pipeline(args.arch, device, Path(tmp) / "tokenizer")
    document["build_s"] = round(time.perf_counter() - start, 1)
    # each configuration its own copy: the compiled one changes its UNet in place
    pipes = {
        name: base if name == BASELINE else _copy(base, getattr(torch, CONFIGS[name][1])) for name in configs
    }
    flops = _flops_per_image(base, args.steps, device)
    document["gflop_per_guided_step_per_image"] = flops / 1e9
    print(
        f"device: {gpu or 'cpu'}; torch {torch.__version__}; {args.arch}, random weights, built in {document['build_s']} s"
    )
    print(f"FLOPs per guided step per image (FlopCounterMode): {flops / 1e12:.4g} TFLOP")
    settings = GenerationSettings(steps=args.steps, guidance_scale=GUIDANCE)
    write()
    for images in args.images:
        entry: dict = {"images": images, "rows": 2 * images, "configs": {}}
        document["results"].append(entry)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(images)]
        seeds = list(range(1000, 1000 + images))
        reference = None
        calls = {}
        for name in configs:
            if args.deadline and time.time() > args.deadline:
                entry["configs"][name] = {"skipped": "deadline reached"}
                write()
                continue
            generator = _generator(pipes[name], name, device, images)
            info = generator.describe()
            row: dict = {
                "backend": info.backend,
                "dtype": info.dtype,
                "versions": info.versions,
                "note": info.note,
            }
            entry["configs"][name] = row
            if info.backend != CONFIGS[name][0]:  # the compiled path fell back to eager here
                row["skipped"] = info.note
                write()
                continue
            graphs = counters["stats"]["unique_graphs"]
            start = time.perf_counter()
            got = generator.generate(prompts, seeds, settings)  # numpy: the device is done with it
            row["first_call_s"] = time.perf_counter() - start
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                generator.generate(prompts, seeds, settings)
                times.append(time.perf_counter() - start)
            row["median_s"] = statistics.median(times)
            row["images_per_s"] = images / row["median_s"]
            reference = got if name == BASELINE else reference
            if reference is not None:
                row["psnr_vs_fp32_db"] = min(psnr(got, reference), 100.0)  # identical: inf, not JSON
                row["max_pixel_diff_vs_fp32"] = int(np.abs(got.astype(int) - reference.astype(int)).max())
            calls[name] = _unet_call(pipes[name], images, args.steps, device)
            calls[
                name
            ]()  # warm; the compiled UNet reuses the pipeline's graph (else graphs_compiled shows it)
            row["graphs_compiled"] = counters["stats"]["unique_graphs"] - graphs
            write()
        per_call: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.reps):  # the UNet alone, alternated between configurations
            for name, call in calls.items():
                per_call[name].append(
                    _timed(lambda call=call: [call() for _ in range(args.calls)], device) / args.calls
                )
        for name, values in per_call.items():
            row = entry["configs"][name]
            seconds = statistics.median(values)
            achieved = flops * images / seconds / 1e12
            row |= {
                "ms_per_guided_step": seconds * 1e3,
                "tflops": achieved,
                "fraction_of_peak": achieved / peak if peak else None,
            }
            print(
                f"images {images:3d} {name:14s} {row['ms_per_guided_step']:9.2f} ms per guided step"
                f"  {row['images_per_s']:8.3f} images/s ({args.steps} steps)  {achieved:8.4g} TFLOP/s"
                f"  PSNR vs fp32 {row.get('psnr_vs_fp32_db', float('nan')):.1f} dB  first call {row['first_call_s']:.1f} s"
            )
        write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
