"""Recipe: a tiny CLIP trained contrastively on ShapesWorld captions.

Its text tower becomes the pipeline's text encoder; its image tower serves CLIP-score and Dark Miner's verifying
step (Eq. 6). Many captions describe one image class, so the targets are multi-positive: caption j is a positive for
image i whenever every attribute the caption names matches the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from ..captions import caption_constraints, matches
from ..data import ShapesData
from .common import RecipeSettings, run_steps


def clip_config(tokenizer: CLIPTokenizer, image_size: int = 32) -> CLIPConfig:
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=128,
    )
    vision = dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=4,
        projection_dim=128,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def clip_pixel_values(images01: torch.Tensor) -> torch.Tensor:
    """ShapesWorld CLIP's preprocessing: images in [0, 1] -> [-1, 1] (no resizing; the images are 32 px)."""
    return images01 * 2 - 1


def _jitter(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A light blur on half the batch: generated images are softer than renders, and CLIP judges both."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = torch.from_numpy(rng.random(len(images)) < 0.5).view(-1, 1, 1, 1).float()
    return pick * (0.5 * images + 0.5 * blurred) + (1 - pick) * images


def train_clip(
    data: ShapesData, tokenizer: CLIPTokenizer, settings: RecipeSettings, model: CLIPModel | None = None
) -> CLIPModel:
    """Train a CLIP from scratch, or, given `model`, fine-tune only its image side (tower, projection, logit scale).

    The second form sharpens zero-shot recognition after the text tower has become the pipeline's text encoder,
    without changing a single text-encoder weight the UNet was trained against.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    finetune_vision = model is not None
    if model is None:
        model = CLIPModel(clip_config(tokenizer))
        params = list(model.parameters())
    else:
        model.text_model.requires_grad_(False)
        model.text_projection.requires_grad_(False)
        params = [*model.vision_model.parameters(), *model.visual_projection.parameters(), model.logit_scale]
        for p in params:
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.05)
    token_cache: dict[str, list[int]] = {}

    def tokenize(captions):
        for c in captions:
            if c not in token_cache:
                token_cache[c] = tokenizer(c, padding="max_length", truncation=True).input_ids
        return torch.tensor([token_cache[c] for c in captions])

    def step(_):
        images, _, captions, idx = data.batch(rng, settings.batch_size)
        image_emb = F.normalize(
            model.get_image_features(pixel_values=_jitter(images, rng) if finetune_vision else images).pooler_output,
            dim=-1,
        )
        text_emb = F.normalize(model.get_text_features(input_ids=tokenize(captions)).pooler_output, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
        constraints = [caption_constraints(c) for c in captions]
        positive = torch.tensor(
            [[matches(constraints[j], data.labels[i]) for j in range(len(idx))] for i in idx], dtype=torch.float32
        )
        positive.fill_diagonal_(1.0)  # an image always matches its own caption
        loss_i = -(positive / positive.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_t = -(positive.T / positive.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        return (loss_i + loss_t) / 2

    model.train()
    run_steps("clip-vision" if finetune_vision else "clip", settings, optimizer, step)
    return model.eval().requires_grad_(False)
