"""Recipe: ShapesWorld's AutoencoderKL, f=4 (32 px RGB -> 4 x 8 x 8 latents), reconstruction + a light KL term."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..data import ShapesData
from .common import RecipeSettings, run_steps


def build_vae(sample_size: int = 32) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=sample_size,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        norm_num_groups=8,
    )


def train_vae(data: ShapesData, settings: RecipeSettings, kl_weight: float = 1e-6) -> AutoencoderKL:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)

    def step(_):
        images, _, _, _ = data.batch(rng, settings.batch_size)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images) + kl_weight * posterior.kl().mean()

    vae.train()
    run_steps("vae", settings, optimizer, step)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(data.images[i : i + 256]).latent_dist.mean for i in range(0, min(len(data), 2048), 256)]
        )
    # Like SD's 0.18215: scale latents to unit variance for the UNet.
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae
