"""Diffusers pipeline folders written as single-file checkpoints in the original (LDM) layout.

The inverse of diffusers' single-file converters, for tests: SD 1.x (`model.diffusion_model.*`,
`first_stage_model.*`, `cond_stage_model.transformer.*`) and SDXL (the same UNet layout with
`label_emb` for the added conditioning, `conditioner.embedders.0.transformer.*` for the CLIP
text encoder and `conditioner.embedders.1.model.*` for the second one in OpenCLIP's layout,
fused q/k/v `in_proj` and a transposed `text_projection`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's text_time added conditioning
    "add_embedding.linear_2": "label_emb.0.2",
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


def _text_model(key: str) -> str:
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _open_clip(sd: dict) -> dict:
    """A transformers CLIPTextModelWithProjection state dict in OpenCLIP's layout (SDXL's second encoder)."""
    sd = {_text_model(k) if not k.startswith("text_projection") else k: v for k, v in sd.items()}
    out = {
        "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    sd.pop("text_model.embeddings.position_ids", None)
    layers = sorted({int(m[1]) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{leaf}") for p in ("q", "k", "v")]
            )
            for old, new in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[f"{dst}{new}.{leaf}"] = sd.pop(f"{src}{old}.{leaf}")
    assert not sd, f"left over: {sorted(sd)}"
    return out


def pipeline_to_single_file(folder: Path, target: Path) -> Path:
    """A diffusers SD or SDXL folder as one original-layout (LDM) safetensors checkpoint."""
    index = json.loads((folder / "model_index.json").read_text())
    unet_cfg = json.loads((folder / "unet/config.json").read_text())
    vae_cfg = json.loads((folder / "vae/config.json").read_text())
    sd = _unet_to_ldm(
        load_file(folder / "unet/diffusion_pytorch_model.safetensors"), unet_cfg["layers_per_block"]
    )
    sd |= _vae_to_ldm(
        load_file(folder / "vae/diffusion_pytorch_model.safetensors"), len(vae_cfg["block_out_channels"])
    )
    first = load_file(folder / "text_encoder/model.safetensors")
    if index["_class_name"] == "StableDiffusionXLPipeline":
        for key, value in first.items():
            sd[f"conditioner.embedders.0.transformer.{_text_model(key)}"] = value
        for key, value in _open_clip(load_file(folder / "text_encoder_2/model.safetensors")).items():
            sd[f"conditioner.embedders.1.model.{key}"] = value
    else:
        for key, value in first.items():
            sd[f"cond_stage_model.transformer.{_text_model(key)}"] = value
    save_file({k: v.contiguous() for k, v in sd.items()}, str(target))
    return target
