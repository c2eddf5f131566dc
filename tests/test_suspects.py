"""Suspect sources: single-file checkpoints (original LDM layout) and LoRA files on a base.

The single-file test writes the tiny pipeline in the layout most checkpoints are shared in
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`: the
inverse of diffusers' converter, below) and checks that loading it back generates exactly
the folder's images. LoRA files are written by hand in the PEFT layout diffusers saves
(`unet.<module>.lora_A.weight` / `lora_B.weight`), so the fit check needs no `peft`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from auditor.backends import SuspectSpec, detect_kind
from auditor.backends import open_suspect as _open
from auditor.backends._lora import lora_modules
from auditor.config import GenerationSettings
from auditor.errors import BadInputError

SETTINGS = GenerationSettings(steps=2, height=32, width=32)


def open_suspect(model: str, **fields):
    return _open(SuspectSpec(model=model, **fields))


PROMPTS, SEEDS = ["a red circle on a blue background", "a green square"], [5, 6]


# ---------------------------------------------------------------- diffusers -> LDM single file

_UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    for old, new in _UNET_RESNET:
        rest = rest.replace(old, new)
    return rest


def _unet_to_ldm(sd: dict, layers: int) -> dict:
    out: dict = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        if module in _UNET_FIXED:
            out[f"{_UNET_FIXED[module]}.{leaf}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            idx = int(m[1]) * (layers + 1) + int(m[3]) + 1
            sub, rest = (0, _resnet(m[4])) if m[2] == "resnets" else (1, m[4])
            out[f"input_blocks.{idx}.{sub}.{rest}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            out[f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            idx = int(m[1]) * (layers + 1) + int(m[3])
            sub, rest = (0, _resnet(m[4])) if m[2] == "resnets" else (1, m[4])
            out[f"output_blocks.{idx}.{sub}.{rest}"] = value
        elif not re.match(r"up_blocks\.\d+\.upsamplers", key):
            raise KeyError(key)
    for key, value in sd.items():  # upsamplers go last in their output block, after any attention
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            idx = int(m[1]) * (layers + 1) + layers
            sub = 2 if any(k.startswith(f"output_blocks.{idx}.1.") for k in out) else 1
            out[f"output_blocks.{idx}.{sub}.conv.{m[2]}"] = value
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def _vae_to_ldm(sd: dict, blocks: int) -> dict:
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2:
                value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out[f"first_stage_model.{new}"] = value
    return out


def pipeline_to_single_file(folder: Path, target: Path) -> Path:
    """A diffusers SD folder as one original-layout (LDM) safetensors checkpoint."""
    unet_cfg = json.loads((folder / "unet/config.json").read_text())
    vae_cfg = json.loads((folder / "vae/config.json").read_text())
    sd = _unet_to_ldm(
        load_file(folder / "unet/diffusion_pytorch_model.safetensors"), unet_cfg["layers_per_block"]
    )
    sd |= _vae_to_ldm(
        load_file(folder / "vae/diffusion_pytorch_model.safetensors"), len(vae_cfg["block_out_channels"])
    )
    for key, value in load_file(folder / "text_encoder/model.safetensors").items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        sd[f"cond_stage_model.transformer.{key}"] = value
    save_file({k: v.contiguous() for k, v in sd.items()}, str(target))
    return target


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


def write_lora(
    unet, target: Path, rank: int = 4, scale: float = 0.5, seed: int = 0, zero_b: bool = False
) -> Path:
    """A PEFT-layout LoRA on the attention projections of `unet`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn2.to_v", "attn1.to_out.0")):
            out_f, in_f = module.weight.shape
            sd[f"unet.{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * scale
            b = torch.zeros(out_f, rank) if zero_b else torch.randn(out_f, rank, generator=g) * scale
            sd[f"unet.{name}.lora_B.weight"] = b
    save_file(sd, str(target))
    return target


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
