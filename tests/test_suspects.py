"""Suspect sources: single-file checkpoints (original LDM layout) and LoRA files on a base.

The single-file test writes the tiny pipeline in the layout most checkpoints are shared in
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`: the
inverse of diffusers' converter, tests/ldm_layout.py) and checks that loading it back
generates exactly the folder's images. LoRA files are written by hand in the PEFT layout
diffusers saves (`unet.<module>.lora_A.weight` / `lora_B.weight`, tests/lora_factory.py), so
the fit check needs no `peft`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_layout import pipeline_to_single_file
from lora_factory import write_lora
from safetensors.torch import save_file

from auditor.backends import SuspectSpec, detect_kind
from auditor.backends import open_suspect as _open
from auditor.backends._lora import lora_modules
from auditor.config import GenerationSettings
from auditor.errors import BadInputError

SETTINGS = GenerationSettings(steps=2, height=32, width=32)


def open_suspect(model: str, **fields):
    return _open(SuspectSpec(model=model, **fields))


PROMPTS, SEEDS = ["a red circle on a blue background", "a green square"], [5, 6]


@pytest.fixture(scope="module")
def folder_images(tiny_pipeline):
    from auditor.backends import TorchGenerator

    return TorchGenerator(tiny_pipeline, device="cpu").generate(PROMPTS, SEEDS, SETTINGS)


@pytest.fixture(scope="module")
def single_file(tiny_pipeline, tmp_path_factory) -> Path:
    return pipeline_to_single_file(tiny_pipeline, tmp_path_factory.mktemp("single") / "tiny-sd.safetensors")


def test_single_file_checkpoint_generates_the_folders_images(single_file, tiny_pipeline, folder_images):
    assert detect_kind(single_file) == "safetensors_file"
    gen = open_suspect(str(single_file), config=str(tiny_pipeline), device="cpu")
    assert np.array_equal(gen.generate(PROMPTS, SEEDS, SETTINGS), folder_images)
    info = gen.describe()
    assert info.backend == "torch" and "single-file checkpoint tiny-sd.safetensors" in info.note
    # the same with the kind said explicitly, as a job file may
    assert open_suspect(str(single_file), kind="safetensors_file", device="cpu", config=str(tiny_pipeline))


def test_single_file_errors_are_one_line(single_file, tiny_pipeline, tmp_path):
    with pytest.raises(BadInputError, match="needs `config`") as info:
        open_suspect(str(single_file), device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="model_index.json is missing"):
        open_suspect(str(single_file), config=str(tmp_path), device="cpu")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(single_file.read_bytes()[:5000])
    with pytest.raises(BadInputError, match="truncated|malformed"):
        open_suspect(str(truncated), config=str(tiny_pipeline), device="cpu")
    # a checkpoint of another architecture: the converter's failure becomes one line naming the file
    other = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(other))
    with pytest.raises(BadInputError, match="other.safetensors: could not load it") as info:
        open_suspect(str(other), config=str(tiny_pipeline), device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="the onnx backend runs exported bundles"):
        open_suspect(str(single_file), backend="onnx", config=str(tiny_pipeline))
    with pytest.raises(BadInputError, match="model not found"):
        open_suspect(str(tmp_path / "absent.safetensors"))


# ---------------------------------------------------------------- LoRA


def test_lora_that_does_not_fit_its_base_is_refused(tiny_pipeline, tmp_path):
    from auditor.zoo.models import make_unet

    wide = write_lora(make_unet(0, channels=(48, 96)), tmp_path / "wide.safetensors")
    assert detect_kind(wide) == "lora_file"
    with pytest.raises(BadInputError, match="does not fit base model") as info:
        open_suspect(str(wide), base=str(tiny_pipeline), device="cpu")
    assert "\n" not in str(info.value) and "wide.safetensors" in str(info.value)
    alien = tmp_path / "alien.safetensors"
    save_file({"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 32)}, str(alien))
    with pytest.raises(BadInputError, match="does not have"):
        open_suspect(str(alien), base=str(tiny_pipeline), device="cpu")
    with pytest.raises(BadInputError, match="needs `base`"):
        open_suspect(str(wide), device="cpu")


def test_lora_module_parsing():
    shapes = {
        "unet.a.b.lora_A.weight": (4, 32),
        "unet.a.b.lora_B.weight": (64, 4),
        "text_encoder.x.lora.down.weight": (2, 8),
        "lora_unet_kohya_style.lora_down.weight": (4, 8),
    }
    assert lora_modules(shapes) == {
        ("unet", "a.b"): {"down": (4, 32), "up": (64, 4)},
        ("text_encoder", "x"): {"down": (2, 8)},
    }


def test_lora_applied_to_its_base(tiny_pipeline, tmp_path, folder_images):
    pytest.importorskip("peft", reason="applying a LoRA needs peft (pip install peft)")
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline / "unet")
    neutral = open_suspect(
        str(write_lora(unet, tmp_path / "zero.safetensors", zero_b=True)),
        base=str(tiny_pipeline),
        device="cpu",
    )
    assert np.array_equal(neutral.generate(PROMPTS, SEEDS, SETTINGS), folder_images)  # B = 0: no change
    active = open_suspect(
        str(write_lora(unet, tmp_path / "lora.safetensors")), base=str(tiny_pipeline), device="cpu"
    )
    images = active.generate(PROMPTS, SEEDS, SETTINGS)
    assert images.shape == folder_images.shape and not np.array_equal(images, folder_images)
    note = active.describe().note
    assert "LoRA lora.safetensors (16 layers) on base model (digest " in note


# ---------------------------------------------------------------- pickles inside a folder


def _pickled_text_encoder(tiny_pipeline: Path, target: Path, extra=None) -> Path:
    """A copy of the tiny pipeline whose text encoder is a pickled pytorch_model.bin."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(tiny_pipeline, target)
    weights = next((target / "text_encoder").glob("*.safetensors"))
    state = load_file(str(weights))
    weights.unlink()
    if extra is not None:
        state["x"] = extra
    torch.save(state, target / "text_encoder" / "pytorch_model.bin")
    return target


def test_a_malicious_pickle_inside_a_folder_is_refused_in_one_line(tiny_pipeline, tmp_path):
    from test_identity import _Payload

    marker = tmp_path / "marker"
    folder = _pickled_text_encoder(tiny_pipeline, tmp_path / "evil", extra=_Payload(marker))
    with pytest.raises(BadInputError, match=r"pytorch_model.bin: pickled checkpoint refused") as info:
        open_suspect(str(folder), device="cpu")
    text = str(info.value)
    assert "\n" not in text and "weights_only=False" not in text and "set to `False`" not in text
    assert not marker.exists()


def test_a_harmless_pickle_inside_a_folder_still_loads(tiny_pipeline, tmp_path, folder_images):
    folder = _pickled_text_encoder(tiny_pipeline, tmp_path / "plain")
    images = open_suspect(str(folder), device="cpu").generate(PROMPTS, SEEDS, SETTINGS)
    np.testing.assert_array_equal(images, folder_images)
