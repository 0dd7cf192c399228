"""What several attacks need and nothing else: config checks, the original model, concept images, the vocabulary.

The discrete attacks (P4D, UnlearnDiff, Ring-A-Bell) search token ids in a *search vocabulary*: every
non-special, printable token (`vocabulary="all"`, the papers' setting) or only the whole-word tokens, those that
end a word (`</w>` in CLIP's BPE; `vocabulary="words"`, the default). A banned word is enforced by removing from the
vocabulary every token whose text contains it (case-insensitive). With whole-word tokens that is a guarantee: each
word of a decoded prompt is one token's text, so no banned word can be spelled out of pieces. With `"all"` it is
not ("st" + "ar" decodes to "star"), so configs refuse banned words with `vocabulary="all"`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..models import DiffusionModel, disable_lora
from ..models.lora import has_lora

VOCABULARIES = ("words", "all")


# ---------------------------------------------------------------------- config checks


def check_positive(owner: str, **values) -> None:
    """Raise `ValueError` naming the first field that is not > 0 (a zero budget is a mistake, not a no-op)."""
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}.")


def check_vocabulary(owner: str, vocabulary: str, banned_words: Sequence[str]) -> None:
    """Check the search vocabulary and that banned words can be guaranteed in it."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"{owner}.vocabulary={vocabulary!r} is not one of {VOCABULARIES}.")
    if any(not str(w).strip() for w in banned_words):
        raise ValueError(f"{owner}.banned_words must not contain empty words, got {list(banned_words)!r}.")
    if banned_words and vocabulary == "all":
        raise ValueError(
            f"{owner}.banned_words needs {owner}.vocabulary='words': with sub-word tokens a banned word can be "
            "spelled from pieces, so it cannot be kept out."
        )


def check_template(owner: str, name: str, template: str) -> None:
    if "{concept}" not in template:
        raise ValueError(f"{owner}.{name} must contain '{{concept}}', got {template!r}.")


# ---------------------------------------------------------------------- the original model and concept images


def warn_if_no_original(model: DiffusionModel, original: DiffusionModel | None, attack: str) -> None:
    """Warn when there is no way to get the original model's predictions (no `original`, no adapter to disable)."""
    if original is None and not has_lora(model.unet):
        warnings.warn(
            f"{attack}: the model carries no LoRA adapter and no `original` model was given, so the model itself "
            "stands in for the original (its images may not show the concept). Pass `original=` for erasures "
            "that edit weights.",
            stacklevel=3,
        )


@contextmanager
def original_model(model: DiffusionModel, original: DiffusionModel | None) -> Iterator[DiffusionModel]:
    """The model before erasure: `original` when given, else `model` with its adapters disabled for the block."""
    if original is not None:
        yield original
        return
    # peft's `enable_adapters` (run when `disable_lora` exits) turns `requires_grad` on for the adapter weights;
    # an attack must leave the model as it found it, so the flags are put back.
    flags = [(p, p.requires_grad) for p in model.unet.parameters()]
    try:
        with disable_lora(model.unet):
            yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def normal_prompts(prompts: Sequence[str] | None, concept: str, template: str, max_prompts: int) -> list[str]:
    """The normal prompts to attack: `prompts` (the first `max_prompts`), or `template` filled with the concept."""
    if prompts is None:
        return [template.format(concept=concept)]
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of non-empty strings, got {prompts!r}.")
    if len(prompts) > max_prompts:
        warnings.warn(
            f"Attacking the first {max_prompts} of {len(prompts)} prompts (max_prompts={max_prompts}).", stacklevel=3
        )
    return prompts[:max_prompts]


