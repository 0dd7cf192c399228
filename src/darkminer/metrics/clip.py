"""CLIP image and text features through a model's `clip`, with the preprocessing its `preprocessor_config.json` names.

Used by Dark Miner's verifying step (Eq. 6) and by CLIP-score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# OpenAI CLIP's normalisation, the default when a CLIP directory carries no preprocessor_config.json.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize to `size` x `size`, then normalise with `mean` and `std` (images come in [0, 1])."""

    size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    @classmethod
    def from_directory(cls, directory: str | Path, image_size: int) -> ClipPreprocess:
        path = Path(directory) / "preprocessor_config.json"
        if not path.is_file():
            return cls(image_size)
        record = json.loads(path.read_text())
        return cls(
            image_size, tuple(record.get("image_mean", OPENAI_MEAN)), tuple(record.get("image_std", OPENAI_STD))
        )

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        if images01.shape[-1] != self.size or images01.shape[-2] != self.size:
            images01 = F.interpolate(images01, size=(self.size, self.size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.mean, device=images01.device, dtype=images01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images01.device, dtype=images01.dtype).view(1, 3, 1, 1)
        return (images01 - mean) / std


def _require_clip(model):
    if model.clip is None:
        raise ValueError(
            f"Model {model.name!r} has no CLIP model; give one with --clip (a hub id or a local CLIPModel directory)."
        )
    return model.clip


def clip_preprocess(model) -> ClipPreprocess:
    clip = _require_clip(model)
    return getattr(model, "clip_preprocess", None) or ClipPreprocess(clip.config.vision_config.image_size)


@torch.no_grad()
def encode_images(clip, preprocess: ClipPreprocess, images01: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Projected CLIP image features (float32, CPU, not normalised) of images in [0, 1] through a bare `CLIPModel`."""
    device = next(clip.parameters()).device
    feats = [
        clip.get_image_features(pixel_values=preprocess(images01[i : i + batch_size].to(device))).pooler_output
        for i in range(0, len(images01), batch_size)
    ]
    return torch.cat(feats).float().cpu()


@torch.no_grad()
def encode_texts(clip, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Projected CLIP text features (float32, CPU, not normalised) through a bare `CLIPModel` and its tokenizer.

    Texts are cut and padded to the text encoder's own length (a tokenizer saved without `model_max_length` would
    otherwise pad to nothing and leave long captions beyond the position embeddings)."""
    device = next(clip.parameters()).device
    length = clip.config.text_config.max_position_embeddings
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt").input_ids
    return clip.get_text_features(input_ids=ids.to(device)).pooler_output.float().cpu()


def image_features(model, images01: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Projected CLIP image features (not normalised) of images in [0, 1]."""
    return encode_images(_require_clip(model), clip_preprocess(model), images01, batch_size)


def text_features(model, prompts: list[str]) -> torch.Tensor:
    """Projected CLIP text features (not normalised)."""
    return encode_texts(_require_clip(model), model.tokenizer, prompts)
