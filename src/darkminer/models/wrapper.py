"""The one model contract of darkminer: a frozen Stable-Diffusion-family model behind small named steps.

Every erasure method, attack and metric talks to the model only through [`DiffusionModel`]. It accepts
embeddings wherever it accepts strings (`encode_prompt(token_embeds=...)`, `generate(cond=...)`), so that methods
which optimise a prompt embedding (Dark Miner's mining step, textual-inversion attacks) need no access to the
library classes underneath.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer
from transformers.masking_utils import create_causal_mask

from darkminer.models.lora import has_lora, upcast_lora_params
from darkminer.models.runtime import dtype_name

if TYPE_CHECKING:
    from darkminer.models.safe_guidance import SafeLatentDiffusion

__all__ = ["DiffusionModel"]

StepCallback = Callable[
    ["DiffusionModel", int, torch.Tensor, dict[str, torch.Tensor]], "dict[str, torch.Tensor] | None"
]

LATENT_BUDGET = 8 * 64 * 64
"""Latent pixels per sampling and VAE chunk when no `batch_size` is set: 8 images of SD 1.x at 512 px (64x64
latents), which with classifier-free guidance keeps a chunk's UNet batch at 16, within a 24 GB card in fp32."""

# transformers 5 renamed create_causal_mask's `past_key_values` to `cache` and warns on the old name.
_NO_CACHE = {("cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"): None}


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` must be a string or a non-empty sequence of strings, got {prompts!r}.")
    return prompts


class DiffusionModel:
    r"""A Stable-Diffusion-family text-to-image model: the components, and the steps methods and attacks use.

    Build one with [`~darkminer.models.load_model`] (or [`~darkminer.testing.tiny_model`] in tests). The modules
    are shared, not copied: a LoRA adapter added to `unet` changes what every method here computes.

    Args:
        tokenizer (`CLIPTokenizer`):
            Tokenizer of the text encoder; `model_max_length` is the length of every conditioning.
        text_encoder (`CLIPTextModel`):
            Frozen CLIP text encoder; its last hidden state (after the final layer norm) conditions the UNet.
        vae (`AutoencoderKL`):
            Autoencoder between images in [-1, 1] and latents.
        unet (`UNet2DConditionModel`):
            Noise-prediction network, conditioned on the text encoder's hidden states through cross-attention.
        scheduler (`DDPMScheduler`):
            The *training* noise schedule, used by [`add_noise`]. Sampling builds a fresh `DDIMScheduler` from its
            config on every call.
        name (`str`):
            Where the model came from (the spec given to `load_model`), recorded in run configs and reports.
        clip (`CLIPModel`, *optional*):
            A CLIP model for image/text features (Dark Miner's verify step, CLIP-score), or `None`.
    """

    def __init__(
        self,
        *,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        name: str,
        clip: CLIPModel | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.unet = unet
        self.scheduler = scheduler
        self.name = name
        self.clip = clip
        # How images are prepared for `clip` (a `darkminer.metrics.clip.ClipPreprocess`); None: OpenAI CLIP's.
        self.clip_preprocess = None
        # Safe Latent Diffusion sampling (`darkminer.models.safe_guidance`), attached by `apply_adapter` for an SLD
        # run; while it is attached and enabled, `generate` delegates sampling to it.
        self.safe_guidance: SafeLatentDiffusion | None = None
        # Images per sampling / VAE chunk; None: `LATENT_BUDGET` latent pixels per chunk (see `chunk_size`).
        self.batch_size: int | None = None
        # What `speed_up` switched on: the compiled part of the UNet, and its memory format.
        self.compiled = "off"
        self.channels_last = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"

    # ------------------------------------------------------------------ modules, device and dtype

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The torch modules of the model by component name (`clip` only when present)."""
        modules: dict[str, nn.Module] = {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet}
        if self.clip is not None:
            modules["clip"] = self.clip
        return modules

    def _base_weight(self) -> torch.Tensor:
        # The first base (non-LoRA) parameter. diffusers' `unet.device` / `unet.dtype` walk every module, which costs
        # more than a tiny model's whole UNet step; the first parameter (conv_in's) answers the same question.
        return next(p for name, p in self.unet.named_parameters() if "lora_" not in name)

    @property
    def device(self) -> torch.device:
        """Device of the UNet (all modules are kept on one device)."""
        return self._base_weight().device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the UNet's base weights."""
        return self._base_weight().dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DiffusionModel:
        """Move every module to `device` and/or cast it to `dtype`, in place.

        LoRA parameters already added to the UNet stay float32 whatever `dtype` is.

        Args:
            device (`str` or `torch.device`, *optional*):
                Target device; unchanged if `None`.
            dtype (`torch.dtype`, *optional*):
                Target floating-point dtype; unchanged if `None`.

        Returns:
            [`DiffusionModel`]: `self`.
        """
        # Only the arguments given: diffusers warns about keeping modules in float32 whenever `dtype` is passed.
        moves = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for module in self.modules.values():
            module.to(**moves)
        if dtype is not None:
            upcast_lora_params(self.unet)
        return self

    @property
    def chunk_size(self) -> int:
        """Images per chunk of [`generate`], [`encode_images`] and [`decode_latents`]: `batch_size` if set, else as
        many as fit in `LATENT_BUDGET` latent pixels."""
        if self.batch_size is not None:
            return self.batch_size
        _, height, width = self.latent_shape
        return max(1, LATENT_BUDGET // (height * width))

    def runtime(self) -> dict[str, str | int | None]:
        """Where and how the model runs, as recorded in run directories and reports."""
        return {
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "batch_size": self.chunk_size,
            "compile": self.compiled,
            "channels_last": self.channels_last,
        }

    def speed_up(self, *, compile: str = "off", channels_last: bool = False) -> DiffusionModel:
        """Make the UNet faster without changing what it computes (beyond float rounding), in place.

        Args:
            compile (`str`, defaults to `"off"`):
                `"unet"`: `torch.compile` of the UNet's whole forward; `"blocks"`: of each down, mid and up block
                (the same kernels for repeated blocks, so a shorter compilation). Modules are compiled in place
                (`nn.Module.compile`), so parameter names, adapters and checkpoints are unchanged. The first steps
                pay the compilation, and each new input shape or adapter state compiles again.
            channels_last (`bool`, defaults to `False`):
                Keep the UNet's weights in channels-last memory format, which GPU convolutions run faster in.

        Returns:
            [`DiffusionModel`]: `self`.
        """
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile == "unet":
            self.unet.compile()
        elif compile == "blocks":
            for block in [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]:
                block.compile()
        elif compile != "off":
            raise ValueError(f"compile={compile!r} is not one of off, unet, blocks.")
        self.compiled = compile
        self.channels_last = self.channels_last or channels_last
        return self

    def freeze(self) -> DiffusionModel:
        """Put every module in eval mode and turn off its gradients (`load_model` returns frozen models).

        Gradients still flow *through* the frozen modules to inputs such as `token_embeds` or `cond`.

        Returns:
            [`DiffusionModel`]: `self`.
        """
        for module in self.modules.values():
            module.requires_grad_(False)
            module.eval()
        return self

    # ------------------------------------------------------------------ text

    @property
    def max_length(self) -> int:
        """Number of token positions of every prompt (`tokenizer.model_max_length`, 77 for SD)."""
        return int(self.tokenizer.model_max_length)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The text encoder's input embedding table (token id -> input vector of width `D`)."""
        return self.text_encoder.get_input_embeddings()

    def tokenize(self, prompts: str | Sequence[str]) -> torch.LongTensor:
        """Token ids of `prompts`, with BOS/EOS, padded and truncated to `max_length`.

        Args:
            prompts (`str` or `Sequence[str]`):
                One prompt or a batch of prompts.

        Returns:
            `torch.LongTensor` of shape `(batch_size, max_length)` on the model's device.
        """
        ids = self.tokenizer(
            _as_list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids.to(self.device)

    def _special_ids(self) -> tuple[int, int, int]:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        return bos, eos, pad

    def token_count(self, prompt: str) -> int:
        """How many tokens `prompt` has without BOS/EOS: the smallest `length` at which [`prompt_token_embeddings`]
        keeps it whole."""
        return len(self.tokenizer(prompt, add_special_tokens=False).input_ids)

    def whole_words(self) -> list[str]:
        """The words the tokenizer writes as one token: its vocabulary entries that end a word (`</w>`) and are
        alphabetic, in id order."""
        marked = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        return [t[: -len("</w>")] for t in marked if t.endswith("</w>") and t[: -len("</w>")].isalpha()]

    def prompt_token_embeddings(self, prompts: str | Sequence[str], length: int) -> torch.Tensor:
        """Input embeddings of each prompt's tokens, without BOS/EOS, cut or padded to `length` tokens.

        Padding uses the pad token's embedding, so `encode_prompt(token_embeds=prompt_token_embeddings(p, L))`
        reproduces `encode_prompt(p)` whenever the pad token is EOS (SD 1.x) and `p` fits in `L` tokens. Used to
        initialise a free prompt embedding from a prompt.

        Args:
            prompts (`str` or `Sequence[str]`):
                One prompt or a batch of prompts.
            length (`int`):
                Number of token positions `L`; at most `max_length - 2`.

        Returns:
            `torch.Tensor` of shape `(batch_size, length, D)`, a new tensor without gradient history.

        Raises:
            `ValueError`: if `length` is not in `[1, max_length - 2]`.
        """
        if not 1 <= length <= self.max_length - 2:
            raise ValueError(f"`length` must be in [1, {self.max_length - 2}] (max_length - 2), got {length}.")
        _, _, pad = self._special_ids()
        rows = []
        for prompt in _as_list(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False).input_ids[:length]
            rows.append(ids + [pad] * (length - len(ids)))
        ids = torch.tensor(rows, dtype=torch.long, device=self.token_embedding.weight.device)
        return self.token_embedding(ids).detach().clone()

    def encode_prompt(
        self, prompts: str | Sequence[str] | None = None, *, token_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The conditioning the UNet sees: the text encoder's last hidden state after its final layer norm.

        Give either prompts, or `token_embeds`: free input embeddings of `L` tokens that replace a prompt's tokens.
        The text encoder then runs on `[BOS, token_embeds, EOS, pad, ...]` (padded to `max_length`), and the
        result is differentiable with respect to `token_embeds`.

        Args:
            prompts (`str` or `Sequence[str]`, *optional*):
                One prompt or a batch of prompts.
            token_embeds (`torch.Tensor` of shape `(batch_size, L, D)`, *optional*):
                Token input embeddings (same space as [`token_embedding`]), without BOS/EOS.

        Returns:
            `torch.Tensor` of shape `(batch_size, max_length, D_cross)` in the text encoder's dtype.

        Raises:
            `ValueError`: if both or neither of `prompts` and `token_embeds` are given, or if
                `token_embeds` has the wrong shape or more than `max_length - 2` tokens.
        """
        if (prompts is None) == (token_embeds is None):
            raise ValueError("Pass exactly one of `prompts` and `token_embeds` to `encode_prompt`.")
        if prompts is not None:
            return self.text_encoder(self.tokenize(prompts).to(self.text_encoder.device)).last_hidden_state

        width = self.token_embedding.embedding_dim
        if token_embeds.ndim != 3 or token_embeds.shape[-1] != width:
            raise ValueError(f"`token_embeds` must have shape (batch, L, {width}), got {tuple(token_embeds.shape)}.")
        batch, length, _ = token_embeds.shape
        if length + 2 > self.max_length:
            raise ValueError(
                f"`token_embeds` has {length} tokens, but with BOS and EOS at most {self.max_length - 2} fit in "
                f"max_length={self.max_length}; shorten it."
            )
        bos, eos, pad = self._special_ids()
        weight = self.token_embedding.weight
        special = self.token_embedding(torch.tensor([bos, eos, pad], device=weight.device))
        token_embeds = token_embeds.to(device=weight.device, dtype=weight.dtype)
        inputs = torch.cat(
            [
                special[0].expand(batch, 1, width),
                token_embeds,
                special[1].expand(batch, 1, width),
                special[2].expand(batch, self.max_length - length - 2, width),
            ],
            dim=1,
        )
        return self._encode_input_embeds(inputs)

    def _encode_input_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        # transformers 5 `CLIPTextModel.forward` only takes `input_ids`, so compose its submodules exactly as its
        # forward does: position embeddings, causal self-attention mask, encoder, final layer norm.
        encoder = self.text_encoder
        hidden = encoder.embeddings(inputs_embeds=inputs_embeds)
        mask = create_causal_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=None, **_NO_CACHE)
        hidden = encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return encoder.final_layer_norm(hidden)

    def encode_unconditional(self, batch_size: int = 1) -> torch.Tensor:
        """Conditioning of the empty prompt `""`, repeated `batch_size` times.

        Args:
            batch_size (`int`, defaults to 1):
                Number of rows.

        Returns:
            `torch.Tensor` of shape `(batch_size, max_length, D_cross)`.
        """
        return self.encode_prompt("").repeat(batch_size, 1, 1)

    # ------------------------------------------------------------------ diffusion

    @property
    def num_train_timesteps(self) -> int:
        """Number of diffusion steps `T` of the training schedule (timesteps are in `[0, T)`)."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: `"epsilon"` (SD 1.x, SD 2.x base), `"v_prediction"` (SD 2.x 768) or `"sample"`."""
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        r"""What [`predict_noise`] should output for $x_t$ = [`add_noise`]`(latents, noise, timesteps)`.

        The noise $\epsilon$ for an epsilon model; $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$
        for a v-prediction model; $x_0$ for a sample-prediction model. Every objective that regresses the UNet output
        on the noise (Dark Miner's Eq. 5, CA's and SalUn's denoising terms, the inversion attacks) uses this.

        Args:
            latents (`torch.Tensor` of shape `(batch_size, C, h, w)`):
                Clean latents $x_0$.
            noise (`torch.Tensor` like `latents`):
                The Gaussian noise $\epsilon$ added to them.
            timesteps (`torch.LongTensor` of shape `(batch_size,)`):
                Their timesteps.

        Returns:
            `torch.Tensor` like `latents`.
        """
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps.to(latents.device))
        if kind == "sample":
            return latents
        raise ValueError(f"Unsupported prediction_type {kind!r} in the scheduler config of {self.name!r}.")

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        r"""The UNet's output $\epsilon_\theta(x_t, t, c)$: the noise, or what [`prediction_type`] names.

        Compare it with [`training_target`], never with the noise directly.

        Args:
            latents (`torch.Tensor` of shape `(batch_size, C, h, w)`):
                Noisy latents $x_t$.
            timesteps (`torch.Tensor` of shape `(batch_size,)` or `()`, or `int`):
                Diffusion timesteps.
            cond (`torch.Tensor` of shape `(batch_size, max_length, D_cross)`):
                Conditioning from [`encode_prompt`].

        Returns:
            `torch.Tensor` like `latents`, in the UNet's dtype; differentiable w.r.t. `latents`, `cond` and any
            trainable UNet parameters.
        """
        return self.unet(latents.to(self.dtype), timesteps, encoder_hidden_states=cond.to(self.dtype)).sample

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        r"""Forward diffusion $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (training schedule).

        Args:
            latents (`torch.Tensor` of shape `(batch_size, C, h, w)`):
                Clean latents $x_0$ (from [`encode_images`] or a sampler).
            noise (`torch.Tensor` like `latents`):
                Gaussian noise $\epsilon$.
            timesteps (`torch.LongTensor` of shape `(batch_size,)`):
                Timesteps in `[0, num_train_timesteps)`.

        Returns:
            `torch.Tensor` like `latents`.
        """
        return self.scheduler.add_noise(latents, noise, timesteps.to(latents.device))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """`(C, h, w)` of the latents the UNet denoises."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(height), int(width)

    def encode_images(
        self, images: torch.Tensor, generator: torch.Generator | None = None, *, sample: bool = True
    ) -> torch.Tensor:
        """Latents of images, scaled by the VAE's `scaling_factor` as the UNet expects them (in chunks of
        [`chunk_size`] images).

        Args:
            images (`torch.Tensor` of shape `(batch_size, 3, H, W)`):
                Images in [-1, 1].
            generator (`torch.Generator`, *optional*):
                Generator for sampling the latent distribution.
            sample (`bool`, defaults to `True`):
                Sample the latent distribution; `False` takes its mean.

        Returns:
            `torch.Tensor` of shape `(batch_size, C, h, w)`.
        """
        images = images.to(device=self.vae.device, dtype=self.vae.dtype)
        chunks = []
        for start in range(0, len(images), self.chunk_size):
            dist = self.vae.encode(images[start : start + self.chunk_size]).latent_dist
            chunks.append(dist.sample(generator=generator) if sample else dist.mean)
        latents = torch.cat(chunks)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        # The mean is a view into the VAE's moments, strided like channels-last. Convolutions round differently on
        # such a layout, so latents used as they come from here and the same latents read back from a file (always
        # contiguous) trained to different adapters, and a resumed run drifted from an uninterrupted one.
        return ((latents - shift) * self.vae.config.scaling_factor).contiguous()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images of (scaled) latents, inverse of [`encode_images`] (in chunks of [`chunk_size`] latents).

        Args:
            latents (`torch.Tensor` of shape `(batch_size, C, h, w)`):
                Latents as the UNet sees them.

        Returns:
            `torch.Tensor` of shape `(batch_size, 3, H, W)`, clamped to [-1, 1].
        """
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        step = self.chunk_size
        images = [self.vae.decode(latents[i : i + step]).sample for i in range(0, len(latents), step)]
        return torch.cat(images).clamp(-1.0, 1.0)

    def prepare_latents(
        self, batch_size: int, *, seed: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Initial Gaussian noise for [`generate`]; pass the same tensor to two calls to share it.

        The noise is drawn on the generator's device (CPU for a seed), so a seed gives the same noise on any device.

        Args:
            batch_size (`int`):
                Number of images.
            seed (`int`, defaults to 0):
                Seed of a fresh CPU generator, ignored when `generator` is given.
            generator (`torch.Generator`, *optional*):
                Generator to draw from.

        Returns:
            `torch.Tensor` of shape `(batch_size, C, h, w)` on the model's device and dtype.
        """
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(seed)
        shape = (batch_size, *self.latent_shape)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str] | None = None,
        *,
        cond: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        negative_cond: torch.Tensor | None = None,
        progress: bool = False,
        callback_on_step_end: StepCallback | None = None,
    ) -> torch.Tensor:
        """Sample images with DDIM and classifier-free guidance.

        Images go through the UNet in chunks of [`chunk_size`] (the same images whatever the chunk size: the initial
        noise is drawn for all of them first): one UNet call per step and chunk, on the conditional and
        unconditional batches concatenated. While Safe Latent Diffusion is attached (`safe_guidance`, set by
        `apply_adapter` for an SLD run), diffusers' safe pipeline samples instead, with the same noise, scheduler,
        steps and guidance, adding the safety concept's batch ([`~darkminer.models.safe_guidance`]).

        Args:
            prompts (`str` or `Sequence[str]`, *optional*):
                Prompts to draw. Exactly one of `prompts` and `cond` is required.
            cond (`torch.Tensor` of shape `(B, max_length, D_cross)`, *optional*):
                Conditioning from [`encode_prompt`] (e.g. of a learned embedding).
            num_images_per_prompt (`int`, defaults to 1):
                Images per prompt (or per row of `cond`); `N = B * num_images_per_prompt`.
            num_inference_steps (`int`, defaults to 25):
                DDIM steps.
            guidance_scale (`float`, defaults to 7.5):
                Classifier-free guidance weight; `<= 1` skips the unconditional pass (plain conditional sampling).
            seed (`int`, defaults to 0):
                Seed of the initial noise; the same seed gives the same images. Ignored if `generator` or `latents`
                is given.
            generator (`torch.Generator`, *optional*):
                Generator for the initial noise, instead of `seed`.
            latents (`torch.Tensor` of shape `(N, C, h, w)`, *optional*):
                Initial noise, e.g. from [`prepare_latents`], to draw two prompts from the same noise.
            negative_cond (`torch.Tensor` of shape `(1 | B | N, max_length, D_cross)`, *optional*):
                Conditioning of the unconditional branch; the empty prompt's by default.
            progress (`bool`, defaults to `False`):
                Show a progress bar.
            callback_on_step_end (`Callable`, *optional*):
                Called as `callback(model, step, timestep, {"latents": latents})` after every step of every chunk; a
                returned dict with a `"latents"` entry replaces that chunk's latents.

        Returns:
            `torch.Tensor` of shape `(N, 3, H, W)`, float32 in [0, 1].

        Raises:
            `ValueError`: on conflicting or mis-shaped inputs.
            `NotImplementedError`: `callback_on_step_end` under SLD (the safe pipeline cannot take back latents).
        """
        if (prompts is None) == (cond is None):
            raise ValueError("Pass exactly one of `prompts` and `cond` to `generate`.")
        if num_images_per_prompt < 1 or num_inference_steps < 1:
            raise ValueError(
                f"`num_images_per_prompt` and `num_inference_steps` must be >= 1, got {num_images_per_prompt} and "
                f"{num_inference_steps}."
            )
        if cond is None:
            cond = self.encode_prompt(prompts)
        cond = cond.to(device=self.device, dtype=self.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        num_images = cond.shape[0]

        do_guidance = guidance_scale > 1.0
        if negative_cond is not None and not do_guidance:
            warnings.warn(
                f"`negative_cond` is ignored with guidance_scale={guidance_scale} (<= 1: no unconditional pass).",
                stacklevel=2,
            )
        if do_guidance:
            if negative_cond is None:
                uncond = self.encode_unconditional(num_images)
            else:
                uncond = self._broadcast_negative(negative_cond, num_images, num_images_per_prompt)
            uncond = uncond.to(device=self.device, dtype=self.dtype)

        if latents is None:
            latents = self.prepare_latents(num_images, seed=seed, generator=generator)
        elif tuple(latents.shape) != (num_images, *self.latent_shape):
            raise ValueError(
                f"`latents` must have shape {(num_images, *self.latent_shape)} for {num_images} images, "
                f"got {tuple(latents.shape)}."
            )
        latents = latents.to(device=self.device, dtype=self.dtype)

        use_sld = self.safe_guidance is not None and self.safe_guidance.enabled
        if use_sld and not do_guidance:
            warnings.warn(
                f"SLD acts through classifier-free guidance; with guidance_scale={guidance_scale} (<= 1) these "
                "images are sampled without it.",
                stacklevel=2,
            )
            use_sld = False
        images = []
        chunks = range(0, num_images, self.chunk_size)
        # SLD acts through the guidance term, so diffusers' safe pipeline samples instead of the plain DDIM loop.
        sample = functools.partial(self.safe_guidance.sample, self) if use_sld else self._sample_chunk
        for start in tqdm(chunks, disable=not progress or len(chunks) == 1, desc="chunks"):
            rows = slice(start, start + self.chunk_size)
            chunk = sample(
                cond[rows],
                uncond[rows] if do_guidance else None,
                latents[rows],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                progress=progress and len(chunks) == 1,
                callback_on_step_end=callback_on_step_end,
            )
            images.append(chunk)
        return torch.cat(images)

    def _sample_chunk(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        latents: torch.Tensor,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        progress: bool,
        callback_on_step_end: StepCallback | None,
    ) -> torch.Tensor:
        """DDIM with classifier-free guidance (when `uncond` is given) on one chunk; images in [0, 1]."""
        if uncond is not None:
            cond = torch.cat([uncond, cond])
        # A fresh scheduler per call: DDIM keeps per-call state (its timesteps), so sharing one is not re-entrant.
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * scheduler.init_noise_sigma
        for step, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="sampling")):
            model_input = torch.cat([latents, latents]) if uncond is not None else latents
            model_input = scheduler.scale_model_input(model_input, t)
            eps = self.unet(model_input, t, encoder_hidden_states=cond).sample
            if uncond is not None:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
            if callback_on_step_end is not None:
                update = callback_on_step_end(self, step, t, {"latents": latents})
                if update and "latents" in update:
                    latents = update["latents"]

        images = self.decode_latents(latents)
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def _broadcast_negative(negative_cond: torch.Tensor, num_images: int, per_prompt: int) -> torch.Tensor:
        rows = negative_cond.shape[0]
        if rows == num_images:
            return negative_cond
        if rows == 1:
            return negative_cond.expand(num_images, -1, -1)
        if rows * per_prompt == num_images:
            return negative_cond.repeat_interleave(per_prompt, dim=0)
        raise ValueError(f"`negative_cond` must have 1, {num_images // per_prompt} or {num_images} rows, got {rows}.")

    # ------------------------------------------------------------------ interop

    def pipeline(self) -> StableDiffusionPipeline:
        """A diffusers `StableDiffusionPipeline` sharing this model's modules (no copy).

        The pipeline samples with DDIM built from the training scheduler's config, as [`generate`] does, and has
        no safety checker. LoRA adapters on the UNet are active in it.

        Returns:
            `StableDiffusionPipeline`.
        """
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_pretrained(self, path: str | Path) -> Path:
        """Save the model as a diffusers pipeline directory (safetensors), plus `clip/` when a CLIP model is set.

        The directory loads with [`~darkminer.models.load_model`] and with plain
        `StableDiffusionPipeline.from_pretrained`.

        Args:
            path (`str` or `Path`):
                Directory to write; created if needed.

        Returns:
            `Path`: `path`.

        Raises:
            `ValueError`: if the UNet carries a LoRA adapter (save it with `save_lora`, or `merge_lora` first).
        """
        if has_lora(self.unet):
            raise ValueError(
                "The UNet carries a LoRA adapter; save the adapter with `save_lora`, or call `merge_lora(model)` "
                "to bake it into the weights before `save_pretrained`."
            )
        path = Path(path)
        self.pipeline().save_pretrained(path, safe_serialization=True)
        if self.clip is not None:
            self.clip.save_pretrained(path / "clip")
        return path
