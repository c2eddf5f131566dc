"""Tiny components of the real Stable Diffusion and SDXL architectures.

The zoo must exercise exactly the code path a full SD 1.5/2.1 checkpoint takes
(diffusers UNet2DConditionModel, AutoencoderKL, a transformers CLIP text encoder
and CLIPTokenizer, a DDIM scheduler with SD's scaled-linear betas), only small
enough to train on two CPU cores in minutes. Sizes follow what was measured to carry
the paper's memorization effect on these machines (shared/design.md section 4).

SDXL (`make_text_encoder_2`, `make_xl_unet`): SDXL base's layout scaled down. Two CLIP
text encoders of different widths (32 and 64, as CLIP ViT-L and OpenCLIP bigG differ:
diffusers' single-file loader tells them apart by width), the second with a projection
(its pooled `text_embeds`); the UNet cross-attends to both encoders' penultimate hidden
states concatenated (32 + 64 = 96, SDXL's 768 + 1280 = 2048) through linear projections,
and takes the pooled embedding and the six size-conditioning numbers through
`addition_embed_type="text_time"` (SDXL: 6 x 256 + 1280 = 2816 inputs; here 6 x 8 + 32).
Its second attention block has two transformer layers (SDXL's are 2 and 10 deep). The
VAE is the zoo's: SDXL's VAE config is SD's architecture with its own scaling factor
(measured here too) and `force_upcast`, which the zoo's VAE has (diffusers' default).
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

# Stable Diffusion's noise schedule; the zoo keeps it so that schedulers, step counts
# and guidance mean the same thing here as on a real checkpoint.
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
)
TOKENIZER_MAX_LENGTH = 16  # longest zoo caption is 11 tokens with BOS/EOS


def make_text_encoder(seed: int, vocab_size: int = 49408) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


UnetAttention = Literal["low", "every"]


def block_types(attention: UnetAttention) -> tuple[tuple[str, str], tuple[str, str]]:
    """(down, up) block types. "low": attention only at the lowest resolution, as SD's deepest
    levels (the default world). "every": cross-attention at every level, as SD 1.5's three upper
    levels have it; the LoRA world (docs/zoo.md), where an attention-only LoRA sees the full-size
    latent grid and not only its 2x2 bottom."""
    if attention == "every":
        return ("CrossAttnDownBlock2D",) * 2, ("CrossAttnUpBlock2D",) * 2
    return ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")


def make_unet(
    seed: int,
    resolution: int = 32,
    channels: tuple[int, int] = (32, 64),
    attention: UnetAttention = "low",
) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    down, up = block_types(attention)
    return UNet2DConditionModel(
        sample_size=resolution // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )


XL_TEXT_HIDDEN_2 = 64  # the second text encoder's width (SDXL: 1280)
XL_POOLED_DIM = 32  # its projection, the pooled text embedding (SDXL: 1280)
XL_TIME_EMBED_DIM = 8  # per size-conditioning number (SDXL: 256)
XL_CROSS_ATTENTION_DIM = 32 + XL_TEXT_HIDDEN_2  # both encoders' states concatenated (SDXL: 2048)


def make_text_encoder_2(seed: int, vocab_size: int = 49408) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder, tiny: wider than the first, GELU (OpenCLIP's), with a projection."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=XL_TEXT_HIDDEN_2,
        intermediate_size=2 * XL_TEXT_HIDDEN_2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=XL_POOLED_DIM,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModelWithProjection(config).eval()


def make_xl_unet(
    seed: int,
    resolution: int = 32,
    channels: tuple[int, int] = (32, 64),
    attention: UnetAttention = "low",
) -> UNet2DConditionModel:
    """SDXL's UNet2DConditionModel layout (text_time added conditioning, linear projections), tiny."""
    torch.manual_seed(seed)
    down, up = block_types(attention)
    return UNet2DConditionModel(
        sample_size=resolution // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=XL_CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=XL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * XL_TIME_EMBED_DIM + XL_POOLED_DIM,
    )


def make_vae(seed: int, resolution: int = 32) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=resolution,
    )


def make_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD_SCHEDULE)


def make_inference_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
