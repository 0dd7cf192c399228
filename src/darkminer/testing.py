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
    "random_model",
    "tiny_model",
    "tiny_clip_dir",
    "tiny_model_dir",
    "tiny_single_file",
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


def tiny_tokenizer(max_length: int = TINY_MAX_LENGTH, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP BPE tokenizer over all 256 byte-level symbols plus a handful of whole-word merges.

    The vocabulary is laid out like CLIP's (bytes, bytes + `</w>`, merges, then the two special tokens), so any
    text tokenizes and the tokenizer saves and reloads as a standard `vocab.json`/`merges.txt` pair.

    Args:
        max_length (`int`, defaults to 16):
            `model_max_length`, i.e. the number of positions the text encoder sees.
        pad_token (`str`, defaults to `"<|endoftext|>"`):
            The padding token: EOS as in Stable Diffusion 1.x, or `"!"` as in SD 2.x.

    Returns:
        `CLIPTokenizer`.
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
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token=pad_token)


def _sd_scheduler(v_prediction: bool) -> DDPMScheduler:
    """Stable Diffusion's training schedule (`scaled_linear` betas, no clipping), epsilon or v-prediction (SD 2.x)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def tiny_model(seed: int = 0, family: str = "sd1") -> DiffusionModel:
    """Build a tiny random Stable-Diffusion-architecture model, frozen and in eval mode.

    32x32 RGB images, 8x8x4 latents (VAE factor 4), a 2-layer CLIP text encoder of width 32 with 16 positions, a
    UNet with one cross-attention down block and one cross-attention up block, SD's `scaled_linear` noise schedule,
    and a tiny `CLIPModel` whose text tower is the text encoder (for CLIP features).

    Args:
        seed (`int`, defaults to 0):
            Seed of every random weight; the same seed gives the same model. The global RNG is left untouched.
        family (`str`, defaults to `"sd1"`):
            `"sd1"`: SD 1.x (epsilon prediction, EOS padding). `"sd2"`: SD 2.x 768 (v-prediction, `"!"` padding,
            linear projections around the attention, per-level head dimensions).

    Returns:
        [`DiffusionModel`]: on CPU, float32.
    """
    if family not in ("sd1", "sd2"):
        raise ValueError(f"family must be 'sd1' or 'sd2', got {family!r}.")
    sd2 = family == "sd2"
    tokenizer = tiny_tokenizer(pad_token="!" if sd2 else "<|endoftext|>")
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
            attention_head_dim=(2, 4) if sd2 else 2,
            use_linear_projection=sd2,
        )
    # The CLIP text tower *is* the text encoder, as in the bundled ShapesWorld model.
    clip.text_model.load_state_dict(text_encoder.state_dict())
    model = DiffusionModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=_sd_scheduler(sd2),
        name=f"tiny-random-{family}(seed={seed})",
        clip=clip,
    )
    return model.freeze()


def tiny_model_dir(path: str | Path, seed: int = 0, family: str = "sd1", clip: bool = True) -> Path:
    """Save `tiny_model(seed, family)` as a diffusers `StableDiffusionPipeline` directory.

    Args:
        path (`str` or `Path`):
            Directory to write; created if needed.
        seed (`int`, defaults to 0):
            Seed passed to [`tiny_model`].
        family (`str`, defaults to `"sd1"`):
            Family passed to [`tiny_model`].
        clip (`bool`, defaults to `True`):
            Also save the CLIP model in a `clip/` subfolder; without it the directory is like a real SD checkpoint's,
            and Dark Miner needs `--clip` ([`tiny_clip_dir`]).

    Returns:
        `Path`: `path`, loadable with `load_model(path)` or `StableDiffusionPipeline.from_pretrained(path)`.
    """
    path = Path(path)
    model = tiny_model(seed, family)
    if not clip:
        model.clip = None
    model.save_pretrained(path)
    return path


def tiny_clip_dir(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny `CLIPModel` of `tiny_model(seed)` with its tokenizer, as a `--clip` directory.

    Returns:
        `Path`: `path`.
    """
    path = Path(path)
    model = tiny_model(seed)
    model.clip.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
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


