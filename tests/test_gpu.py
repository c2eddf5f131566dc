"""The GPU side of issues 14 and 23, for a CUDA host with TensorRT (`bench/gpu_check.py --only gpu-tests`).

Each test skips elsewhere with the reason. On the CPU the same rules are tested with stand-ins
(test_engine_cache.py, test_ort_providers.py, test_trt_api.py, test_nonfinite.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from auditor.config import GenerationSettings

SETTINGS = GenerationSettings(steps=8, guidance_scale=3.0)
PROMPTS = ["a red circle on a blue background", "a green square on a white background", "a blue star"]


def _tensorrt_reason() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    from auditor.backends.engines.trt import tensorrt_status

    return tensorrt_status()


def _cuda_ort_reason() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime lacks the CUDA provider (install onnxruntime-gpu)"
    return None


TRT = pytest.mark.skipif(bool(_tensorrt_reason()), reason=f"TensorRT path: {_tensorrt_reason()}")
ORT_CUDA = pytest.mark.skipif(bool(_cuda_ort_reason()), reason=f"ONNX Runtime CUDA: {_cuda_ort_reason()}")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def bundle(tiny_pipeline, tmp_path_factory) -> Path:
    if _cuda_ort_reason() and _tensorrt_reason():
        pytest.skip("no GPU path here")
    from export.testing import exported_bundle

    return exported_bundle(tiny_pipeline, tmp_path_factory.mktemp("gpu"))


@TRT
def test_export_trt_with_batch_size_1_and_json_on_stdout(tiny_pipeline, tmp_path, capfd):
    """Issue 14 items 1 and 3: profiles of 1 image (validation holds 3 rows) and TensorRT's log off stdout."""
    from t2i_audit import main

    out = tmp_path / "b1"
    args = [
        "--format",
        "json",
        "export",
        str(tiny_pipeline),
        "--out",
        str(out),
        "--trt",
        "--batch-sizes",
        "1",
    ]
    code = main([*args, "--precision", "fp16"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    manifest = json.loads(captured.out)  # the whole of stdout is the JSON document
    assert manifest["parity_passed"] and len(manifest["engines"]) == 3
    assert all(e["parity"]["batch"] == 3 for e in manifest["engines"])


@TRT
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_engines_match_torch_and_reports_cite_them(bundle, tiny_pipeline, dtype):
    from auditor.backends import TorchGenerator
    from auditor.backends.engines import open_bundle

    gen = open_bundle(bundle, backend="tensorrt", device="cuda:0", dtype=dtype, batch_size=16)
    info = gen.describe()
    assert info.backend == "tensorrt" and info.note in (
        None,
        f"engines built on this host for {', '.join(gen.obtained)}",
    )
    for name in ("text_encoder", "unet", "vae_decoder"):
        assert info.versions[f"engine.{name}"].startswith("key ")
    images = gen.generate(PROMPTS, [5, 6, 7], SETTINGS)
    reference = TorchGenerator(tiny_pipeline, device="cpu").generate(PROMPTS, [5, 6, 7], SETTINGS)
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= (2 if dtype == "float32" else 8)


@TRT
def test_a_read_only_bundle_uses_its_shipped_engines(tiny_pipeline, tmp_path, monkeypatch):
    """Issue 14 item 5: a bundle exported with --trt, opened with the cache elsewhere, builds nothing."""
    from auditor.backends.engines import engine_cache, open_bundle
    from export.exporter import export_bundle

    out = tmp_path / "shipped"
    export_bundle(tiny_pipeline, out, precision="fp16", batch_sizes=(1, 4), trt=True)
    real = engine_cache.writable
    monkeypatch.setattr(engine_cache, "writable", lambda f: not str(f).startswith(str(out)) and real(f))
    monkeypatch.setenv("T2I_AUDITOR_CACHE", str(tmp_path / "user-cache"))
    gen = open_bundle(out, backend="tensorrt", device="cuda", dtype="float16")
    assert {got.source for got in gen.obtained.values()} == {"bundle"} and gen.describe().note is None


@TRT
def test_a_second_fine_tune_gets_its_own_engines(tiny_pipeline, tmp_path):
    """Issue 14 item 6: same graph, other weights (external data): another key, not a parity miss."""
    from auditor.backends.engines import open_bundle
    from export.exporter import export_bundle

    other = tmp_path / "fine-tune"
    shutil.copytree(tiny_pipeline, other)
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(other / "unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(0.05)
    unet.save_pretrained(other / "unet")
    cache = tmp_path / "shared-cache"
    keys = []
    for model, name in ((tiny_pipeline, "a"), (other, "b")):
        export_bundle(model, tmp_path / name, batch_sizes=(2,), external_data_min_bytes=0)
        gen = open_bundle(
            tmp_path / name, backend="tensorrt", device="cuda", dtype="float32", engine_cache=cache
        )
        assert gen.describe().backend == "tensorrt", gen.describe().note
        keys.append(gen.obtained["unet"].key)
    assert keys[0] != keys[1]


@ORT_CUDA
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_runtime_cuda_with_io_binding_matches_the_cpu(bundle, precision):
    """Issue 14 item 4: cuda:0 reaches the sessions, fp32 passes its tolerance with TF32 off, latents stay on the GPU."""
    from auditor.backends.engines.bundle import load_bundle
    from auditor.backends.engines.ort import BoundRunners, OnnxGenerator

    gpu = OnnxGenerator(load_bundle(bundle), device="cuda:0", precision=precision, validate="always")
    assert isinstance(gpu.loop.runners, BoundRunners) and gpu.loop.runners.device.type == "cuda"
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxGenerator(load_bundle(bundle), device="cpu", precision=precision)
    a = gpu.generate(PROMPTS, [1, 2, 3], SETTINGS)
    b = cpu.generate(PROMPTS, [1, 2, 3], SETTINGS)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= (2 if precision == "fp32" else 6)


@pytest.fixture(scope="module")
def xl_bundle(tiny_xl_pipeline, tmp_path_factory) -> Path:
    if _cuda_ort_reason() and _tensorrt_reason():
        pytest.skip("no GPU path here")
    from export.testing import exported_bundle

    return exported_bundle(tiny_xl_pipeline, tmp_path_factory.mktemp("gpu-xl"))


@TRT
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sdxl_engines_match_torch(xl_bundle, tiny_xl_pipeline, dtype):
    """Issue 15: four engines (text_encoder_2 with two outputs; the VAE's built from its fp32 graph in
    both precisions) through the shared loop, against the torch SDXL pipeline, size conditioning included."""
    from auditor.backends import TorchGenerator
    from auditor.backends.engines import open_bundle

    gen = open_bundle(xl_bundle, backend="tensorrt", device="cuda:0", dtype=dtype, batch_size=16)
    info = gen.describe()
    assert info.backend == "tensorrt", info.note
    for name in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
        assert info.versions[f"engine.{name}"].startswith("key ")
    settings = SETTINGS.model_copy(update={"height": 32, "width": 32, "crops_coords_top_left": (8, 0)})
    images = gen.generate(PROMPTS, [5, 6, 7], settings)
    reference = TorchGenerator(tiny_xl_pipeline, device="cpu").generate(PROMPTS, [5, 6, 7], settings)
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= (2 if dtype == "float32" else 8)


@ORT_CUDA
def test_onnx_runtime_cuda_runs_sdxl_bundles(xl_bundle):
    from auditor.backends.engines.bundle import load_bundle
    from auditor.backends.engines.ort import BoundRunners, OnnxGenerator

    gpu = OnnxGenerator(load_bundle(xl_bundle), device="cuda:0", precision="fp16", validate="always")
    assert isinstance(gpu.loop.runners, BoundRunners) and gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxGenerator(load_bundle(xl_bundle), device="cpu", precision="fp16")
    settings = SETTINGS.model_copy(update={"height": 32, "width": 32})
    a, b = gpu.generate(PROMPTS, [1, 2, 3], settings), cpu.generate(PROMPTS, [1, 2, 3], settings)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 6


@TRT
def test_static_profiles_replay_cuda_graphs_like_plain_enqueue(tiny_pipeline, tmp_path, monkeypatch):
    """Issue 23: one static profile per batch size, a CUDA graph per profile after its warm-up, the same
    pixels as plain enqueue; the timing cache is one file per TensorRT version and compute capability."""
    from auditor.backends.engines import open_bundle
    from export.exporter import export_bundle

    out = tmp_path / "static"
    export_bundle(tiny_pipeline, out, precision="fp16", batch_sizes=(1, 4), parity_steps=0)
    cache = tmp_path / "engines"
    graphs = open_bundle(out, backend="tensorrt", device="cuda:0", dtype="float16", engine_cache=cache)
    assert graphs.describe().backend == "tensorrt", graphs.describe().note
    a = graphs.generate(PROMPTS, [5, 6, 7], SETTINGS)  # 3 images: the 4-image profile, padded
    launch = graphs.describe().versions["engine.unet.launch"]
    assert "cuda graph" in launch and "(8 rows)" in launch, launch
    assert [p.name for p in cache.glob("timing-trt*-sm*.cache")], sorted(p.name for p in cache.iterdir())
    monkeypatch.setenv("T2I_AUDITOR_TRT_CUDA_GRAPHS", "0")
    plain = open_bundle(out, backend="tensorrt", device="cuda:0", dtype="float16", engine_cache=cache)
    b = plain.generate(PROMPTS, [5, 6, 7], SETTINGS)
    assert "enqueue (CUDA graphs turned off)" in plain.describe().versions["engine.unet.launch"]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # a replay runs the same kernels


@ORT_CUDA
def test_onnx_runtime_cuda_fp16_runs_the_fused_unet_or_says_why(bundle):
    """Issue 23: the transformer optimizer's CUDA graph (GroupNorm, NhwcConv, ...) validated at load."""
    from auditor.backends.engines.bundle import load_bundle, read_manifest
    from auditor.backends.engines.ort import OnnxGenerator

    assert read_manifest(bundle).components["unet"].ort_fusion("cuda").onnx == "unet/model.fp16.cuda.onnx"
    gpu = OnnxGenerator(load_bundle(bundle), device="cuda:0", precision="fp16")
    assert gpu.fused == {"unet"} or "plain fp16 graph" in (gpu.note or ""), gpu.note
    cpu = OnnxGenerator(load_bundle(bundle), device="cpu", precision="fp16")
    a, b = gpu.generate(PROMPTS, [1, 2, 3], SETTINGS), cpu.generate(PROMPTS, [1, 2, 3], SETTINGS)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 6
