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
