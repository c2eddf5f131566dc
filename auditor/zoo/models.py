"""Tiny components of the real Stable Diffusion architecture.

The zoo must exercise exactly the code path a full SD 1.5/2.1 checkpoint takes
(diffusers UNet2DConditionModel, AutoencoderKL, a transformers CLIP text encoder
and CLIPTokenizer, a DDIM scheduler with SD's scaled-linear betas), only small
enough to train on two CPU cores in minutes. Sizes follow what was measured to carry
the paper's memorization effect on these machines (shared/design.md section 4).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

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


def make_unet(seed: int, resolution: int = 32, channels: tuple[int, int] = (32, 64)) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=resolution // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
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
