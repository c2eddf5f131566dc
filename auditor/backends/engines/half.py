"""The fp16 graphs' rules: what stays fp32 inside a half-precision copy of a component.

Normalization layers compute in fp32 behind casts (their mean and variance over thousands
of fp16 activations are where fp16 Stable Diffusion runs overflow), and every attention
takes its softmax on fp32 scores (diffusers' classic processor with `upcast_softmax`, and
for text encoders transformers' eager attention with the scores cast up first, registered
under a name of ours). `ComponentSpec.half` (auditor/backends/engines/components.py) applies
them; docs/export.md says why each is needed.
"""

from __future__ import annotations


def keep_norms_fp32(module) -> int:
    """Replace every GroupNorm and LayerNorm in `module` by an fp32 copy behind casts; return how many."""
    import torch

    class Fp32Norm(torch.nn.Module):
        def __init__(self, norm) -> None:
            super().__init__()
            self.norm = norm.float()

        def forward(self, x):
            return self.norm(x.float()).to(x.dtype)

    targets = [
        (parent, attr)
        for parent in module.modules()
        for attr, child in parent.named_children()
        if isinstance(child, torch.nn.GroupNorm | torch.nn.LayerNorm)
    ]
    for parent, attr in targets:
        setattr(parent, attr, Fp32Norm(getattr(parent, attr)))
    return len(targets)


def softmax_in_fp32(module, upcast_attention: bool = False) -> int:
    """Give every diffusers Attention in `module` the classic processor with fp32 softmax; return how many.

    `AttnProcessor` computes scores with `Attention.get_attention_scores`, which upcasts the
    scores before the softmax when `upcast_softmax` is set, and Q and K as well (QK^T in
    fp32, for SD 2.x) when `upcast_attention` is; SDPA, traced, would run both in fp16.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor

    layers = [m for m in module.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.upcast_softmax = True
        layer.upcast_attention = bool(upcast_attention or layer.upcast_attention)
        layer.set_processor(AttnProcessor())
    return len(layers)


FP32_SOFTMAX_ATTENTION = "t2i_auditor_fp32_softmax"


def register_fp32_softmax_attention() -> str:
    """transformers' eager attention with the softmax taken on fp32 scores, registered under a name."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        output = torch.matmul(weights, value).transpose(1, 2).contiguous()
        return output, weights

    AttentionInterface.register(FP32_SOFTMAX_ATTENTION, attention)
    # and eager's additive causal mask: an unregistered name gets no mask at all (masking_utils)
    AttentionMaskInterface.register(FP32_SOFTMAX_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    return FP32_SOFTMAX_ATTENTION