# ---------------------------------------------------------------------- other families and formats
# The inverse of the key renames diffusers' single-file loader applies (diffusers.loaders.single_file_utils), so that
# tests can write what A1111/ComfyUI users have: one original-layout (LDM) safetensors file of an SD 1.x model.
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"))
_UNET_RESNET += (("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, pairs) -> str:
    head, _, leaf = rest.rpartition(".")
    for new, old in pairs:
        if head == new or head.startswith(new + "."):
            return old + head[len(new) :] + "." + leaf
    return rest


def _ldm_unet_key(key: str, config) -> str:
    per_level = config.layers_per_block + 1
    parts = key.split(".")
    head, _, leaf = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{leaf}"
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
        slot = block * per_level + index + 1
        return (
            f"input_blocks.{slot}.0.{_rename(rest, _UNET_RESNET)}"
            if kind == "resnets"
            else f"input_blocks.{slot}.1.{rest}"
        )
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        return (
            f"middle_block.{2 * index}.{_rename(rest, _UNET_RESNET)}"
            if kind == "resnets"
            else f"middle_block.1.{rest}"
        )
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config.up_block_types[block]
            return f"output_blocks.{block * per_level + per_level - 1}.{2 if has_attention else 1}.{rest}"
        slot = block * per_level + index
        return (
            f"output_blocks.{slot}.0.{_rename(rest, _UNET_RESNET)}"
            if kind == "resnets"
            else f"output_blocks.{slot}.1.{rest}"
        )
    raise KeyError(f"No LDM name for UNet parameter {key!r}.")


def _ldm_vae_key(key: str, config) -> str:
    half, parts = key.split(".")[0], key.split(".")
    if len(parts) == 3 and parts[1] in ("conv_in", "conv_out", "conv_norm_out"):
        return f"{half}.{parts[1].replace('conv_norm_out', 'norm_out')}.{parts[2]}"
    if half in ("quant_conv", "post_quant_conv"):
        return key
    if parts[1] == "mid_block":
        kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{half}.mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{half}.mid.attn_1.{_rename(rest, _VAE_ATTENTION)}"
    block, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
    if half == "decoder":
        block = len(config.up_block_types) - 1 - block
    level = "down" if half == "encoder" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{half}.{level}.{block}.{kind[:-2]}.{rest.removeprefix('0.')}"
    index, rest = rest.split(".", 1)
    return f"{half}.{level}.{block}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"


def tiny_single_file(path: str | Path, seed: int = 0) -> Path:
    """Save `tiny_model(seed)` as one original-layout (LDM) SD 1.x `.safetensors` checkpoint, as A1111/ComfyUI
    users have them; `tiny_model_dir` of the same seed is the config directory `load_model` needs with it.

    Args:
        path (`str` or `Path`):
            The `.safetensors` file to write.
        seed (`int`, defaults to 0):
            Seed passed to [`tiny_model`].

    Returns:
        `Path`: `path`.
    """
    from safetensors.torch import save_file

    model = tiny_model(seed)
    state = {}
    for key, value in model.unet.state_dict().items():
        state["model.diffusion_model." + _ldm_unet_key(key, model.unet.config)] = value
    for key, value in model.vae.state_dict().items():
        state["first_stage_model." + _ldm_vae_key(key, model.vae.config)] = value
    for key, value in model.text_encoder.state_dict().items():
        state["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    path = Path(path)
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


_ARCHITECTURES = ("tiny", "sd14", "sd21")


def random_model(architecture: str = "tiny", seed: int = 0) -> DiffusionModel:
    """A random-weight model of a named architecture, built in memory with nothing downloaded (benchmarks).

    Args:
        architecture (`str`, defaults to `"tiny"`):
            `"tiny"` ([`tiny_model`]), `"sd14"` (SD 1.4/1.5: 860M-parameter UNet, CLIP ViT-L/14 text encoder, 512 px,
            epsilon) or `"sd21"` (SD 2.1 768: OpenCLIP ViT-H text encoder, linear projections, 768 px, v-prediction).
            The tokenizer is [`tiny_tokenizer`] at 77 positions; the text encoder's vocabulary has CLIP's size.
        seed (`int`, defaults to 0):
            Seed of the weights.

    Returns:
        [`DiffusionModel`] on CPU in float32, without a CLIP model, frozen.

    Raises:
        `ValueError`: an unknown architecture.
    """
    if architecture == "tiny":
        return tiny_model(seed)
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; use one of {', '.join(_ARCHITECTURES)}.")
    sd2 = architecture == "sd21"
    tokenizer = tiny_tokenizer(max_length=77, pad_token="!" if sd2 else "<|endoftext|>")
    width = 1024 if sd2 else 768
    text_config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=23 if sd2 else 12,
        num_attention_heads=16 if sd2 else 12,
        max_position_embeddings=77,
        hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=768 if sd2 else 512,
        )
        unet = UNet2DConditionModel(
            sample_size=96 if sd2 else 64,
            cross_attention_dim=width,
            attention_head_dim=(5, 10, 20, 20) if sd2 else 8,
            use_linear_projection=sd2,
        )
    model = DiffusionModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=_sd_scheduler(sd2),
        name=f"random-{architecture}(seed={seed})",
    )
    return model.freeze()
