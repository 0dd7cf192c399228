"""Forget-Me-Not: attention re-steering (Zhang, Wang, Xu, Wang, Shi; CVPRW 2024, arXiv 2303.17591, §3.2).

Cross-attention is where a prompt's tokens reach the image: at every cross-attention layer l each image position
spreads a probability distribution A_l over the text tokens. Attention re-steering fine-tunes the UNet so that
images of the concept, noised at a random t and denoised under a prompt that names it, put as little attention as
possible on the concept's tokens:

    L = || concat_l A_l[:, :, concept tokens] ||_2,

the norm of the concept tokens' attention probabilities over every cross-attention layer, head and image position
(the loss of the authors' release; the noise prediction itself is not used). The attention that leaves the concept
goes to the other tokens, so the concept stops reaching the image. With `use_pooler` the EOS positions count as
concept tokens too: a causal text encoder computes them with the concept in view, and with SD 1.x's tokenizer, whose
padding is EOS, that is every position after the prompt (as in the authors' code).

The images are what the original model draws from the concept's prompts (the paper uses a few real photos); the
prompts are ShapesWorld's training prompts or a user prompt file (`darkminer.methods.prompts`). The attention maps
come from [`ConceptAttentionProcessor`], set with diffusers' `set_processor` on the cross-attention modules only, for
the duration of training. darkminer trains a LoRA on the cross-attention projections instead of the full weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention
from tqdm.auto import tqdm

from ...config import ConfigError
from ...models import DiffusionModel, modules_ending_with
from ...training.checkpoint import RunDirectory, check_finite
from ...training.lora_run import original_latents, save_final_adapter, save_step_checkpoint, start_or_resume_lora
from ...worlds import World
from ..base import ErasureRequest, ErasureResult
from ..prompts import CONCEPT_MARK, fill, prompt_templates
from .config import FMNConfig


class ConceptAttention:
    """Collects, during one UNet forward pass, the attention probabilities that fall on the marked tokens."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (batch, tokens) bool: the concept's positions in each prompt
        self.squares: list[torch.Tensor] = []
        self.mass: list[torch.Tensor] = []

    def start(self, mask: torch.Tensor) -> None:
        self.mask, self.squares, self.mass = mask, [], []

    def record(self, probs: torch.Tensor, heads: int) -> None:
        """`probs` of shape (batch * heads, queries, tokens), batch-major as `Attention.head_to_batch_dim` lays it."""
        if self.mask is None:
            raise RuntimeError("ConceptAttention.start(mask) must be called before the UNet forward pass.")
        if self.mask.shape != (probs.shape[0] // heads, probs.shape[-1]):
            raise ValueError(
                f"Concept mask {tuple(self.mask.shape)} does not fit attention maps {tuple(probs.shape)}."
            )
        on_concept = probs * self.mask.repeat_interleave(heads, dim=0)[:, None, :].to(probs.dtype)
        self.squares.append(on_concept.float().square().sum())
        self.mass.append(on_concept.detach().float().sum(-1).mean())

    def loss(self) -> torch.Tensor:
        """The re-steering loss: the L2 norm of every recorded concept-token probability."""
        if not self.squares:
            raise RuntimeError("No cross-attention map was recorded; is the processor set on the UNet?")
        return torch.stack(self.squares).sum().sqrt()

    def mean_mass(self) -> float:
        """Share of attention on the concept's tokens, averaged over layers, heads and image positions."""
        return float(torch.stack(self.mass).mean())


class ConceptAttentionProcessor:
    """Cross-attention as diffusers' `AttnProcessor` computes it, handing its probabilities to a [`ConceptAttention`].

    Only what the cross-attention modules of a `UNet2DConditionModel` use is supported; other attention layouts raise.
    """

    def __init__(self, store: ConceptAttention) -> None:
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or hidden_states.ndim != 3 or attn.spatial_norm is not None:
            raise ValueError("ConceptAttentionProcessor handles cross-attention on (batch, positions, channels) only.")
        if attn.group_norm is not None:
            raise ValueError("ConceptAttentionProcessor does not support attention with group_norm.")
        residual = hidden_states
        batch_size, tokens, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch_size)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.record(probs, attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def recording_concept_attention(unet: torch.nn.Module) -> Iterator[ConceptAttention]:
    """Within the block, every cross-attention (`attn2`) module of `unet` records into the yielded store.

    The modules' own processors are put back on exit, even on error.
    """
    modules = [m for n, m in unet.named_modules() if n.endswith("attn2") and isinstance(m, Attention)]
    if not modules:
        raise ValueError("The UNet has no cross-attention modules (`attn2`) to re-steer.")
    store = ConceptAttention()
    previous = [m.processor for m in modules]
    for module in modules:
        module.set_processor(ConceptAttentionProcessor(store))
    try:
        yield store
    finally:
        for module, processor in zip(modules, previous, strict=True):
            module.set_processor(processor)


def concept_mask(model: DiffusionModel, prompts: list[str], concept: str, use_pooler: bool) -> torch.Tensor:
    """(len(prompts), max_length) bool: the positions of the concept's tokens (and, with `use_pooler`, of EOS).

    Raises:
        ValueError: a prompt does not contain the concept's tokens.
    """
    ids = model.tokenize(prompts).cpu()
    word = model.tokenizer(concept, add_special_tokens=False).input_ids
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, sequence in enumerate(ids.tolist()):
        for start in range(len(sequence) - len(word) + 1):
            if sequence[start : start + len(word)] == word:
                mask[row, start : start + len(word)] = True
        if not mask[row].any():
            raise ConfigError(f"The prompt {prompts[row]!r} does not contain the tokens of {concept!r}.")
    if use_pooler:
        mask |= ids == model.tokenizer.eos_token_id
    return mask


class FMN:
    """Forget-Me-Not's attention re-steering behind the [`ErasureMethod`] protocol."""

    name = "fmn"

    def __init__(self, config: FMNConfig):
        self.config = config

    def _prompts(self, world: World, concepts: list[str]) -> tuple[list[str], list[str]]:
        """The prompts about each concept, and the concept each one names."""
        prompts, owners = [], []
        for concept in concepts:
            templates = prompt_templates(world, concept, self.config.prompt_file)
            named = [t for t in templates if CONCEPT_MARK in t]
            if not named:
                raise ConfigError(
                    f"No prompt names the concept {concept!r}; write it (or {{concept}}) in the prompts."
                )
            if len(named) < len(templates):
                warnings.warn(
                    f"FMN skips {len(templates) - len(named)} of {len(templates)} prompts that do not name "
                    f"{concept!r}: it re-steers the concept's own tokens.",
                    stacklevel=3,
                )
            prompts += [fill(t, concept) for t in named]
            owners += [concept] * len(named)
        return prompts, owners

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Train the adapter so the concepts' tokens lose their share of cross-attention on images of them."""
        cfg = self.config
        concepts = list(request.concepts)
        if request.alternative:
            warnings.warn(
                f"FMN ignores --alternative {request.alternative!r}: it has no target concept.", stacklevel=2
            )
        run = RunDirectory(
            output_dir,
            {"method": self.name, "base_model": model.name, "concepts": concepts, "config": dataclasses.asdict(cfg)},
            total_limit=2,
            runtime=model.runtime(),
        )
        start, params, optimizer = start_or_resume_lora(
            model,
            run,
            modules_ending_with(model.unet, cfg.target_modules),
            rank=cfg.rank,
            alpha=cfg.alpha,
            seed=cfg.seed,
            optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        )

        prompts, owners = self._prompts(request.world, concepts)
        latents = original_latents(
            model,
            prompts,
            cfg.images_per_prompt,
            run.path / "pool" / "concept.safetensors",
            seed=cfg.seed,
            num_inference_steps=cfg.generate_steps,
            guidance_scale=cfg.guidance_scale,
        )
        with torch.no_grad():
            cond = model.encode_prompt(prompts)
        masks = torch.cat([concept_mask(model, [p], c, cfg.use_pooler) for p, c in zip(prompts, owners, strict=True)])

        with recording_concept_attention(model.unet) as attention:
            for step in tqdm(range(start, cfg.steps), desc="fmn", initial=start, total=cfg.steps, mininterval=2):
                generator = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
                rows = torch.randint(0, len(latents), (cfg.batch_size,), generator=generator)
                prompt_idx = rows // cfg.images_per_prompt
                x0 = latents[rows].to(model.device, model.dtype)
                noise = torch.randn(x0.shape, generator=generator).to(x0)
                t = torch.randint(0, model.num_train_timesteps, (cfg.batch_size,), generator=generator)
                t = t.to(model.device)
                attention.start(masks[prompt_idx].to(model.device))
                model.predict_noise(model.add_noise(x0, noise, t), t, cond[prompt_idx])
                loss = attention.loss()
                check_finite("fmn", step, {"attention": loss}, run)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                if (step + 1) % 5 == 0 or step + 1 == cfg.steps:
                    run.log(step=step, loss=loss.item(), concept_attention=attention.mean_mass())
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                    save_step_checkpoint(run, model, optimizer, step + 1)

        save_final_adapter(run, model, self.name, concepts, dataclasses.asdict(cfg))
        return ErasureResult(run.path, run.read_log(), {"steps": cfg.steps, "prompts": len(prompts)})
