"""ONNX Runtime on a GPU, checked on the CPU: the options each provider gets (device, TF32, TensorRT
cache and profile) and the IO-binding runners, which run here on the CPU provider with CPU tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="needs onnxruntime")

from auditor.backends.engines import ort  # noqa: E402
from auditor.backends.engines.bundle import load_bundle, read_manifest  # noqa: E402
from auditor.config import GenerationSettings  # noqa: E402

SETTINGS = GenerationSettings(steps=4, guidance_scale=3.0)
PROMPTS = ["a red circle on a blue background", "a green square on a white background", "a blue star"]


@pytest.fixture(scope="module")
def bundle(tiny_pipeline, tmp_path_factory) -> Path:
    from export.testing import exported_bundle

    return exported_bundle(tiny_pipeline, tmp_path_factory.mktemp("ort-providers"))


def test_cuda_provider_gets_its_device_and_no_tf32_for_fp32(bundle):
    contract = read_manifest(bundle).components["unet"].contract
    fp32 = ort.provider_options(
        ort.CUDA_PROVIDER, device_index=1, precision="fp32", contract=contract, cache_dir=None
    )
    assert fp32 == (ort.CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0"})
    fp16 = ort.provider_options(
        ort.CUDA_PROVIDER, device_index=0, precision="fp16", contract=contract, cache_dir=None
    )
    assert fp16 == (ort.CUDA_PROVIDER, {"device_id": "0"})
    assert ort.provider_options(
        ort.CPU_PROVIDER, device_index=3, precision="fp32", contract=None, cache_dir=None
    ) == (ort.CPU_PROVIDER)


def test_tensorrt_provider_gets_an_engine_cache_and_one_profile(bundle, tmp_path):
    contract = read_manifest(bundle).components["unet"].contract  # batch sizes 1 and 16, 2 rows per image
    name, options = ort.provider_options(
        ort.TENSORRT_PROVIDER, device_index=0, precision="fp16", contract=contract, cache_dir=tmp_path
    )
    assert name == ort.TENSORRT_PROVIDER
    assert options["trt_engine_cache_enable"] == "1" and options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_timing_cache_enable"] == "1" and options["trt_fp16_enable"] == "1"
    # ONNX Runtime's format: "input:d1xd2x...,input2:..." for every dynamic input
    assert options["trt_profile_min_shapes"] == "sample:1x4x8x8,timestep:1,encoder_hidden_states:1x16x32"
    assert options["trt_profile_opt_shapes"] == "sample:32x4x8x8,timestep:32,encoder_hidden_states:32x16x32"
    assert options["trt_profile_max_shapes"] == options["trt_profile_opt_shapes"]


class _GpuLookingSession:
    """A CPU session that reports the CUDA provider, as onnxruntime-gpu does on a real GPU."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def get_providers(self):
        return [ort.CUDA_PROVIDER, ort.CPU_PROVIDER]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_cuda_n_reaches_every_session_and_the_loop_stays_on_that_device(bundle, monkeypatch):
    """`--device cuda:1` used to open every session on GPU 0 and copy through numpy at every step."""
    import torch

    seen = []

    def fake_make_session(path, providers=(ort.CPU_PROVIDER,), threads=None):
        seen.append(list(providers))
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(path), ort.session_options(1), providers=[ort.CPU_PROVIDER]
        )
        return _GpuLookingSession(session)

    monkeypatch.setattr(ort, "available_providers", lambda: [ort.CUDA_PROVIDER, ort.CPU_PROVIDER])
    monkeypatch.setattr(ort, "make_session", fake_make_session)
    gen = ort.OnnxGenerator(load_bundle(bundle), device="cuda:1", precision="fp32")
    assert len(seen) == 3
    for providers in seen:
        assert providers[0] == (ort.CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0"})
        assert providers[1] == ort.CPU_PROVIDER
    runners = gen.loop.runners
    assert isinstance(runners, ort.BoundRunners) and runners.device == torch.device("cuda", 1)


def test_io_binding_runners_give_the_same_images(bundle):
    """The binding path (names, dtypes, shapes, output allocation), run here with CPU tensors."""
    plain = ort.OnnxGenerator(load_bundle(bundle), device="cpu")
    bound = ort.OnnxGenerator(load_bundle(bundle), device="cpu", io_binding=True)
    assert isinstance(plain.loop.runners, ort.OrtRunners) and isinstance(bound.loop.runners, ort.BoundRunners)
    a = plain.generate(PROMPTS, [4, 5, 6], SETTINGS)
    b = bound.generate(PROMPTS, [4, 5, 6], SETTINGS)
    assert np.array_equal(a, b)
    fp16 = ort.OnnxGenerator(load_bundle(bundle), device="cpu", io_binding=True, precision="fp16")
    c = fp16.generate(PROMPTS, [4, 5, 6], SETTINGS)
    assert np.abs(c.astype(int) - a.astype(int)).max() <= 4
