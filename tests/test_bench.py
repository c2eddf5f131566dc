"""The benchmark scripts still run, and count what they claim to count (timings are not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the benchmarks compare against onnxruntime")

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_of_an_sd15_guided_step_match_the_published_figure():
    """1.61 TFLOP per guided step at 512x512 (0.80 per UNet forward): what the fraction of peak divides by."""
    import torch
    from diffusers import UNet2DConditionModel

    from export.testing import SD15_UNET

    unet_bench = _load("unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(859.5e6, rel=1e-3)
    flops = unet_bench._flops(unet, rows=2, latent=64, text=77, width=768)
    assert flops == pytest.approx(1.61e12, rel=0.01)
    assert unet_bench._flops(unet, rows=1, latent=64, text=77, width=768) == pytest.approx(flops / 2)


def test_peak_table_prefers_the_most_specific_card_name():
    unet_bench = _load("unet")
    assert unet_bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert unet_bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert unet_bench.peak_tflops("NVIDIA H200") == 989.4
    assert unet_bench.peak_tflops("Some Future GPU") is None


def test_unet_bench_runs_on_the_cpu_and_ends_with_the_speedup(capsys, tmp_path):
    unet_bench = _load("unet")
    args = ["--arch", "tiny", "--dtype", "float32", "--reps", "1", "--calls", "1", "--device", "cpu"]
    assert unet_bench.main([*args, "--workdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("speedup onnx/torch: ")
    assert any(line.startswith("tensorrt  skipped: needs a CUDA device") for line in lines)
    errors = [float(line.rsplit(" ", 1)[1]) for line in lines if "max|out - torch fp32|" in line]
    assert len(errors) == 2 and errors[0] == 0.0 and errors[1] < 1e-4  # torch itself, then ONNX Runtime


def test_an_sdxl_size_unet_step_is_counted_with_its_added_conditioning():
    """SDXL base's UNet from its published config: 2.6B parameters, text_embeds and time_ids inputs."""
    import torch
    from diffusers import UNet2DConditionModel

    from export.testing import SDXL_POOLED_DIM, SDXL_TEXT_WIDTH, SDXL_UNET

    unet_bench = _load("unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    flops = unet_bench._flops(
        unet, rows=2, latent=128, text=77, width=SDXL_TEXT_WIDTH, pooled=SDXL_POOLED_DIM
    )
    assert unet_bench._flops(unet, 1, 128, 77, SDXL_TEXT_WIDTH, SDXL_POOLED_DIM) == pytest.approx(flops / 2)
    assert flops == pytest.approx(13.52e12, rel=0.01)  # 6.76 TFLOP per forward at 1024x1024, 8.4x SD 1.5's


def test_unet_bench_runs_a_tiny_sdxl_unet_on_the_cpu(capsys, tmp_path):
    unet_bench = _load("unet")
    args = ["--arch", "tiny-sdxl", "--dtype", "float32", "--reps", "1", "--calls", "1", "--device", "cpu"]
    assert unet_bench.main([*args, "--workdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("speedup onnx/torch: ")
    errors = [float(line.rsplit(" ", 1)[1]) for line in lines if "max|out - torch fp32|" in line]
    assert len(errors) == 2 and errors[0] == 0.0 and errors[1] < 1e-4


def test_generate_bench_runs_the_tiny_sdxl_model(capsys):
    generate = _load("generate")
    argv = ["--family", "sdxl", "--keys", "2", "--steps", "2", "--reps", "1", "--no-rss", "--device", "cpu"]
    assert generate.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("speedup onnx/torch: ")
    assert any("model: sdxl" in line for line in lines)
    onnx = next(line for line in lines if line.startswith("onnx ") and "max |pixel - torch|" in line)
    assert int(onnx.split("max |pixel - torch| ")[1].split("/")[0]) <= 1
