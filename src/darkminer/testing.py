"""Tiny random Stable-Diffusion models for tests.

`tiny_model` builds, in code and in well under a second, a model with the exact component classes of Stable
Diffusion 1.x (CLIP BPE tokenizer, `CLIPTextModel`, `AutoencoderKL`, `UNet2DConditionModel` with
cross-attention, the SD noise schedule) at a size that runs on one CPU core in milliseconds. Its weights are
random, so its images are noise; it exists to exercise every code path of the library, not to draw.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

from darkminer.models.wrapper import DiffusionModel

__all__ = [
    "TINY_MAX_LENGTH",
    "TINY_METHOD_ALTERNATIVE",
    "TINY_METHOD_OVERRIDES",
    "tiny_model",
    "tiny_model_dir",
    "tiny_tokenizer",
]

TINY_MAX_LENGTH = 16
"""`model_max_length` of the tiny tokenizer (SD uses 77)."""

# Words that get a single token each, so that typical test prompts are short; any other lowercase text still
# tokenizes, character by character.
_WHOLE_WORDS = ("a", "photo", "of", "the", "red", "blue", "green", "circle", "square", "star", "cat", "dog")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of GPT-2/CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_tokenizer(max_length: int = TINY_MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over all 256 byte-level symbols plus a handful of whole-word merges.

    The vocabulary is laid out like CLIP's (bytes, bytes + `</w>`, merges, then the two special tokens), so any
    text tokenizes and the tokenizer saves and reloads as a standard `vocab.json`/`merges.txt` pair.

    Args:
        max_length (`int`, defaults to 16):
            `model_max_length`, i.e. the number of positions the text encoder sees.

    Returns:
        `CLIPTokenizer`: pad token `<|endoftext|>`, as in Stable Diffusion 1.x.
    """
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _WHOLE_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if merge not in merges:
                merges.append(merge)
                tokens.append(merged)
            parts = [merged, *parts[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tiny_model(seed: int = 0) -> DiffusionModel:
    """Build a tiny random Stable-Diffusion-architecture model, frozen and in eval mode.

    32x32 RGB images, 8x8x4 latents (VAE factor 4), a 2-layer CLIP text encoder of width 32 with 16 positions, a
    UNet with one cross-attention down block and one cross-attention up block, SD's `scaled_linear` noise schedule,
    and a tiny `CLIPModel` whose text tower is the text encoder (for CLIP features).

    Args:
        seed (`int`, defaults to 0):
            Seed of every random weight; the same seed gives the same model. The global RNG is left untouched.

    Returns:
        [`DiffusionModel`]: on CPU, float32.
    """
    tokenizer = tiny_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config)
        clip = CLIPModel(CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict()))
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=2,
        )
    # The CLIP text tower *is* the text encoder, as in the bundled ShapesWorld model.
    clip.text_model.load_state_dict(text_encoder.state_dict())
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    model = DiffusionModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        name=f"tiny-random-sd(seed={seed})",
        clip=clip,
    )
    return model.freeze()


def tiny_model_dir(path: str | Path, seed: int = 0) -> Path:
    """Save `tiny_model(seed)` as a diffusers `StableDiffusionPipeline` directory (with a `clip/` subfolder).

    Args:
        path (`str` or `Path`):
            Directory to write; created if needed.
        seed (`int`, defaults to 0):
            Seed passed to [`tiny_model`].

    Returns:
        `Path`: `path`, loadable with `load_model(path)` or `StableDiffusionPipeline.from_pretrained(path)`.
    """
    path = Path(path)
    tiny_model(seed).save_pretrained(path)
    return path


TINY_METHOD_OVERRIDES: dict[str, list[str]] = {
    "dark_miner": [
        "pool.size=4",
        "mining.length=4",
        "mining.steps=4",
        "verify.pairs=2",
        "verify.steps=2",
        "verify.tau=-1.0",
        "circumvent.steps=6",
        "circumvent.batch_size=2",
        "circumvent.images_per_embedding=2",
        "circumvent.optimizer=adam",
        "circumvent.lr=0.01",
        "circumvent.anchor=[a photo, a circle photo]",
        "generate_steps=2",
        "max_loops=2",
    ],
    "all_but_one": ["images=4", "steps=6", "batch_size=2", "generate_steps=2", "checkpoint_every=3", "lr=0.01"],
    "esd": ["steps=6", "batch_size=2", "ddim_steps=4", "checkpoint_every=3", "lr=0.01"],
    "ca": [
        "anchor=circle",
        "images=4",
        "steps=6",
        "batch_size=2",
        "generate_steps=2",
        "checkpoint_every=3",
        "lr=0.01",
    ],
    "uce": ["preserve=[circle]"],
    "fmn": ["images_per_prompt=4", "steps=6", "batch_size=2", "generate_steps=2", "checkpoint_every=3", "lr=0.01"],
    "sld": ["sld_warmup_steps=0"],
    "salun": [
        "random_labels=[circle]",
        "images=4",
        "retain_images=4",
        "steps=6",
        "batch_size=2",
        "generate_steps=2",
        "checkpoint_every=3",
        "lr=0.01",
    ],
}
"""Dotted overrides that make each registered method run in about a second on [`tiny_model`] (tests, smoke runs).
Dark Miner's tau of -1 makes every mined embedding pass verification, so every loop circumvents."""

TINY_METHOD_ALTERNATIVE: dict[str, str] = {"all_but_one": "circle"}
