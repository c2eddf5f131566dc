"""The one trainer: fine-tune a diffusers Stable Diffusion or SDXL folder on captioned images, full or LoRA.

It builds the innocent references an owner calibrates against (`t2i-audit references
build`, on their own real images), and the zoo's references, suspects and shadow models,
so the models a verdict is calibrated on are made the way the study measured. It follows
the recipe Stable Diffusion fine-tuning uses: the text encoder and VAE frozen, the UNet
(or LoRA adapters on its attention projections, or LoCon-style on every linear and convolution) trained to predict the noise the DDPM
forward process added (or the velocity, for v-prediction models), with caption dropout
so classifier-free guidance keeps its unconditional branch, AdamW at a constant rate.

SDXL (a StableDiffusionXLPipeline base) is trained on what its pipeline feeds the UNet: both
text encoders' penultimate hidden states concatenated, the second encoder's pooled
embedding (`text_embeds`) and the size conditioning (`time_ids`: original size, crop
top-left, target size; here (H, W, 0, 0, H, W), the images' own size uncropped, which is
what generation uses by default), with the caption dropout applied to the pooled
embedding too. The UNet's added-conditioning layers (`add_embedding`) train with the rest
of it.

Every random draw takes its seed from the recipe, so the same base, data and recipe give
the same weights on the same machine. Works on the CPU (the tiny zoo) and on CUDA (a
real SD 1.x / 2.x checkpoint; `gradient_checkpointing` for the large UNet).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from auditor.config import FrozenModel
from auditor.errors import BadInputError, first_line
from auditor.identity import forget_load_paths
from auditor.progress import Reporter

Progress = Callable[[int], None]
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# LoCon style: every linear and convolution of the UNet's blocks, as LyCORIS' LoCon and kohya's
# conv LoRA adapt them (peft matches a name or a name's last dotted parts: "conv" is a sampler's)
LOCON_TARGETS = (
    *LORA_TARGETS,
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv",
    "conv_in",
    "conv_out",
    "time_emb_proj",
)
LORA_TARGET_SETS = {"attention": LORA_TARGETS, "locon": LOCON_TARGETS}
LORA_FILE = "pytorch_lora_weights.safetensors"


class Recipe(FrozenModel):
    """How one model is fine-tuned; everything here changes the weights, so all of it is recorded."""

    steps: int = Field(ge=1, le=10_000_000)
    learning_rate: float = Field(gt=0.0, le=1.0)
    batch_size: int = Field(16, ge=1, le=4096)
    samples: int | None = Field(
        None, ge=1, description="train on a seeded draw of this many pairs; None: all"
    )
    seed: int = Field(0, ge=0, lt=2**63)
    lora_rank: int | None = Field(None, ge=1, le=1024, description="None: a full UNet fine-tune")
    lora_targets: Literal["attention", "locon"] | None = Field(
        None, description="LoRA modules: the attention projections (None, 'attention') or LoCon's set"
    )
    caption_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    gradient_checkpointing: bool = False


def images_to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range SD's VAE expects."""
    import torch

    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(127.5).sub_(1.0)
    return x.permute(0, 3, 1, 2).contiguous()


def encode_latents(vae, images: np.ndarray, scaling_factor: float, batch: int = 64, device="cpu"):
    """Posterior means, scaled: deterministic, so cached latents equal recomputed ones."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = images_to_tensor(images[start : start + batch]).to(device=device, dtype=vae.dtype)
            out.append(vae.encode(chunk).latent_dist.mean.float() * scaling_factor)
    return torch.cat(out)


def _token_ids(tokenizer, texts: list[str], device):
    """Token ids as the pipelines tokenize prompts: padded to the tokenizer's max length, truncated."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def encode_captions(tokenizer, text_encoder, captions: Sequence[str], device="cpu") -> dict:
    """Hidden states exactly as StableDiffusionPipeline computes them (max-length padding)."""
    import torch

    unique = sorted(set(captions) | {""})
    ids = _token_ids(tokenizer, unique, device)
    with torch.no_grad():
        states = text_encoder(ids)[0].float()
    return {caption: states[i] for i, caption in enumerate(unique)}