def images_for_prompts(
    images: torch.Tensor | None, prompts: Sequence[str] | str | None, sources: list[str]
) -> list[torch.Tensor] | None:
    """Split given concept images among the prompts they came with.

    With `N = k * P` rows for `P` given prompts, prompt `i` gets rows `[i * k, (i + 1) * k)`: an image per prompt,
    as I2P pairs them. Any other `N` is one pool that every prompt draws from (e.g. a detector's top-scoring concept
    images).

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)` in [0, 1], *optional*): the images; `None` gives `None`.
        prompts (`list[str]`, *optional*): the prompts as given to the attack.
        sources (`list[str]`): the prompts attacked, from [`normal_prompts`] (the first ones of `prompts`).

    Returns:
        `list[torch.Tensor]` with one entry per attacked prompt, or `None`.
    """
    if images is None:
        return None
    check_images(images)
    given = 1 if prompts is None or isinstance(prompts, str) else len(prompts)
    if len(images) % given == 0:
        return list(images.chunk(given))[: len(sources)]
    return [images] * len(sources)


def check_images(images: torch.Tensor) -> None:
    """Raise `ValueError` unless `images` is an `(N, 3, H, W)` tensor in [0, 1] with `N >= 1`."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a tensor of shape (N, 3, H, W) with N >= 1, got {shape}.")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("`images` must be in [0, 1] (as `generate` returns them).")


@torch.no_grad()
def draw_images(
    model: DiffusionModel,
    original: DiffusionModel | None,
    prompts: list[str],
    per_prompt: int,
    *,
    generator: torch.Generator,
    generate_steps: int,
    guidance_scale: float,
) -> torch.Tensor:
    """Images the original model draws, `per_prompt` for each prompt in turn: `(len(prompts) * per_prompt, 3, H, W)`
    in [0, 1]."""
    with original_model(model, original) as source:
        return torch.cat(
            [
                source.generate(
                    prompt,
                    num_images_per_prompt=per_prompt,
                    generator=generator,
                    num_inference_steps=generate_steps,
                    guidance_scale=guidance_scale,
                )
                for prompt in prompts
            ]
        )


@torch.no_grad()
def encode_images(model: DiffusionModel, images: torch.Tensor) -> torch.Tensor:
    """Clean latents x_0 (float32) of images in [0, 1] of shape `(N, 3, H, W)`.

    Raises:
        `ValueError`: on a wrong shape or values outside [0, 1].
    """
    check_images(images)
    return torch.cat([model.encode_images(chunk * 2 - 1, sample=False) for chunk in images.split(64)]).float()


def latents_per_prompt(
    model: DiffusionModel,
    original: DiffusionModel | None,
    prompts: list[str],
    images: list[torch.Tensor] | None,
    per_prompt: int,
    *,
    generator: torch.Generator,
    generate_steps: int,
    guidance_scale: float,
) -> list[torch.Tensor]:
    """Clean latents for each prompt: of its images (from [`images_for_prompts`]), or of `per_prompt` images the
    original model draws for it when `images` is `None`.

    Returns:
        `list[torch.Tensor]`: one `(k, C, h, w)` float32 tensor per prompt.
    """
    if images is None:
        drawn = draw_images(
            model,
            original,
            prompts,
            per_prompt,
            generator=generator,
            generate_steps=generate_steps,
            guidance_scale=guidance_scale,
        )
        return list(encode_images(model, drawn).chunk(len(prompts)))
    encoded: dict[int, torch.Tensor] = {}  # a shared pool is encoded once
    for chunk in images:
        if id(chunk) not in encoded:
            encoded[id(chunk)] = encode_images(model, chunk)
    return [encoded[id(chunk)] for chunk in images]


def sample_noisy(
    model: DiffusionModel, x0: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `batch_size` rows of `x0` (with replacement), noise and t ~ U[0, T); return (x_t, target, t), the
    target being what the UNet should predict for x_t ([`DiffusionModel.training_target`]: the noise, or v)."""
    rows = torch.randint(0, len(x0), (batch_size,), generator=generator)
    x0 = x0[rows].to(model.device, model.dtype)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.randint(0, model.num_train_timesteps, (batch_size,), generator=generator).to(model.device)
    return model.add_noise(x0, noise, t), model.training_target(x0, noise, t), t


