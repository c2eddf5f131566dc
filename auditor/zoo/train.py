"""Seeded trainers for the zoo: VAE reconstruction and text-conditional noise prediction.

Both follow the recipe Stable Diffusion itself uses (a KL autoencoder trained for
reconstruction; a UNet trained to predict the noise added by the DDPM forward process,
conditioned on frozen text-encoder states, with caption dropout so classifier-free
guidance has an unconditional branch), reduced to what two CPU cores can afford.
Everything that draws random numbers takes an explicit seed, so a zoo rebuilt from the
same config has the same weights on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from auditor.zoo.models import make_train_scheduler

Progress = Callable[[int], None]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range SD's VAE expects."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(127.5).sub_(1.0)
    return x.permute(0, 3, 1, 2).contiguous()


def train_vae(
    vae: AutoencoderKL,
    images: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    kl_weight: float = 1e-6,
    progress: Progress | None = None,
) -> float:
    """Train for reconstruction; returns the final latent scaling factor (1 / latent std).

    SD stores the same factor (0.18215) in the VAE config so that scaled latents have
    unit variance, which the noise schedule assumes; the zoo measures its own.
    """
    generator = torch.Generator().manual_seed(seed)
    data = images_to_tensor(images)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        batch = data[idx]
        posterior = vae.encode(batch).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(recon, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress:
            progress(step + 1)
    vae.eval()
    with torch.no_grad():
        latents = encode_latents(vae, images, scaling_factor=1.0)
    return float(1.0 / latents.std())


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: np.ndarray, scaling_factor: float, batch: int = 64
) -> torch.Tensor:
    """Posterior means, scaled: deterministic, so cached latents equal recomputed ones."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images_to_tensor(images[start : start + batch])
        out.append(vae.encode(chunk).latent_dist.mean * scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def encode_captions(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, captions: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Hidden states exactly as StableDiffusionPipeline computes them (max-length padding)."""
    unique = sorted(set(captions) | {""})
    ids = tokenizer(
        unique,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    states = text_encoder(ids)[0]
    return {caption: states[i] for i, caption in enumerate(unique)}


def train_unet(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    captions: Sequence[str],
    caption_states: dict[str, torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    caption_dropout: float = 0.1,
    progress: Progress | None = None,
) -> float:
    """Noise-prediction training at a constant learning rate (as in the paper's fine-tunes).

    Returns the mean loss over the last 10% of steps, a cheap health figure for logs.
    """
    if len(latents) != len(captions):
        raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
    generator = torch.Generator().manual_seed(seed)
    scheduler = make_train_scheduler()
    cond = torch.stack([caption_states[c] for c in captions])
    uncond = caption_states[""]
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=generator)
        x0 = latents[idx]
        states = cond[idx].clone()
        drop = torch.rand(batch_size, generator=generator) < caption_dropout
        states[drop] = uncond
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, states).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if progress:
            progress(step + 1)
    unet.eval()
    return float(np.mean(tail))