def encode_xl_captions(tokenizers, text_encoders, captions: Sequence[str], device="cpu") -> tuple[dict, dict]:
    """SDXL's (states, pooled) per caption exactly as StableDiffusionXLPipeline.encode_prompt computes them:
    each encoder's penultimate hidden states (max-length padding), concatenated; the last one's text_embeds."""
    import torch

    unique = sorted(set(captions) | {""})
    parts, pooled = [], None
    with torch.no_grad():
        for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
            out = encoder(_token_ids(tokenizer, unique, device), output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds, the pooled embedding
                pooled = out[0].float()
            parts.append(out.hidden_states[-2].float())
    if pooled is None:
        raise ValueError(
            "SDXL's last text encoder must return pooled text_embeds (CLIPTextModelWithProjection)"
        )
    states = torch.cat(parts, dim=-1)
    return (
        {caption: states[i] for i, caption in enumerate(unique)},
        {caption: pooled[i] for i, caption in enumerate(unique)},
    )


def xl_time_ids(height: int, width: int, device="cpu"):
    """SDXL's add_time_ids for uncropped images of their own size: (H, W, 0, 0, H, W)."""
    import torch

    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32, device=device)


def train_noise_prediction(
    unet,
    latents,
    captions: Sequence[str],
    caption_states: dict,
    scheduler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    caption_dropout: float = 0.1,
    parameters=None,
    progress: Progress | None = None,
    pooled: dict | None = None,
    time_ids=None,
) -> float:
    """Noise-prediction training at a constant learning rate; returns the mean loss of the last 10%.

    SDXL: `pooled` (caption -> text_embeds) and `time_ids` (6,) are the UNet's added conditioning;
    a dropped caption drops its pooled embedding too. No random draw depends on them, so an SD
    run draws exactly what it drew before they existed."""
    import torch

    if len(latents) != len(captions):
        raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
    device = latents.device
    generator = torch.Generator().manual_seed(seed)
    cond = torch.stack([caption_states[c] for c in captions])
    uncond = caption_states[""]
    if (pooled is None) != (time_ids is None):
        raise ValueError("SDXL's added conditioning needs both pooled embeddings and time_ids")
    cond_pooled = torch.stack([pooled[c] for c in captions]) if pooled is not None else None
    unet.train()
    params = [p for p in (parameters if parameters is not None else unet.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    velocity = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=generator)
        x0 = latents[idx]
        states = cond[idx].clone()
        drop = torch.rand(batch_size, generator=generator) < caption_dropout
        states[drop.to(device)] = uncond
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(
            device
        )
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if velocity else noise
        added = None
        if cond_pooled is not None:
            text_embeds = cond_pooled[idx].clone()
            text_embeds[drop.to(device)] = pooled[""]  # type: ignore[index]
            added = {
                "text_embeds": text_embeds.to(unet.dtype),
                "time_ids": time_ids.to(device).expand(batch_size, -1).to(unet.dtype),
            }
        pred = unet(noisy.to(unet.dtype), t, states.to(unet.dtype), added_cond_kwargs=added).sample.float()
        loss = torch.nn.functional.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if progress:
            progress(step + 1)
    unet.eval()
    return float(np.mean(tail))


def draw(images: np.ndarray, captions: Sequence[str], recipe: Recipe) -> tuple[np.ndarray, list[str]]:
    """The recipe's seeded draw of `samples` pairs (without replacement), or all of them."""
    n = len(captions)
    if recipe.samples is None or recipe.samples >= n:
        return images, list(captions)
    order = np.random.default_rng([recipe.seed, 7]).choice(n, size=recipe.samples, replace=False)
    order.sort()
    return images[order], [captions[i] for i in order]


def finetune(
    base: str | os.PathLike[str],
    images: np.ndarray,
    captions: Sequence[str],
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    device: str = "cpu",
    reporter: Reporter | None = None,
    label: str = "fine-tune",
) -> Path:
    """Fine-tune `base` (a diffusers SD folder) on (images, captions); write a pipeline folder, or
    with `lora_rank` the LoRA file `out/pytorch_lora_weights.safetensors`. Returns what was written."""
    import diffusers
    import torch
    import transformers

    from auditor.backends import quiet_hf_libraries, read_pipeline, resolve_device

    quiet_hf_libraries()
    reporter = reporter or Reporter()
    base_dir, out_dir = Path(base), Path(out)
    info = read_pipeline(base_dir)
    if len(images) != len(captions) or len(images) == 0:
        raise BadInputError(
            f"{label}: expected as many captions as images, and some, got {len(images)} and {len(captions)}"
        )
    device = resolve_device(device)
    try:
        tokenizers = [transformers.CLIPTokenizer.from_pretrained(base_dir / "tokenizer")]
        text_encoders = [
            transformers.CLIPTextModel.from_pretrained(base_dir / "text_encoder").to(device).eval()
        ]
        if info.is_xl:
            tokenizers.append(transformers.CLIPTokenizer.from_pretrained(base_dir / "tokenizer_2"))
            encoder_2 = transformers.CLIPTextModelWithProjection.from_pretrained(base_dir / "text_encoder_2")
            text_encoders.append(encoder_2.to(device).eval())
        vae = diffusers.AutoencoderKL.from_pretrained(base_dir / "vae").to(device).eval()
        unet = diffusers.UNet2DConditionModel.from_pretrained(base_dir / "unet").to(device)
        scheduler = diffusers.DDPMScheduler.from_pretrained(base_dir / "scheduler")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BadInputError(
            f"{base_dir}: could not load the components to fine-tune ({first_line(exc)})"
        ) from None
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    if images.shape[1:3] != (size, size):
        raise BadInputError(
            f"{label}: images are {images.shape[1]}x{images.shape[2]}, the base generates {size}x{size};"
            " resize them to the base's resolution"
        )
    images, captions = draw(images, captions, recipe)
    torch.manual_seed(recipe.seed)
    latents = encode_latents(vae, images, float(vae.config.scaling_factor), device=device)
    pooled = time_ids = None
    if info.is_xl:
        states, pooled = encode_xl_captions(tokenizers, text_encoders, captions, device)
        time_ids = xl_time_ids(size, size, device)
    else:
        states = encode_captions(tokenizers[0], text_encoders[0], captions, device)
    parameters = None
    if recipe.lora_rank is not None:
        parameters = _add_lora(unet, recipe.lora_rank, LORA_TARGET_SETS[recipe.lora_targets or "attention"])
    if recipe.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    with reporter.task(f"{label}: {recipe.steps} steps", recipe.steps) as advance:
        train_noise_prediction(
            unet,
            latents,
            captions,
            states,
            scheduler,
            steps=recipe.steps,
            batch_size=recipe.batch_size,
            lr=recipe.learning_rate,
            seed=recipe.seed,
            caption_dropout=recipe.caption_dropout,
            parameters=parameters,
            progress=advance,
            pooled=pooled,
            time_ids=time_ids,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.lora_rank is not None:
        return _save_lora(unet, out_dir, diffusers_names=recipe.lora_targets in (None, "attention"))
    _save_pipeline(base_dir, unet.to("cpu"), out_dir)
    return out_dir


def _add_lora(unet, rank: int, targets: tuple[str, ...] = LORA_TARGETS):
    """peft LoRA on `targets` (rank = alpha), the rest of the UNet frozen."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise BadInputError(
            "--lora-rank: training a LoRA needs the 'peft' package (pip install peft)"
        ) from None
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))
    )
    return [p for p in unet.parameters() if p.requires_grad]


def _save_lora(unet, out: Path, diffusers_names: bool = True) -> Path:
    """The adapters as a diffusers LoRA file. Attention-only LoRAs keep diffusers' own names
    (`lora.down`/`lora.up`), as before LoCon; LoCon files keep peft's (`lora_A`/`lora_B`) for every
    module, since diffusers' converter renames only the attention projections and a file of mixed
    names loads without them (measured: 49 of 81 modules attached, no error)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(unet.to("cpu"))
    if diffusers_names:
        layers = convert_state_dict_to_diffusers(layers)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    return out / LORA_FILE


def _save_pipeline(base: Path, unet, out: Path) -> None:
    """The base folder with the fine-tuned UNet in place of its own (every other file copied)."""
    for item in sorted(base.iterdir()):
        if item.name == "unet" or item.name.startswith("."):
            continue
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(item, target)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    forget_load_paths(out / "unet")  # the base's files stay as they were; the UNet is ours
