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


HEURISTIC = {"cudnn_conv_algo_search": "HEURISTIC"}


def test_cuda_provider_gets_its_device_heuristic_conv_search_and_no_tf32_for_fp32(bundle):
    contract = read_manifest(bundle).components["unet"].contract
    fp32 = ort.provider_options(
        ort.CUDA_PROVIDER, device_index=1, precision="fp32", contract=contract, cache_dir=None
    )
    assert fp32 == (ort.CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0"} | HEURISTIC)
    fp16 = ort.provider_options(
        ort.CUDA_PROVIDER, device_index=0, precision="fp16", contract=contract, cache_dir=None
    )
    assert fp16 == (ort.CUDA_PROVIDER, {"device_id": "0"} | HEURISTIC)
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
        assert providers[0] == (ort.CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0"} | HEURISTIC)
        assert providers[1] == ort.CPU_PROVIDER
    runners = gen.loop.runners
    assert isinstance(runners, ort.BoundRunners) and runners.device == torch.device("cuda", 1)


def _gpu_looking_sessions(monkeypatch, fused: str):
    """make_session stand-in on a 'GPU': the fused CUDA graph fails to load ("load"), loads but computes
    garbage ("wrong"), or loads as the plain fp16 graph would ("ok"); every other graph runs on the CPU."""
    import onnxruntime

    opened = []

    def fake_make_session(path, providers=(ort.CPU_PROVIDER,), threads=None):
        opened.append(Path(path).name)
        if Path(path).name == "model.fp16.cuda.onnx":
            if fused == "load":
                raise RuntimeError("Could not find an implementation for GroupNorm(1) node")
            path = Path(path).with_name("model.fp16.onnx")
        session = onnxruntime.InferenceSession(
            str(path), ort.session_options(1), providers=[ort.CPU_PROVIDER]
        )
        if fused == "wrong" and opened[-1] == "model.fp16.cuda.onnx":
            session = _Garbage(session)
        return _GpuLookingSession(session)

    monkeypatch.setattr(ort, "available_providers", lambda: [ort.CUDA_PROVIDER, ort.CPU_PROVIDER])
    monkeypatch.setattr(ort, "make_session", fake_make_session)
    return opened


class _Garbage:
    def __init__(self, inner) -> None:
        self.inner = inner

    def run(self, names, feeds):
        return [np.zeros_like(v) for v in self.inner.run(names, feeds)]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_fp16_cuda_sessions_load_onnx_runtimes_fused_unet_and_check_it(bundle, monkeypatch):
    """The fused CUDA graph was not validated at export on a CPU host: loaded, then held to its tolerance."""
    opened = _gpu_looking_sessions(monkeypatch, "ok")
    gen = ort.OnnxGenerator(load_bundle(bundle), device="cuda:0", precision="fp16", validate="never")
    assert gen.fused == {"unet"} and "model.fp16.cuda.onnx" in opened and gen.note is None
    assert gen.describe().versions["ort_fused_graphs"] == "unet"
    fp32 = ort.OnnxGenerator(load_bundle(bundle), device="cuda:0", precision="fp32", validate="never")
    assert fp32.fused == set()  # the fused graph serves fp16 sessions only


@pytest.mark.parametrize("failure", ["load", "wrong"])
def test_a_fused_unet_that_fails_here_falls_back_to_the_fp16_graph(bundle, monkeypatch, failure):
    opened = _gpu_looking_sessions(monkeypatch, failure)
    gen = ort.OnnxGenerator(load_bundle(bundle), device="cuda:0", precision="fp16", validate="never")
    assert gen.fused == set() and opened.count("model.fp16.onnx") >= 3  # every component on its fp16 graph
    assert "unet" in gen.note and "plain fp16 graph" in gen.note
    assert ("misses its tolerance" if failure == "wrong" else "could not load unet") in gen.note
    assert "ort_fused_graphs" not in gen.describe().versions


def test_a_cpu_fallback_keeps_no_note_of_the_fused_graph_it_no_longer_tries(bundle, monkeypatch):
    """device="auto" on a host whose CUDA provider falls back silently: the first pass's note that the
    fused graph did not load belonged to the sessions it dropped, not to the CPU ones it runs."""
    import onnxruntime

    def fake_make_session(path, providers=(ort.CPU_PROVIDER,), threads=None):
        if Path(path).name == "model.fp16.cuda.onnx":
            raise RuntimeError("Could not find an implementation for GroupNorm(1) node")
        return onnxruntime.InferenceSession(str(path), ort.session_options(1), providers=[ort.CPU_PROVIDER])

    monkeypatch.setattr(ort, "available_providers", lambda: [ort.CUDA_PROVIDER, ort.CPU_PROVIDER])
    monkeypatch.setattr(ort, "make_session", fake_make_session)
    gen = ort.OnnxGenerator(load_bundle(bundle), device="auto", precision="fp16", validate="never")
    note = gen.describe().note
    assert gen.providers[0] == ort.CPU_PROVIDER and gen.fused == set()
    assert "fell back to CPUExecutionProvider; running on the CPU" in note
    assert "could not load unet" not in note and "plain fp16 graph" not in note


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
