"""Recipe: ShapesWorld's UNet2DConditionModel, trained as Stable Diffusion v1 is: epsilon prediction on VAE latents,
a frozen CLIP text encoder for cross-attention, 10% empty captions for classifier-free guidance, and an EMA copy."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..data import ShapesData
from .common import RecipeSettings, run_steps

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_unet(cross_attention_dim: int = 128, sample_size: int = 8) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(48, 96, 96),
        norm_num_groups=16,
        cross_attention_dim=cross_attention_dim,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
    )


def train_unet(
    data: ShapesData,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    settings: RecipeSettings,
    uncond_prob: float = 0.1,
    ema_decay: float = 0.999,
) -> UNet2DConditionModel:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    scheduler = DDPMScheduler(**SD_BETAS)
    unet = build_unet(text_encoder.config.hidden_size)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.lr, weight_decay=0.0)
    with torch.no_grad():
        dists = [vae.encode(data.images[i : i + 512]).latent_dist for i in range(0, len(data), 512)]
    mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    scale = vae.config.scaling_factor

    def step(step_index):
        _, _, captions, idx = data.batch(rng, settings.batch_size)
        captions = ["" if rng.random() < uncond_prob else c for c in captions]
        idx = torch.from_numpy(idx)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scale
        ids = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            cond = text_encoder(ids).last_hidden_state
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
        if step_index > 0:
            with torch.no_grad():
                decay = min(ema_decay, (1 + step_index) / (10 + step_index))
                for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                    p_ema.lerp_(p.detach(), 1 - decay)
        return F.mse_loss(pred, noise)

    unet.train()
    run_steps("unet", settings, optimizer, step)
    return ema.eval()