def make_probe(
    model: DiffusionModel, x0: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed noisy latents on which a loss is comparable from step to step (the training loss, on fresh draws each
    step, is dominated by which t was drawn): rows of `x0` in turn, one noise draw, and t at the midpoints of `size`
    equal bins of [0, T). Returns (x_t, target, t) as [`sample_noisy`] does."""
    x0 = x0[torch.arange(size) % len(x0)].to(model.device, model.dtype)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = ((torch.arange(size) + 0.5) * model.num_train_timesteps / size).long().to(model.device)
    return model.add_noise(x0, noise, t), model.training_target(x0, noise, t), t


# ---------------------------------------------------------------------- the search vocabulary


def token_texts(model: DiffusionModel) -> list[str]:
    """The decoded text of every token id (what the token contributes to a decoded prompt), stripped."""
    tokenizer = model.tokenizer
    return [tokenizer.decode([index]).strip() for index in range(len(tokenizer))]


def allowed_token_ids(model: DiffusionModel, vocabulary: str, banned_words: Sequence[str] = ()) -> torch.LongTensor:
    """Ids of the search vocabulary (module docstring): no special tokens, no unprintable or empty ones, no banned
    words; with `vocabulary="words"` only tokens that end a word.

    Returns:
        `torch.LongTensor` of shape `(V_allowed,)` on the token embedding's device.

    Raises:
        `ValueError`: if nothing is left to search.
    """
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    banned = [w.lower() for word in banned_words for w in word.split()]
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    allowed = []
    for index, (token, text) in enumerate(zip(tokens, token_texts(model), strict=True)):
        if index in special or not text or not text.isprintable() or "\ufffd" in text:
            continue
        if vocabulary == "words" and not token.endswith("</w>"):
            continue
        if any(word in text.lower() for word in banned):
            continue
        allowed.append(index)
    if not allowed:
        raise ValueError(f"No token is left to search (vocabulary={vocabulary!r}, banned_words={list(banned_words)}).")
    return torch.tensor(allowed, dtype=torch.long, device=model.token_embedding.weight.device)


def project_to_tokens(soft: torch.Tensor, table: torch.Tensor, allowed: torch.LongTensor) -> torch.LongTensor:
    """Nearest allowed token of each continuous embedding by cosine similarity (PEZ's projection, Wen et al. 2023).

    Args:
        soft (`torch.Tensor` of shape `(..., D)`): continuous token embeddings.
        table (`torch.Tensor` of shape `(V, D)`): the token embedding table.
        allowed (`torch.LongTensor` of shape `(V_allowed,)`): ids that may be chosen.

    Returns:
        `torch.LongTensor` of shape `soft.shape[:-1]`: vocabulary ids.
    """
    candidates = F.normalize(table[allowed].float(), dim=-1)
    scores = F.normalize(soft.detach().float(), dim=-1) @ candidates.T
    return allowed[scores.argmax(dim=-1)]


def random_tokens(allowed: torch.LongTensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.LongTensor:
    """Ids drawn uniformly from `allowed`."""
    picks = torch.randint(0, len(allowed), shape, generator=generator)
    return allowed[picks.to(allowed.device)]


def decode(model: DiffusionModel, ids: torch.LongTensor) -> list[str]:
    """Prompts of rows of token ids (special tokens dropped)."""
    return [model.tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in ids]


def prompt_ids(model: DiffusionModel, prompt: str) -> list[int]:
    """Token ids of `prompt` without BOS/EOS."""
    return list(model.tokenizer(prompt, add_special_tokens=False).input_ids)


def remove_banned_words(prompt: str, banned_words: Sequence[str]) -> str:
    """`prompt` without the words that contain a banned word (case-insensitive)."""
    banned = [w.lower() for word in banned_words for w in word.split()]
    return " ".join(w for w in prompt.split() if not any(b in w.lower() for b in banned))
