"""The zoo's VAE trainer (every UNet, from the base on, is trained by `auditor.finetune`).

A KL autoencoder trained for reconstruction, as Stable Diffusion's, reduced to what two
CPU cores afford; seeded, so a zoo rebuilt from the same config has the same weights on
the same machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL

from auditor.finetune import encode_latents, images_to_tensor

Progress = Callable[[int], None]


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
