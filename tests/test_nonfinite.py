"""A NaN from a model must never become a black image: the engine loop refuses it, through a real ONNX Runtime
session on the CPU; the torch backend's guard is `auditor.images.quantize` (the last test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the engine loop runs ONNX Runtime here")

from onnx_poison import poisoned  # noqa: E402

from auditor.backends.engines import NonFiniteOutputError  # noqa: E402
from auditor.config import GenerationSettings  # noqa: E402
from auditor.errors import BadInputError  # noqa: E402

SETTINGS = GenerationSettings(steps=4, guidance_scale=3.0)
PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@pytest.fixture(scope="module")
def bundle(tiny_pipeline, tmp_path_factory) -> Path:
    from export.testing import exported_bundle

    return exported_bundle(tiny_pipeline, tmp_path_factory.mktemp("nonfinite"))


@pytest.mark.parametrize(
    ("component", "value", "where"), [("unet", np.nan, "step 1 of 4"), ("vae_decoder", np.inf, "")]
)
def test_the_engine_loop_refuses_nonfinite_outputs(bundle, tmp_path, component, value, where):
    from auditor.backends.engines import open_bundle
    from auditor.backends.engines.ort import OnnxGenerator, make_session

    gen = open_bundle(bundle, backend="onnx", device="cpu")
    assert isinstance(gen, OnnxGenerator)
    clean = gen.generate(PROMPTS, [1, 2], SETTINGS)
    assert clean.std() > 0
    record = gen.bundle.manifest.components[component]
    bad = poisoned(bundle / record.onnx, tmp_path / "poisoned.onnx", value)
    gen.loop.runners.sessions[component] = make_session(bad)
    with pytest.raises(NonFiniteOutputError, match=f"the {component} output holds NaN or inf") as caught:
        gen.generate(PROMPTS, [1, 2], SETTINGS)
    message = str(caught.value)
    assert where in message and "onnx backend (fp32 graphs)" in message and "--dtype float32" in message
    assert isinstance(caught.value, BadInputError) and caught.value.exit_code == 2  # deterministic: no retry
    assert "\n" not in message


def test_a_finite_run_reads_the_flags_once_per_batch(bundle, monkeypatch):
    """The check costs one device-to-host read per batch, not one per step."""
    import torch

    from auditor.backends.engines import open_bundle

    gen = open_bundle(bundle, backend="onnx", device="cpu", batch_size=1)
    reads = []
    real = torch.stack

    def counting_stack(tensors, *args, **kwargs):
        reads.append(len(tensors))
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "stack", counting_stack)
    gen.generate(PROMPTS, [1, 2], SETTINGS)
    assert reads == [1 + 4 + 1, 1 + 4 + 1]  # per batch: text encoder, 4 UNet steps, VAE


def test_the_torch_backend_refuses_nan_images(tiny_pipeline, tmp_path):
    """A model whose weights hold a NaN: diffusers returns NaN images, quantize must not make them black."""
    import torch

    from auditor.backends import TorchGenerator

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_pipeline, model)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    unet.save_pretrained(model / "unet")
    gen = TorchGenerator(model, device="cpu")
    with pytest.raises(BadInputError, match="NaN"):
        gen.generate(PROMPTS[:1], [1], SETTINGS)
