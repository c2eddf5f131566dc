"""Random-weight Stable Diffusion pipelines for tests and benchmarks (no training, no download).

`build_tiny_pipeline`: the zoo's architecture (auditor/zoo/models.py) with untrained
weights: every code path of a real SD 1.x checkpoint (CLIP text encoder and tokenizer,
UNet2DConditionModel, AutoencoderKL, DDIM with SD's schedule) at a size that exports
and runs in seconds.

`build_tiny_xl_pipeline`: the same for SDXL's architecture (two text encoders, pooled text
embeddings, size conditioning), as a StableDiffusionXLPipeline folder.

`build_sd15_pipeline`: the full Stable Diffusion 1.5 architecture (860M-parameter UNet,
CLIP ViT-L/14 text encoder, the f=8 VAE; 4.3 GB of fp32 weights) from its published
configs, with random weights: what the GPU benchmarks time, since no weights can be
downloaded here. Compute per step is the real model's; the images are noise.
`sdxl_unet`: SDXL base's 2.6B-parameter UNet from its published config, random weights (for
`bench/unet.py --arch sdxl` on a GPU).
"""

from __future__ import annotations

import os
from pathlib import Path


def build_tiny_pipeline(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save an untrained zoo-architecture pipeline to `directory/model`; return that folder."""
    from auditor.backends import quiet_hf_libraries
    from auditor.zoo.models import TOKENIZER_MAX_LENGTH, make_text_encoder, make_unet, make_vae
    from auditor.zoo.pipelines import save_pipeline
    from auditor.zoo.tokenizer import build_clip_tokenizer

    quiet_hf_libraries()
    root = Path(directory)
    tokenizer = build_clip_tokenizer(root / "tokenizer-build", model_max_length=TOKENIZER_MAX_LENGTH)
    save_pipeline(root / "model", make_unet(seed), make_vae(seed), make_text_encoder(seed), tokenizer)
    return root / "model"


def build_tiny_xl_pipeline(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save an untrained SDXL zoo-architecture pipeline to `directory/model`; return that folder."""
    from auditor.backends import quiet_hf_libraries
    from auditor.zoo.models import (
        TOKENIZER_MAX_LENGTH,
        make_text_encoder,
        make_text_encoder_2,
        make_vae,
        make_xl_unet,
    )
    from auditor.zoo.pipelines import save_xl_pipeline
    from auditor.zoo.tokenizer import build_clip_tokenizer

    quiet_hf_libraries()
    root = Path(directory)
    tokenizer = build_clip_tokenizer(root / "tokenizer-build", model_max_length=TOKENIZER_MAX_LENGTH)
    save_xl_pipeline(
        root / "model",
        make_xl_unet(seed),
        make_vae(seed),
        make_text_encoder(seed),
        make_text_encoder_2(seed + 1),
        tokenizer,
    )
    return root / "model"


_EXPORTED: dict[str, Path] = {}


def exported_bundle(model: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> Path:
    """Export `model` once per process (what `t2i-audit export --precision fp16` does) and reuse it.

    Test modules share one export of the session's tiny pipeline; the first caller's
    `workdir` holds it. It carries both graph sets (`--precision fp16` adds the fp16
    graphs beside the fp32 ones), so fp32 and fp16 backends test against one bundle.
    """
    key = str(Path(model).resolve())
    if key not in _EXPORTED:
        from export.exporter import export_bundle

        out = Path(workdir) / "bundle"
        export_bundle(model, out, precision="fp16", batch_sizes=(1, 16))
        _EXPORTED[key] = out
    return _EXPORTED[key]


# Stable Diffusion 1.5's component configs (runwayml/stable-diffusion-v1-5, the values that
# differ from the diffusers / transformers defaults)
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
SD15_TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}


def sd15_unet(seed: int = 0):
    """SD 1.5's UNet2DConditionModel with random weights (seeded)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD15_UNET).eval()


def build_sd15_pipeline(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save a random-weight SD 1.5-architecture pipeline to `directory/model` (once); return it."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from auditor.backends import quiet_hf_libraries
    from auditor.zoo.pipelines import save_pipeline
    from auditor.zoo.tokenizer import build_clip_tokenizer

    root = Path(directory)
    model = root / "model"
    if (model / "model_index.json").is_file():
        return model
    quiet_hf_libraries()
    tokenizer = build_clip_tokenizer(root / "tokenizer-build", model_max_length=77)
    unet = sd15_unet(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**SD15_VAE).eval()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)).eval()
    staging = root / ".model-tmp"
    save_pipeline(staging, unet, vae, text_encoder, tokenizer)
    os.replace(staging, model)
    return model


# SDXL base 1.0's UNet config (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json: the values
# that differ from diffusers' defaults)
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_TEXT_WIDTH, SDXL_POOLED_DIM, SDXL_TEXT_LENGTH = 2048, 1280, 77


def sdxl_unet(seed: int = 0, device: str = "cpu"):
    """SDXL base's UNet2DConditionModel (2.6B parameters) with random weights (seeded)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        return UNet2DConditionModel(**SDXL_UNET).eval()
