"""Conformance suite: every Generator backend present here keeps the same contract.

Parametrized over the backends (torch always; onnx when onnxruntime imports; tensorrt
on a CUDA host with TensorRT), like scikit-learn's `parametrize_with_checks`: shapes
and dtype, determinism, batch-position independence, seed sensitivity, describe().
torch-compiled is the torch backend's pipeline with its UNet compiled, and each new shape
here would compile it again (about a minute each on the CPU): its own checks, parity with
torch included, are tests/test_torch_compiled.py's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from auditor.backends import BackendInfo, Generator
from auditor.config import GenerationSettings

SETTINGS = GenerationSettings(steps=8, guidance_scale=3.0)
PROMPTS = ["a red circle on a blue background", "a green square on a white background", "a blue star"]
# engines may differ from themselves by float rounding across batch sizes: at most 1/255
ENGINE_PIXEL_TOLERANCE = {"torch": 1, "onnx": 1, "tensorrt": 1}


def _onnx_skip() -> str | None:
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 't2i-auditor[onnx]')"
    return None


def _tensorrt_skip() -> str | None:
    if _onnx_skip():
        return _onnx_skip()
    from auditor.backends.engines.trt import tensorrt_status

    reason = tensorrt_status()
    return f"TensorRT backend not testable here: {reason}" if reason else None


def _tensorrt_param(dtype: str):
    return pytest.param(
        ("tensorrt", dtype),
        id=f"tensorrt-{dtype}",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(bool(_tensorrt_skip()), reason=_tensorrt_skip() or "tensorrt present"),
        ],
    )


_ONNX_MARK = pytest.mark.skipif(bool(_onnx_skip()), reason=_onnx_skip() or "onnx present")
# (backend, dtype): the engine backends run the bundle's fp32 graphs and its fp16 graphs
BACKENDS = [
    pytest.param(("torch", "float32"), id="torch"),
    pytest.param(("onnx", "float32"), id="onnx", marks=_ONNX_MARK),
    pytest.param(("onnx", "float16"), id="onnx-fp16", marks=_ONNX_MARK),
    _tensorrt_param("float32"),
    _tensorrt_param("float16"),
]


@pytest.fixture(scope="module")
def bundle(tiny_pipeline, tmp_path_factory) -> Path | None:
    if _onnx_skip():
        return None
    from export.testing import exported_bundle

    return exported_bundle(tiny_pipeline, tmp_path_factory.mktemp("backends"))


_CACHE: dict[tuple[str, str], Generator] = {}


@pytest.fixture(params=BACKENDS)
def generator(request, tiny_pipeline, bundle) -> Generator:
    backend, dtype = request.param
    if request.param not in _CACHE:
        from auditor.backends import SuspectSpec, open_suspect

        if backend == "torch":
            spec = SuspectSpec(model=str(tiny_pipeline), backend="torch", device="cpu", batch_size=16)
        else:
            device = "cpu" if backend == "onnx" else "cuda"
            spec = SuspectSpec(model=str(bundle), backend=backend, device=device, dtype=dtype, batch_size=16)
        _CACHE[request.param] = open_suspect(spec)
    return _CACHE[request.param]


def _backend(generator) -> str:
    return generator.describe().backend


def test_is_a_generator_with_uint8_images(generator):
    assert isinstance(generator, Generator)
    images = generator.generate(PROMPTS, [0, 1, 2], SETTINGS)
    assert images.shape == (3, 32, 32, 3)
    assert images.dtype == np.uint8
    assert images.std() > 0


def test_same_seeds_give_the_same_images(generator):
    first = generator.generate(PROMPTS[:2], [7, 8], SETTINGS)
    again = generator.generate(PROMPTS[:2], [7, 8], SETTINGS)
    assert np.array_equal(first, again)


def test_image_does_not_depend_on_batch_position(generator):
    batch = generator.generate(PROMPTS, [40, 41, 42], SETTINGS)
    alone = generator.generate(PROMPTS[1:2], [41], SETTINGS)
    moved = generator.generate([PROMPTS[1], PROMPTS[0]], [41, 40], SETTINGS)
    tolerance = ENGINE_PIXEL_TOLERANCE[_backend(generator)]
    assert np.abs(alone[0].astype(int) - batch[1].astype(int)).max() <= tolerance
    assert np.abs(moved[0].astype(int) - batch[1].astype(int)).max() <= tolerance
    assert np.abs(moved[1].astype(int) - batch[0].astype(int)).max() <= tolerance


def test_different_seeds_differ(generator):
    images = generator.generate([PROMPTS[0]] * 2, [100, 101], SETTINGS)
    assert np.abs(images[0].astype(int) - images[1].astype(int)).max() > 8


def test_guidance_off_and_other_schedulers(generator):
    plain = generator.generate(PROMPTS[:1], [3], GenerationSettings(steps=4, guidance_scale=1.0))
    euler = generator.generate(PROMPTS[:1], [3], GenerationSettings(steps=4, scheduler="euler_a"))
    assert plain.shape == euler.shape == (1, 32, 32, 3)


def test_empty_and_mismatched_requests(generator):
    assert generator.generate([], [], SETTINGS).shape[0] == 0
    with pytest.raises(ValueError):
        generator.generate(PROMPTS, [1], SETTINGS)


def test_describe(generator, request):
    info = generator.describe()
    assert isinstance(info, BackendInfo)
    expected, dtype = request.node.callspec.params["generator"]
    assert info.backend == expected
    # nothing fell back (TensorRT may say it built engines here, on a GPU's first run)
    assert info.note is None or (
        expected == "tensorrt" and info.note.startswith("engines built on this host")
    )
    assert info.dtype == dtype
    if expected == "tensorrt":
        assert info.device and info.device != "cpu"  # the GPU's name
    else:
        assert info.device == "cpu"
    assert info.versions["torch"]
    if expected == "onnx":
        assert info.versions["providers"].split(",")[0] == "CPUExecutionProvider"
        assert info.versions["onnxruntime"]
    if expected == "tensorrt":
        assert info.versions["tensorrt"]
        assert all(
            info.versions[f"engine.{c}"].startswith("key ") for c in ("text_encoder", "unet", "vae_decoder")
        )


def test_engine_backends_match_torch(generator, tiny_pipeline):
    """Same seeds, same prompts: the engine's images are the torch backend's within rounding."""
    if _backend(generator) == "torch":
        pytest.skip("torch is the reference")
    from auditor.backends import TorchGenerator

    reference = _CACHE.get(("torch", "float32")) or TorchGenerator(tiny_pipeline, device="cpu")
    a = generator.generate(PROMPTS, [5, 6, 7], SETTINGS)
    b = reference.generate(PROMPTS, [5, 6, 7], SETTINGS)
    info = generator.describe()
    # fp32 graphs: float rounding; fp16 graphs drift a little more (TensorRT's kernels more than ORT's)
    limit = {("onnx", "float32"): 2, ("onnx", "float16"): 4}.get((info.backend, info.dtype), 8)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= limit
    # stochastic samplers draw step noise from the same per-image generators
    for settings in (
        GenerationSettings(steps=4, guidance_scale=3.0, scheduler="euler_a"),
        GenerationSettings(steps=4, guidance_scale=3.0, eta=1.0),
    ):
        a = generator.generate(PROMPTS[:2], [9, 10], settings)
        b = reference.generate(PROMPTS[:2], [9, 10], settings)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= limit
