"""The fp16 graphs' rules: what stays fp32 inside a half-precision copy of a component, and the attention
pattern fused kernels match.

Normalization layers compute in fp32 behind casts (their mean and variance over thousands
of fp16 activations are where fp16 Stable Diffusion runs overflow). Attention in diffusers
modules (UNet, VAE) is scaled-dot-product attention written in the pattern TensorRT's and
ONNX Runtime's fused attention match: Q and K each multiplied by d^-1/4 *before* the first
MatMul, no additive zero tensor, Softmax over the last axis, the second MatMul
(`fusable_attention`). A UNet configured with `upcast_attention` (SD 2.x) runs that same
pattern on fp32 Q, K and V. Text encoders keep transformers' eager attention with the
scores cast up for the softmax (registered under a name of ours). `ComponentSpec.half`
(auditor/backends/engines/components.py) applies them; docs/export.md says why each is
needed.
"""

from __future__ import annotations

from typing import Literal

# what a component's fp16 graph does in its attention (HalfGraphRecord.attention in the manifest)
AttentionRule = Literal["sdpa-fp16", "sdpa-fp32", "fp32-softmax"]


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


def fusable_attention(module, upcast_attention: bool = False) -> AttentionRule | None:
    """Give every diffusers Attention in `module` scaled-dot-product attention; return the rule, None if none.

    `upcast_attention=False`: diffusers' own `AttnProcessor2_0` (what StableDiffusionPipeline runs
    at torch_dtype=float16: it ignores `upcast_attention` and `upcast_softmax`). The TorchScript
    exporter (opset 17, `dynamo=False`) writes `F.scaled_dot_product_attention` as
    Mul(Q, sqrt(1/sqrt(d))), Mul(K^T, sqrt(1/sqrt(d))), MatMul, Softmax(axis=-1), MatMul: the scale
    reaches Q and K before the product, so the fp16 scores are already scaled by 1/sqrt(d)
    (TensorRT's fused attention requires exactly that), and a fused kernel never writes the
    score matrix at all. `upcast_attention=True` (SD 2.x, whose QK^T overflows fp16): the same
    pattern on fp32 Q, K and V (`Fp32SdpaProcessor`), cast back to fp16 after the second MatMul.

    The classic `AttnProcessor` (baddbmm) is never used: its graph scales after the product
    and adds a zero tensor (ConstantOfShape x 0) that no fused-attention kernel matches, and
    materializes the 4096 x 4096 scores of every head of every row (16 GB at 30 images of SD 1.5).
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    layers = [m for m in module.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.set_processor(Fp32SdpaProcessor() if upcast_attention else AttnProcessor2_0())
    if not layers:
        return None
    return "sdpa-fp32" if upcast_attention else "sdpa-fp16"


class Fp32SdpaProcessor:
    """diffusers' `AttnProcessor2_0` with Q, K and V cast to fp32 around the attention itself.

    The projections (to_q, to_k, to_v, to_out) stay in the module's dtype; only
    softmax(Q K^T / sqrt(d)) V runs in fp32, in the same prescaled pattern as fp16 attention.
    """

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        import torch.nn.functional as F

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1]).float()
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        dtype = query.dtype
        hidden_states = F.scaled_dot_product_attention(
            query.float(),
            key.float(),
            value.float(),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
        ).to(dtype)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


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
