"""Dark Miner (DM2): Meng et al., "Dark Miner: Defend against unsafe generation for text-to-image diffusion models".

The method (§3.2) repeats three stages until the concept can no longer be mined:

1. **Mining** (Eq. 5): with the model *and its adapters* frozen, optimise a free embedding c so that the current
   model best denoises k images of the concept, L_M = E ||eps - eps_theta(x_t | c, t)||^2. This finds the
   embedding that still draws the concept best, whatever words (or non-words) it corresponds to.
2. **Verifying** (Eq. 6): generate x_c from c and a reference x_r from "a photo", and score
   s(c) = mean_{x_e} cos(Enc(x_c) - Enc(x_r), Enc(x_e) - Enc(x_r)) with CLIP image features over the k pool
   images x_e (or, with `verify.score='projection'`, how far x_c moves from x_r along the pool's mean delta; A15).
   If s(c) < tau the concept is no longer reachable (we require it `patience` loops in a row).
3. **Circumventing** (Eq. 7-8): train LoRA adapters on attention value projections (or other layers, A19) so that
   the mined c predicts what the frozen original predicts for the anchor c0,
   l_c = ||eps_theta(x_t|c) - eps_theta'(x_t|c0)||^2, while keeping c0, 0*c and -c as they were,
   l_p = sum_u ||eps_theta(x_t|u) - eps_theta'(x_t|u)||^2; the loss is alpha_c l_c + alpha_p l_p (+ alpha_u l_u,
   A20: l_c with the empty prompt in place of c; with A21 each term of l_p compares eps(x_t|u) - eps(x_t|empty)
   instead of eps(x_t|u)). x is drawn from c by the original. Each step replays an earlier mined embedding with
   probability 1 - r. With A22, c is verified again after each round of steps and circumvented again while
   s(c) >= tau. With A23, each c's c0 is the prompt c was initialised from, another concept in the concept's place.
   With A24, the concept's own texts enter the pool, and are circumvented, before the first loop; with A25, so do
   the words the text encoder puts nearest the concept whose images the detector flags. With A26, l_p holds its
   conditions on images the original draws from the anchor prompts instead of on x_t; with A27, each c of the pool is
   pulled to one of its c0s instead of each image drawing one.

theta' (the frozen original) is the same UNet with its adapters disabled, not a second copy. Where the paper is
silent the choices are SPEC §3's (A1-A10) and docs/design.md's (A11-A27: several anchors, tau for another CLIP,
which model draws x, which conditions l_p holds, the verification score, a detector as judge, mining restarts, c
refined while circumventing, adapters on the cross-attention keys and values or every Linear layer, the empty prompt
moved, l_p relative to it, rounds of circumventing until c fails verification, anchors paired with c's initial prompt,
the concept's texts in the pool from the start and its neighbour words with them, l_p on the anchor prompts' images,
one c0 per c), all fields of [`DarkMinerConfig`].
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...config import ConfigError, write_json
from ...metrics.clip import image_features
from ...models import (
    DiffusionModel,
    add_lora,
    attention_value_modules,
    disable_lora,
    linear_modules,
    load_lora,
    lora_row_mask,
    modules_ending_with,
    save_lora,
)
from ...models.adapters import write_erasure_config
from ...models.runtime import peak_memory_mb
from ...training.checkpoint import LossRecorder, RunDirectory, load_tensors, save_tensors
from ...utils.images import load_image_folder
from ...worlds import World
from ..base import ErasureRequest, ErasureResult
from ..prompts import CONCEPT_MARK, fill, prompt_templates
from .config import DarkMinerConfig


@dataclass
class MinedEmbedding:
    """One entry of the embedding pool P_E: a mined c with the latents of the images drawn from it (x of Eq. 7-8)."""

    concept: str
    loop: int
    embedding: torch.Tensor  # (1, L, D) token space, or (1, max_length, D_cross) conditioning space
    latents: torch.Tensor  # (images_per_embedding, C, h, w)
    template: str | None = None  # the prompt template c was initialised from, `{concept}` marking the concept (A23)
    # loop -1: one of the concept's texts, entered before the first loop (A24)


def delta_cosine(f_c: torch.Tensor, f_r: torch.Tensor, f_e: torch.Tensor) -> float:
    """Eq. 6: mean cosine between each target's delta feature f_c - f_r and each pool image's f_e - f_r.

    Args:
        f_c, f_r (`torch.Tensor` of shape `(pairs, d)`): features of the targets and of their references (pair i
            shares its initial noise).
        f_e (`torch.Tensor` of shape `(k, d)`): features of the pool images.
    """
    delta_c = F.normalize(f_c - f_r, dim=-1)
    delta_e = F.normalize(f_e[None] - f_r[:, None], dim=-1)  # (pairs, k, d)
    return float((delta_e * delta_c[:, None]).sum(-1).mean())


def delta_projection(f_c: torch.Tensor, f_r: torch.Tensor, f_e: torch.Tensor) -> float:
    """A15: the targets' mean delta feature projected on the pool's, in units of the pool's.

    With u = mean(f_e) - mean(f_r), s = mean_i <f_c[i] - f_r[i], u> / <u, u>: 1 when the targets differ from their
    references as much as the pool does along u, 0 when they do not differ along it. Whatever else the images differ
    in (colour, layout) varies from image to image and averages out of u; in Eq. 6 it lowers every cosine instead.
    """
    direction = f_e.mean(0) - f_r.mean(0)
    return float(((f_c - f_r) @ direction).mean() / direction.square().sum())


def _stage_memory(stage: str, model: DiffusionModel) -> dict[str, float]:
    """`<stage>_peak_rss_mb` (the process's peak resident set so far) and, on a GPU, `<stage>_gpu_peak_mb`."""
    figures = peak_memory_mb(model.device)
    return {f"{stage}_peak_rss_mb": figures["cpu_rss_mb"]} | (
        {f"{stage}_gpu_peak_mb": figures["gpu_peak_mb"]} if "gpu_peak_mb" in figures else {}
    )


def _clip_norm(grad: torch.Tensor, max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_([p], max_norm)` for each row of `grad` (one per mined embedding), the same
    arithmetic without its per-call overhead (a tenth of a tiny model's mining step): scale by
    min(1, max_norm / (|g| + 1e-6))."""
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1).view(-1, *[1] * (grad.dim() - 1))
    grad.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0))


def _lora_targets(unet: torch.nn.Module, targets: str) -> list[str]:
    """The modules `lora.targets` names: attention value projections (A7), or the cross-attention keys and values
    or whole sets of Linear layers (A19)."""
    if targets == "cross_kv":
        return modules_ending_with(unet, (".attn2.to_k", ".attn2.to_v"))
    if targets == "noxattn":
        return linear_modules(unet, cross_attention=False)
    if targets == "linear":
        return linear_modules(unet)
    return attention_value_modules(unet, targets)


def _lora_parameters(model: DiffusionModel) -> list[torch.nn.Parameter]:
    return [p for n, p in model.unet.named_parameters() if "lora_" in n]


def _predict_rows(model: DiffusionModel, groups: list[tuple[torch.Tensor, torch.Tensor]], cond: torch.Tensor):
    """The UNet's prediction for `cond`, its rows in groups of `len(x_t)`, each group at its own (x_t, t)."""
    x_t, t = (torch.cat(parts) for parts in zip(*groups, strict=True))
    return model.predict_noise(x_t, t, cond)


def _latents(model: DiffusionModel, images: torch.Tensor) -> torch.Tensor:
    """The VAE latents (means) of images in [0, 1], in float32, encoded 64 images at a time."""
    return torch.cat(
        [model.encode_images(images[i : i + 64] * 2 - 1, sample=False).float() for i in range(0, len(images), 64)]
    )


def _entries_json(pool: list[MinedEmbedding]) -> str:
    """What a checkpoint records of each pool entry besides its tensors."""
    return json.dumps([{"concept": e.concept, "loop": e.loop, "template": e.template} for e in pool])


def _step_lr(base: float, step: int, decay_step: int, decay: float) -> float:
    return base * decay if step >= decay_step else base


class DarkMiner:
    """Dark Miner behind the [`ErasureMethod`] protocol. Construct with a [`DarkMinerConfig`]."""

    name = "dark_miner"
    needs_clip = True  # verifying (Eq. 6) scores images with CLIP; `darkminer erase` checks for one before starting

    def __init__(self, config: DarkMinerConfig):
        self.config = config
        self._world = World()  # the running request's world, and its detectors for verify.score='detector'
        self._detectors: dict = {}
        self._kept: torch.Tensor | None = None  # A26's images, for preserve_on='anchor'

    # ---- helpers on the embedding space (A1) -----------------------------------------------------------------
    def _condition(self, model: DiffusionModel, embedding: torch.Tensor) -> torch.Tensor:
        """The UNet conditioning of a mined embedding (through the frozen text encoder in token space)."""
        if self.config.mining.embedding_space == "token":
            return model.encode_prompt(token_embeds=embedding)
        return embedding

    def _concept_texts(self, concept: str) -> list[str]:
        """The concept's texts (`mining.prompt_file`, or the world's training prompts) with the concept filled in."""
        return [fill(t, concept) for t in prompt_templates(self._world, concept, self.config.mining.prompt_file)]

    def _warn_cut_texts(self, model: DiffusionModel, concepts: list[str]) -> None:
        """Warn when concept texts that c starts from (A2) are longer than the `mining.length` tokens a token-space
        c holds, and so are cut. The texts that enter the pool (A24) are never cut (`_text_embedding`)."""
        cfg = self.config
        if cfg.mining.embedding_space != "token" or cfg.mining.init != "concept_prompts":
            return
        texts = [text for concept in concepts for text in self._concept_texts(concept)]
        counts = [model.token_count(text) for text in texts]
        cut = [count for count in counts if count > cfg.mining.length]
        if cut:
            longest = max(range(len(texts)), key=counts.__getitem__)
            warnings.warn(
                f"{len(cut)} of {len(texts)} concept texts that mining starts from (mining.init=concept_prompts) are "
                f"longer than mining.length={cfg.mining.length} tokens and are cut to it (the longest, "
                f"{counts[longest]} tokens: {texts[longest]!r}); set mining.length="
                f"{min(max(cut), model.max_length - 2)} to keep them whole, or mining.init=prompt.",
                stacklevel=3,
            )

    def _initial_template(self, concept: str, generator: torch.Generator) -> str:
        """The template c starts from (A2): the pool prompt's, or one drawn from the concept's texts."""
        if self.config.mining.init != "concept_prompts":
            return self.config.pool.prompt
        templates = prompt_templates(self._world, concept, self.config.mining.prompt_file)
        return templates[int(torch.randint(0, len(templates), (), generator=generator))]

    def _prompt_embedding(self, model: DiffusionModel, prompt: str, length: int | None = None) -> torch.Tensor:
        """A prompt as a point of the embedding space c lives in (A1): its token embeddings cut or padded to
        `length` (default `mining.length`), or its conditioning, in the model's dtype."""
        with torch.no_grad():
            if self.config.mining.embedding_space == "token":
                return model.prompt_token_embeddings(prompt, length or self.config.mining.length)
            return model.encode_prompt(prompt)

    def _text_embedding(self, model: DiffusionModel, text: str) -> torch.Tensor:
        """A text that enters the pool whole (A24, A25): in token space at least `mining.length` tokens long, and
        longer where the text needs it, so that a short c (CCE's length, 4) never cuts the concept's word off its
        texts."""
        length = min(max(self.config.mining.length, model.token_count(text)), model.max_length - 2)
        return self._prompt_embedding(model, text, length).float().clone()

    def _initial_embedding(
        self, model: DiffusionModel, concept: str, generator: torch.Generator, template: str | None = None
    ) -> torch.Tensor:
        start = self._prompt_embedding(model, fill(template or self._initial_template(concept, generator), concept))
        if self.config.mining.init == "random":
            start = torch.randn(start.shape, generator=generator).to(start.device) * start.std()
        return start.float().clone()

    # ---- stage 0: the image pool (A3) ------------------------------------------------------------------------
    def _image_pool(self, model: DiffusionModel, concept: str, index: int, run: RunDirectory) -> torch.Tensor:
        """Latents (N, C, h, w) of the concept's pool images, generated once and cached in the run directory."""
        path = run.path / "pool" / f"concept-{index}.safetensors"
        if path.exists():
            return load_tensors(path)["latents"]
        cfg = self.config
        if cfg.pool.image_dir is not None:
            images = load_image_folder(cfg.pool.image_dir, model.vae.config.sample_size, "pool.image_dir")
        else:
            prompts = self._pool_prompts(model, concept)
            generator = torch.Generator().manual_seed(cfg.seed * 7919 + index)
            with disable_lora(model.unet):
                images = torch.cat(
                    [
                        model.generate(
                            prompts[start : start + 64],
                            generator=generator,
                            num_inference_steps=cfg.generate_steps,
                            guidance_scale=cfg.guidance_scale,
                        )
                        for start in range(0, len(prompts), 64)
                    ]
                )
        with torch.no_grad():
            latents = _latents(model, images)
        path.parent.mkdir(exist_ok=True)
        save_tensors(path, {"latents": latents, "images": (images * 255).round().to(torch.uint8)})
        return latents

    def _pool_prompts(self, model: DiffusionModel, concept: str) -> list[str]:
        """One prompt per pool image: the pool template, or the concept's texts in turn (`pool.source`)."""
        cfg = self.config
        if cfg.pool.source == "prompt":
            return [cfg.pool.prompt.format(concept=concept)] * cfg.pool.size
        texts = self._concept_texts(concept)
        return [texts[i % len(texts)] for i in range(cfg.pool.size)]

    # ---- stage 1: mining (Eq. 5) -----------------------------------------------------------------------------
    def _mine(self, model, concept, pool_latents, generator, run, loop):
        """Eq. 5 for `mining.restarts` embeddings side by side; returns the best (1, L, D), the k picks, l_m, and the
        template the best one started from."""
        cfg = self.config.mining
        picks = torch.randperm(len(pool_latents), generator=generator)[: cfg.images_per_loop]
        x0 = pool_latents[picks].to(model.device, model.dtype)
        templates = [self._initial_template(concept, generator) for _ in range(cfg.restarts)]
        starts = [self._initial_embedding(model, concept, generator, template) for template in templates]
        embedding = torch.cat(starts).to(model.device).requires_grad_(True)  # (R, L, D)
        for p in _lora_parameters(model):  # Eq. 5: the adapters are frozen while mining
            p.requires_grad_(False)
        optimizer = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)([embedding], lr=cfg.lr)
        losses = LossRecorder("mining", run)
        restarts = cfg.restarts
        for step in tqdm(range(cfg.steps), desc=f"loop {loop} mining", leave=False, mininterval=2):
            for group in optimizer.param_groups:
                group["lr"] = _step_lr(cfg.lr, step, cfg.lr_decay_step, cfg.lr_decay)
            if cfg.batch_size is None:  # every one of the k images, for each embedding
                x = x0.repeat(restarts, 1, 1, 1)
            else:
                x = x0[torch.randint(0, len(x0), (restarts * cfg.batch_size,), generator=generator).to(model.device)]
            noise = torch.randn(x.shape, generator=generator).to(x)
            t = torch.randint(0, model.num_train_timesteps, (len(x),), generator=generator).to(model.device)
            row_losses = self._mining_losses(model, embedding, x, noise, t)
            optimizer.zero_grad(set_to_none=True)
            row_losses.sum().backward()  # the embeddings' gradients stay independent
            _clip_norm(embedding.grad, cfg.grad_clip)
            optimizer.step()
            losses.add(step, l_m=row_losses.mean())
        best = 0
        if restarts > 1:  # keep the embedding that reproduces the k images best on one fixed draw of noise and t
            with torch.no_grad():
                x = x0.repeat(restarts, 1, 1, 1)
                noise = torch.randn(x.shape, generator=generator).to(x)
                t = ((torch.arange(len(x0)) + 0.5) * model.num_train_timesteps / len(x0)).long().repeat(restarts)
                best = int(self._mining_losses(model, embedding, x, noise, t.to(model.device)).argmin())
        return embedding[best : best + 1].detach(), picks, losses.flush()["l_m"], templates[best]

    def _mining_losses(self, model, embedding, x0, noise, t) -> torch.Tensor:
        """L_M of Eq. 5 for each of the R embeddings, over its len(x0) / R rows of (x0, noise, t)."""
        restarts = len(embedding)
        cond = self._condition(model, embedding).repeat_interleave(len(x0) // restarts, dim=0)
        target = model.training_target(x0, noise, t)  # the noise of Eq. 5, or v for a v-prediction model
        pred = model.predict_noise(model.add_noise(x0, noise, t), t, cond)
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1).view(restarts, -1).mean(1)

    # ---- stage 2: verifying (Eq. 6) --------------------------------------------------------------------------
    @torch.no_grad()
    def _verify(self, model, embedding, pool_images, picks, generator, concept: str | None = None) -> float:
        """s(c): do images from c differ from the anchor's reference images the way the pool's images do?

        `verify.score='cosine'` is Eq. 6 on the k pool images `picks` that mining used. 'projection' (A15) projects
        each target's delta feature on the mean delta of the whole pool, so that what the images differ in besides
        the concept (which varies from image to image) averages out instead of lowering every cosine. 'detector'
        (A16) is the share of the `pairs` images x_c that the world's detector of `concept` flags: the run cannot
        stop while the mined c still draws the concept that often.
        """
        cfg = self.config.verify
        latents = model.prepare_latents(cfg.pairs, generator=generator)
        kwargs = dict(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale)
        c = self._condition(model, embedding)
        if cfg.score == "detector":
            x_c = model.generate(cond=c, num_images_per_prompt=cfg.pairs, latents=latents, **kwargs)
            return float(self._detectors[concept](x_c).decisions.float().mean())
        if cfg.one_batch:  # x_c and x_r from the same noise, side by side in one sampler call
            cond = torch.cat([c.expand(cfg.pairs, -1, -1), model.encode_prompt(cfg.anchor).expand(cfg.pairs, -1, -1)])
            x_c, x_r = model.generate(cond=cond, latents=latents.repeat(2, 1, 1, 1), **kwargs).split(cfg.pairs)
        else:
            x_c = model.generate(cond=c, num_images_per_prompt=cfg.pairs, latents=latents.clone(), **kwargs)
            x_r = model.generate(cfg.anchor, num_images_per_prompt=cfg.pairs, latents=latents.clone(), **kwargs)
        f_c, f_r = image_features(model, x_c), image_features(model, x_r)
        if cfg.score == "projection":
            return delta_projection(f_c, f_r, image_features(model, pool_images))
        return delta_cosine(f_c, f_r, image_features(model, pool_images[picks]))

    # ---- stage 3: circumventing (Eq. 7-8) --------------------------------------------------------------------
    @torch.no_grad()
    def _circumvent_images(self, model, embedding, generator) -> torch.Tensor:
        """Latents of the x of Eq. 7-8: images the frozen original (or the adapted model, A13) draws from c
        (`images_from='mined'` takes the pool images mining used instead, in the loop)."""
        return _latents(model, self._draw_circumvent_images(model, embedding, generator))

    @torch.no_grad()
    def _entry_latents(self, model, embedding, template: str | None, generator) -> torch.Tensor:
        """Latents of a new pool entry's x of Eq. 7-8: [`_circumvent_images`], or with `images_from='anchor'` (A28)
        `circumvent.images_per_embedding` images the original draws from each of the entry's c0s, c0 by c0 in the
        order of [`_c0_prompts`]; with `images_from='both'` the first followed by the second."""
        images_from = self.config.circumvent.images_from
        if images_from not in ("anchor", "both"):
            return self._circumvent_images(model, embedding, generator)
        of_c0 = self._original_latents(model, self._c0_prompts(template), generator)
        if images_from == "anchor":
            return of_c0
        return torch.cat([self._circumvent_images(model, embedding, generator), of_c0])

    @torch.no_grad()
    def _original_latents(self, model, prompts: list[str], generator) -> torch.Tensor:
        """Latents of `circumvent.images_per_embedding` images the original draws from each of `prompts`, prompt by
        prompt."""
        cfg = self.config
        with disable_lora(model.unet):
            images = model.generate(
                prompts,
                num_images_per_prompt=cfg.circumvent.images_per_embedding,
                generator=generator,
                num_inference_steps=cfg.generate_steps,
                guidance_scale=cfg.guidance_scale,
            )
        return _latents(model, images)

    def _anchor_prompts(self) -> list[str]:
        """The prompts of A26's images: the anchors (`circumvent.anchor`, or `pool.prompt` with each of
        `circumvent.anchor_concepts`) and `circumvent.preserve_prompts`."""
        cfg = self.config
        concepts = cfg.circumvent.anchor_concepts
        anchors = [fill(cfg.pool.prompt, concept) for concept in concepts] if concepts else cfg.circumvent.anchor
        return [*anchors, *cfg.circumvent.preserve_prompts]

    @torch.no_grad()
    def _anchor_latents(self, model: DiffusionModel) -> torch.Tensor:
        """A26: latents of `circumvent.images_per_embedding` images the original draws from each anchor prompt, from
        a stream of their own, so that a resumed run draws the same ones."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 - 2)
        return self._original_latents(model, self._anchor_prompts(), generator).cpu()

    @torch.no_grad()
    def _draw_circumvent_images(self, model, embedding, generator) -> torch.Tensor:
        """The images in [0, 1] behind [`_circumvent_images`]."""
        cfg = self.config
        frozen = cfg.circumvent.images_from in ("original", "both")
        adapters_off = disable_lora(model.unet) if frozen else nullcontext()
        with adapters_off:
            return model.generate(
                cond=self._condition(model, embedding),
                num_images_per_prompt=cfg.circumvent.images_per_embedding,
                generator=generator,
                num_inference_steps=cfg.generate_steps,
                guidance_scale=cfg.guidance_scale,
            )

    def _circumvent(self, model, pool: list[MinedEmbedding], generator, run, loop, steps=None, uniform=False):
        """Eq. 7-8 for `steps` steps (`circumvent.steps`), each on the pool's last c with probability r, else on an
        earlier one (A9); with `uniform`, on any entry with equal chance (A24's texts). The learning rate decays at
        the same share of the steps as in a loop. Returns the loss history."""
        cfg = self.config.circumvent
        steps = steps or cfg.steps
        decay_step = round(cfg.lr_decay_step * steps / cfg.steps)
        # A compiled UNet does not see hooks added after compiling, so the row mask of one_call would be ignored.
        one_call = cfg.one_call and model.compiled == "off"
        params = [p.requires_grad_(True) for p in _lora_parameters(model)]
        optimizer = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(params, lr=cfg.lr)
        with torch.no_grad():
            anchors = model.encode_prompt(cfg.anchor)  # (A, L, D): one row per anchor prompt
            # A23: each entry's own c0s, its initial template with each of anchor_concepts in the concept's place
            paired = [self._paired_anchors(model, entry, anchors) for entry in pool]
            held = model.encode_prompt(cfg.preserve_prompts) if cfg.preserve_prompts else None
            # what classifier-free guidance subtracts, encoded only when l_p holds it or l_u moves it (A20; A21 needs
            # l_u)
            empty = model.encode_unconditional() if "unconditional" in cfg.preserve or cfg.alpha_u else None
            mined = [e.embedding.to(model.device) for e in pool]
            # (c, 0*c, -c) conditionings of each pool entry, computed once (again after each A18 step on that c).
            conds = [self._signed_conditions(model, e) for e in mined]
        if cfg.refine_every:
            mined = [e.clone().requires_grad_(True) for e in mined]
            refiner = torch.optim.Adam(mined, lr=cfg.refine_lr)
        current, history = len(pool) - 1, LossRecorder("circumventing", run)
        b = cfg.batch_size
        on_anchors = cfg.images_from in ("anchor", "both")
        # A28's 'both': the entry's first `own` latents are the original's images of c, and the first half of each
        # batch is drawn from them
        own, half = (cfg.images_per_embedding, b // 2) if cfg.images_from == "both" else (0, 0)
        for step in tqdm(range(steps), desc=f"loop {loop} circumventing", leave=False, mininterval=2):
            for group in optimizer.param_groups:
                group["lr"] = _step_lr(cfg.lr, step, decay_step, cfg.lr_decay)
            pick = current
            if uniform:
                pick = int(torch.randint(0, len(pool), (), generator=generator))
            elif current > 0 and torch.rand((), generator=generator) >= cfg.current_prob:
                pick = int(torch.randint(0, current, (), generator=generator))
            entry = pool[pick]
            choices = paired[pick]
            rows = torch.randint(0, len(entry.latents), (b,), generator=generator)
            if on_anchors:  # A28: after the `own` images of c, the latents are per_anchor images of each c0 in turn
                per_anchor = (len(entry.latents) - own) // len(choices)
                rows = own + (rows - own) % (len(entry.latents) - own)
                if len(choices) == 1 or cfg.anchor_draw == "embedding":  # the one c0's images
                    rows = own + (rows - own) % per_anchor + (pick % len(choices)) * per_anchor
                drawn_by = (rows - own) // per_anchor  # the c0 each image is pulled to
                if half:  # 'both': the first half on c's images, each pulled to its c0 as when not on anchors
                    rows[:half] = rows[:half] % own
                    if len(choices) > 1 and cfg.anchor_draw != "embedding":
                        drawn_by[:half] = torch.randint(0, len(choices), (half,), generator=generator)
            x0 = entry.latents[rows].to(model.device, model.dtype)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            t = torch.randint(0, model.num_train_timesteps, (b,), generator=generator).to(model.device)
            x_t = model.add_noise(x0, noise, t)
            held_at = (x_t, t)  # the images l_p holds its conditions on: the concept's (the paper), or A26's
            if self._kept is not None:
                x0_kept = self._kept[torch.randint(0, len(self._kept), (b,), generator=generator)]
                x0_kept = x0_kept.to(model.device, model.dtype)
                noise_kept = torch.randn(x0_kept.shape, generator=generator).to(x0_kept)
                t_kept = torch.randint(0, model.num_train_timesteps, (b,), generator=generator).to(model.device)
                held_at = (model.add_noise(x0_kept, noise_kept, t_kept), t_kept)
            if cfg.refine_every and step % cfg.refine_every == 0:
                conds[pick] = self._refine(model, mined[pick], refiner, x0, noise, t)
            c, zero_c, neg_c = conds[pick]
            if on_anchors:  # A28: each image is pulled to the c0 that drew it
                anchor = choices[drawn_by]
            elif len(choices) == 1:  # no draw: one-anchor runs keep the random stream they always had
                anchor = choices.expand(b, -1, -1)
            elif cfg.anchor_draw == "embedding":  # A27: the pool's i-th c, the i-th c0
                anchor = choices[pick % len(choices)].expand(b, -1, -1)
            else:  # each image draws its c0
                anchor = choices[torch.randint(0, len(choices), (b,), generator=generator)]
            # Eq. 7 pulls eps_theta(x_t|c) to the frozen eps_theta'(x_t|c0); Eq. 8 holds eps_theta at each preserved
            # condition (A14) to the frozen one. The original runs on c0 and the preserved conditions other than c0.
            terms = {
                "anchor": anchor,
                "zero": zero_c[None].expand(b, -1, -1),
                "negative": neg_c[None].expand(b, -1, -1),
            }
            if empty is not None:
                terms["unconditional"] = terms["empty"] = empty.expand(b, -1, -1)
            names = list(cfg.preserve)
            if held is not None:  # each image draws one of the extra prompts
                terms["prompts"] = held[torch.randint(0, len(held), (b,), generator=generator)]
                names.append("prompts")
            # the original's targets: c0 on the x_t of Eq. 7 (l_c's); on the held images, each preserved condition's,
            # c0's again only where those are other images (A26)
            others = [name for name in names if name != "anchor" or self._kept is not None]
            relative = ["empty"] if cfg.preserve_relative else []  # A21: the original's eps(x_t|empty) is a target
            frozen = torch.cat([anchor, *(terms[name] for name in [*others, *relative])])
            frozen_at = [(x_t, t)] + [held_at] * (len(others) + len(relative))
            moved = [c[None].expand(b, -1, -1)] + ([empty.expand(b, -1, -1)] if cfg.alpha_u else [])
            adapted = torch.cat([*moved, *(terms[name] for name in names)])
            adapted_at = [(x_t, t)] * len(moved) + [held_at] * len(names)
            # one_call: one UNet call, the frozen rows seeing no adapter, so that they are the original's targets; the
            # mask stays on through backward, which recomputes activations under gradient checkpointing.
            rows = torch.arange(len(frozen) + len(adapted), device=frozen.device) >= len(frozen)
            with lora_row_mask(model.unet, rows) if one_call else nullcontext():
                if one_call:
                    both = _predict_rows(model, frozen_at + adapted_at, torch.cat([frozen, adapted]))
                    target, preds = both[: len(frozen)].detach(), both[len(frozen) :]
                else:
                    with torch.no_grad(), disable_lora(model.unet):
                        target = _predict_rows(model, frozen_at, frozen)
                    preds = _predict_rows(model, adapted_at, adapted)
                l_c_target, *held_targets = target.float().split(b)
                targets = dict(zip([*others, *relative], held_targets, strict=True))
                targets.setdefault("anchor", l_c_target)  # the paper: c0 is held on Eq. 7's x_t
                pred_c, *preserved = preds.float().split(b)
                pred_u = preserved.pop(0) if cfg.alpha_u else None
                l_c = F.mse_loss(pred_c, l_c_target)
                # A20: l_u pulls the empty prompt's prediction on the same x_t to the same target
                l_u = F.mse_loss(pred_u, l_c_target) if cfg.alpha_u else pred_c.new_zeros(())
                held_terms = []
                for p, name in zip(preserved, names, strict=True):
                    if relative:  # A21: eps(x_t|u) - eps(x_t|empty) held, whatever the empty prompt's does
                        held_terms.append(F.mse_loss(p - pred_u, targets[name] - targets["empty"]))
                    else:
                        held_terms.append(F.mse_loss(p, targets[name]))
                l_p = sum(held_terms, pred_c.new_zeros(()))
                loss = cfg.alpha_c * l_c + cfg.alpha_p * l_p + cfg.alpha_u * l_u
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            history.add(step, l_c=l_c, l_p=l_p, **({"l_u": l_u} if cfg.alpha_u else {}), loss=loss)
        if cfg.refine_every:  # later loops replay the refined embeddings
            for entry, embedding in zip(pool, mined, strict=True):
                entry.embedding = embedding.detach().cpu()
        return history.flush()

    def _circumvent_prompts(self, model, concepts: list[str], run) -> tuple[list[MinedEmbedding], dict, dict]:
        """A24: each concept's texts as pool entries, with the images the original draws from them, and
        `circumvent.prompt_steps` steps of Eq. 7-8 on them, each step on one drawn uniformly. Its own random stream,
        so that the loops draw what they draw without it. Returns the entries, the loss history and, per concept,
        the neighbour words A25 added with the share of their images the detector flagged."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 - 1)
        entries, added = [], {}
        for concept in concepts:
            templates = prompt_templates(self._world, concept, self.config.mining.prompt_file)
            for template in tqdm(templates, desc=f"{concept}: images of its texts", leave=False):
                embedding = self._text_embedding(model, fill(template, concept))
                with disable_lora(model.unet):  # the original's images, whatever `images_from` says of mined c
                    latents = self._entry_latents(model, embedding.to(model.device), template, generator)
                entries.append(MinedEmbedding(concept, -1, embedding.cpu(), latents.cpu(), template))
            if self.config.circumvent.neighbour_words:
                neighbours, added[concept] = self._neighbour_entries(model, concept, templates, generator)
                entries += neighbours
        steps = self.config.circumvent.prompt_steps
        history = self._circumvent(model, entries, generator, run, "0 texts", steps=steps, uniform=True)
        return entries, history, added

    @torch.no_grad()
    def _neighbour_entries(
        self, model, concept: str, texts: list[str], generator
    ) -> tuple[list[MinedEmbedding], dict[str, float]]:
        """A25: the words of the vocabulary the text encoder puts nearest `concept` (in `pool.prompt`'s concept
        place), each written into one of the concept's `texts` (templates) drawn at random, that the original draws
        the concept from: pool entries with those images, and each word's share."""
        cfg = self.config
        words = [w for w in model.whole_words() if w.lower() not in concept.lower().split()]
        reference = model.encode_prompt(fill(cfg.pool.prompt, concept)).flatten(1).float()
        similarity = torch.cat(
            [
                F.cosine_similarity(
                    model.encode_prompt([fill(cfg.pool.prompt, w) for w in words[i : i + 256]]).flatten(1).float(),
                    reference,
                )
                for i in tqdm(range(0, len(words), 256), desc=f"{concept}: ranking the vocabulary", leave=False)
            ]
        )
        nearest = [words[i] for i in similarity.argsort(descending=True)[: cfg.circumvent.neighbour_words].tolist()]
        templates = [t for t in texts if CONCEPT_MARK in t] or [cfg.pool.prompt]
        entries, shares = [], {}
        for word in tqdm(nearest, desc=f"{concept}: neighbour words", leave=False):
            template = templates[int(torch.randint(0, len(templates), (), generator=generator))]
            embedding = self._text_embedding(model, fill(template, word))
            with disable_lora(model.unet):
                images = self._draw_circumvent_images(model, embedding.to(model.device), generator)
            share = float(self._detectors[concept](images).decisions.float().mean())
            if share >= cfg.circumvent.neighbour_share:
                if cfg.circumvent.images_from in ("anchor", "both"):
                    latents = self._entry_latents(model, embedding.to(model.device), template, generator)
                else:
                    latents = _latents(model, images)
                entries.append(MinedEmbedding(concept, -1, embedding.cpu(), latents.cpu(), template))
                shares[fill(template, word)] = share
        return entries, shares

    def _circumvent_rounds(self, model, pool, generator, run, loop, pool_images, picks):
        """Eq. 7-8 on the loop's c for up to `circumvent.rounds` rounds (A22): after each but the last, s(c) is
        scored again on the adapted model and the next round runs only while s(c) >= tau. Returns the rounds' loss
        histories, joined, the scores after each round, and the seconds those scores took."""
        cfg = self.config
        history: dict[str, list[float]] = {}
        after: list[float] = []
        reverify_seconds = 0.0
        for round_ in range(cfg.circumvent.rounds):
            for name, values in self._circumvent(model, pool, generator, run, loop).items():
                history.setdefault(name, []).extend(values)
            if round_ + 1 == cfg.circumvent.rounds:
                break
            tic = time.perf_counter()
            after.append(
                self._verify(
                    model, pool[-1].embedding.to(model.device), pool_images, picks, generator, pool[-1].concept
                )
            )
            reverify_seconds += time.perf_counter() - tic
            if after[-1] < cfg.verify.tau:
                break
        return history, after, reverify_seconds

    def _paired_anchors(self, model: DiffusionModel, entry: MinedEmbedding, anchors: torch.Tensor) -> torch.Tensor:
        """A23: the conditionings of `entry`'s c0s, its initial template with each of `circumvent.anchor_concepts` in
        the concept's place ("a photo of a red {concept}" -> "a photo of a red circle"), so that c is pulled to what
        the same prompt draws with another concept; `anchors` (`circumvent.anchor`) where there are no anchor
        concepts or the template does not name the concept."""
        prompts = self._c0_prompts(entry.template)
        return anchors if prompts == self.config.circumvent.anchor else model.encode_prompt(prompts)

    def _c0_prompts(self, template: str | None) -> list[str]:
        """The c0 prompts of a c initialised from `template`: the template with each of `circumvent.anchor_concepts`
        in the concept's place (A23), or `circumvent.anchor` where there are none or the template does not name the
        concept."""
        concepts = self.config.circumvent.anchor_concepts
        if not concepts or template is None or CONCEPT_MARK not in template:
            return list(self.config.circumvent.anchor)
        return [fill(template, concept) for concept in concepts]

    def _signed_conditions(self, model: DiffusionModel, embedding: torch.Tensor) -> torch.Tensor:
        """The conditionings of c, 0*c and -c (Eq. 7-8), stacked: (3, max_length, D_cross)."""
        with torch.no_grad():
            return torch.cat([self._condition(model, s * embedding) for s in (1.0, 0.0, -1.0)])

    def _refine(self, model, embedding, optimizer, x0, noise, t) -> torch.Tensor:
        """A18: one step of Eq. 5 on a mined c against the adapters as they are now (their weights get no gradient),
        on the circumventing step's noisy images; returns c's new (c, 0*c, -c) conditionings."""
        (loss,) = self._mining_losses(model, embedding, x0, noise, t)
        (embedding.grad,) = torch.autograd.grad(loss, [embedding])
        _clip_norm(embedding.grad, self.config.mining.grad_clip)
        optimizer.step()
        embedding.grad = None
        return self._signed_conditions(model, embedding)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, run, loop, pool, state) -> None:
        """`checkpoint-<loop>`: the adapters, the pool's tensors, and `state` with the pool's entries beside them."""
        entries = _entries_json(pool)

        def write(directory: Path) -> None:
            save_lora(model.unet, directory, metadata={"loop": loop})
            tensors = {}
            for i, entry in enumerate(pool):
                tensors[f"{i}.embedding"], tensors[f"{i}.latents"] = entry.embedding, entry.latents
            save_tensors(directory / "embeddings.safetensors", tensors or {"empty": torch.zeros(1)})
            write_json(directory / "state.json", {**state, "entries": entries})

        run.save_checkpoint(loop, write)

    def _resume(self, model, run):
        latest = run.latest()
        if latest is None:
            return None
        loop, directory = latest
        load_lora(model, directory)
        tensors = load_tensors(directory / "embeddings.safetensors")
        with open(directory / "state.json") as f:
            state = json.load(f)
        entries = json.loads(state.pop("entries"))
        pool = [
            MinedEmbedding(
                e["concept"], e["loop"], tensors[f"{i}.embedding"], tensors[f"{i}.latents"], e.get("template")
            )
            for i, e in enumerate(entries)
        ]
        return loop, pool, state

    # ---- the loop --------------------------------------------------------------------------------------------
    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Run (or resume) Dark Miner on `model` for `request.concepts`; write the adapter to `output_dir`.

        Returns:
            [`ErasureResult`] with the per-loop history (s(c), losses, timings).

        Raises:
            RunConflictError: `output_dir` holds a run with another config.
            NonFiniteLossError: a loss became NaN/inf (the message names the step and the last good checkpoint).
        """
        cfg = self.config
        concepts = list(request.concepts)
        self._world = request.world
        self._detectors = {}
        needs = [
            need
            for need, on in [
                ("verify.score='detector'", cfg.verify.score == "detector"),
                ("circumvent.neighbour_words", cfg.circumvent.neighbour_words > 0),
            ]
            if on
        ]
        for concept in concepts if needs else []:
            self._detectors[concept] = request.world.detector(model, concept)
            if self._detectors[concept] is None:
                raise ConfigError(
                    f"{' and '.join(needs)}: the {request.world.name} world has no detector that judges {concept!r} "
                    "(ShapesWorld's classifier does); use verify.score=cosine and circumvent.neighbour_words=0."
                )
        self._warn_cut_texts(model, concepts)
        identity = {"method": self.name, "base_model": model.name, "concepts": concepts}
        run = RunDirectory(
            output_dir,
            {**identity, "config": dataclasses.asdict(cfg)},
            total_limit=cfg.checkpoint_limit,
            runtime=model.runtime(),
            defaults={**identity, "config": dataclasses.asdict(type(cfg)())},
        )
        resumed = self._resume(model, run)
        if resumed is None:  # records a killed run wrote before its first checkpoint are written again
            run.truncate_log(lambda record: False)
            start, pool = 0, []
            state = {"history": [], "done": [], "below": {c: 0 for c in concepts}}
            with torch.random.fork_rng(devices=[]):  # LoRA's A matrices are drawn from the global RNG
                torch.manual_seed(cfg.seed)
                add_lora(
                    model.unet,
                    _lora_targets(model.unet, cfg.lora.targets),
                    rank=cfg.lora.rank,
                    alpha=cfg.lora.alpha,
                )
        else:
            start, pool, state = resumed
            run.truncate_log(lambda r: r.get("loop", -1) < start)
        self._kept = self._anchor_latents(model) if cfg.circumvent.preserve_on == "anchor" else None
        pools, pool_images = {}, {}
        for i, concept in enumerate(concepts):
            pools[concept] = self._image_pool(model, concept, i, run)
            pool_images[concept] = load_tensors(run.path / "pool" / f"concept-{i}.safetensors")["images"].float() / 255

        if cfg.circumvent.prompt_steps and start == 0 and not pool:  # A24: the texts first, then a checkpoint
            tic = time.perf_counter()
            pool, history, neighbours = self._circumvent_prompts(model, concepts, run)
            extra = {"neighbours": neighbours} if cfg.circumvent.neighbour_words else {}
            run.log(loop=-1, texts=len(pool), circumvent=history, texts_seconds=time.perf_counter() - tic, **extra)
            self._save_checkpoint(model, run, 0, pool, state)

        bar = tqdm(range(start, cfg.max_loops), desc="dark miner", initial=start, total=cfg.max_loops)
        for loop in bar:
            active = [c for c in concepts if c not in state["done"]]
            if not active:
                break
            concept = active[loop % len(active)]  # A10: several concepts take turns
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + loop)
            record = {"loop": loop, "concept": concept}
            tic = time.perf_counter()
            embedding, picks, mining_losses, template = self._mine(
                model, concept, pools[concept], generator, run, loop
            )
            record.update(
                mining_loss=mining_losses,
                mining_seconds=time.perf_counter() - tic,
                **_stage_memory("mining", model),
            )
            tic = time.perf_counter()
            score = self._verify(model, embedding, pool_images[concept], picks, generator, concept)
            record.update(score=score, verify_seconds=time.perf_counter() - tic, **_stage_memory("verify", model))
            below = state["below"][concept] = state["below"][concept] + 1 if score < cfg.verify.tau else 0
            if below >= cfg.verify.patience:
                state["done"].append(concept)
                record["stopped"] = True
            elif below == 0:
                # A mined c that still reproduces the concept is circumvented; one below tau is not (§3.2.2).
                tic = time.perf_counter()
                if cfg.circumvent.images_from == "mined":  # the k pool images c reproduces
                    latents = pools[concept][picks]
                else:
                    latents = self._entry_latents(model, embedding, template, generator)
                pool.append(MinedEmbedding(concept, loop, embedding.cpu(), latents.cpu(), template))
                history, after, reverify_seconds = self._circumvent_rounds(
                    model, pool, generator, run, loop, pool_images[concept], picks
                )
                rounds_record = {"round_scores": after, "reverify_seconds": reverify_seconds}
                record.update(
                    circumvent=history,
                    **(rounds_record if cfg.circumvent.rounds > 1 else {}),
                    circumvent_seconds=time.perf_counter() - tic - reverify_seconds,
                    **_stage_memory("circumvent", model),
                )
            state["history"].append({k: v for k, v in record.items() if not isinstance(v, dict | list)})
            run.log(**record)
            bar.set_postfix(concept=concept, s=f"{score:.3f}", tau=cfg.verify.tau)
            self._save_checkpoint(model, run, loop + 1, pool, state)

        metadata = {"method": self.name, "base_model": model.name, "concepts": concepts}
        save_lora(model.unet, run.path, metadata=metadata)
        write_erasure_config(
            run,
            {
                **metadata,
                "config": dataclasses.asdict(cfg),
                "loops": len(state["history"]),
                "stopped": state["done"],
            },
        )
        summary = {
            "loops": len(state["history"]),
            "stopped_by_rule": sorted(state["done"]),
            "final_scores": {
                c: next((h["score"] for h in reversed(state["history"]) if h["concept"] == c), None) for c in concepts
            },
        }
        return ErasureResult(run.path, state["history"], summary)
