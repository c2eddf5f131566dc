"""LoRA files written by hand in the PEFT layout diffusers saves (`unet.<module>.lora_A.weight` / `lora_B.weight`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

ATTENTION = ("attn1.to_q", "attn1.to_k", "attn2.to_v", "attn1.to_out.0")


def write_lora(
    unet,
    target: Path,
    rank: int = 4,
    scale: float = 0.5,
    seed: int = 0,
    zero_b: bool = False,
    component: str = "unet",
    targets: tuple[str, ...] = ATTENTION,
) -> Path:
    """A PEFT-layout LoRA on the attention projections of `unet` (or of a text encoder: `component`)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in unet.named_modules():
        if name.endswith(targets):
            out_f, in_f = module.weight.shape
            sd[f"{component}.{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * scale
            b = torch.zeros(out_f, rank) if zero_b else torch.randn(out_f, rank, generator=g) * scale
            sd[f"{component}.{name}.lora_B.weight"] = b
    save_file(sd, str(target))
    return target
