"""UnlearnDiff: Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images ... For Now", ECCV 2024 (arXiv:2310.11868).

UnlearnDiff uses the erased model's own denoising ability as an implicit classifier: prepend K adversarial tokens
P_adv to a normal prompt P and choose them so that the **erased** model theta best denoises an image x_0 of the
concept (the "attack image", drawn by the original model for P):

    P_adv* = argmin_{P_adv}  E_{t, eps} || eps - eps_theta(x_t, t, W([P_adv; P])) ||^2.

The paper optimises a relaxation on the vocabulary simplex; here the tokens are discrete through the same
projection as P4D (PEZ, Wen et al. 2023): continuous embeddings, forward with their nearest allowed tokens,
straight-through gradient. Output: `decode([P_adv; P])`, one adversarial prompt per normal prompt. With
`banned_words`, the banned tokens are masked out of the projection and the words that contain a banned word are
removed from the normal prompt, so the adversarial tokens alone must carry the concept.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import DiffusionModel
from .base import AttackResult
from .common import (
    allowed_token_ids,
    check_positive,
    check_template,
    check_vocabulary,
    decode,
    images_for_prompts,
    latents_per_prompt,
    make_probe,
    normal_prompts,
    project_to_tokens,
    prompt_ids,
    random_tokens,
    remove_banned_words,
    sample_noisy,
    warn_if_no_original,
)


@dataclass
class UnlearnDiffConfig:
    """UnlearnDiff's prepended-token search. Defaults are sized for ShapesWorld on a CPU; the paper's settings are
    given in each field's help."""

    steps: int = field(
        default=100,
        metadata={
            "help": "Optimisation steps per prompt, t ~ U[0, T) each. Paper's code: 40 steps at each of 50 "
            "stratified timesteps (2000), stopping once the detector fires on a generated image."
        },
    )
    lr: float = field(default=0.01, metadata={"help": "AdamW learning rate. Paper: 0.01."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay. Paper: 0.1."})
    num_tokens: int = field(
        default=3, metadata={"help": "K: adversarial tokens prepended to the prompt. Paper: 5 (nudity), 3 (objects)."}
    )
    max_prompts: int = field(
        default=100, metadata={"help": "Normal prompts attacked per run, one adversarial prompt each. DM2: 100."}
    )
    images_per_prompt: int = field(
        default=1, metadata={"help": "Attack images the original draws per normal prompt. Paper: 1."}
    )
    batch_size: int = field(default=1, metadata={"help": "Noisy latents per step. Paper: 1."})
    banned_words: list[str] = field(
        default_factory=list,
        metadata={"help": "Words no adversarial prompt may contain; also removed from the normal prompts."},
    )
    vocabulary: str = field(
        default="words",
        metadata={"help": "'words': whole-word tokens only (needed for banned_words); 'all': every token (paper)."},
    )
    prompt_template: str = field(
        default="a photo of a {concept}", metadata={"help": "The normal prompt when no prompts are given."}
    )
    eval_every: int = field(
        default=10,
        metadata={
            "help": "Steps between evaluations of the current tokens on a fixed probe of noisy latents; the best ones "
            "are kept and their probe loss recorded in loss_history."
        },
    )
    eval_samples: int = field(default=8, metadata={"help": "Noisy latents of the probe (t stratified over [0, T))."})
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the attack images."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Guidance scale for the attack images."})
    seed: int = field(default=0, metadata={"help": "Seed of the one generator behind every random draw."})

    def __post_init__(self):
        check_positive(
            "unlearn_diff",
            steps=self.steps,
            lr=self.lr,
            num_tokens=self.num_tokens,
            max_prompts=self.max_prompts,
            images_per_prompt=self.images_per_prompt,
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            eval_samples=self.eval_samples,
            generate_steps=self.generate_steps,
        )
        if self.weight_decay < 0:
            raise ValueError(f"unlearn_diff.weight_decay must be >= 0, got {self.weight_decay}.")
        self.banned_words = [self.banned_words] if isinstance(self.banned_words, str) else list(self.banned_words)
        check_vocabulary("unlearn_diff", self.vocabulary, self.banned_words)
        check_template("unlearn_diff", "prompt_template", self.prompt_template)


class UnlearnDiff:
    """UnlearnDiff behind the [`Attack`] protocol. Construct with an [`UnlearnDiffConfig`]."""

    name = "unlearn_diff"

    def __init__(self, config: UnlearnDiffConfig):
        self.config = config

    def run(
        self,
        model: DiffusionModel,
        *,
        concept: str,
        original: DiffusionModel | None = None,
        images: torch.Tensor | None = None,
        prompts: list[str] | None = None,
        output_dir: str | Path | None = None,
    ) -> AttackResult:
        """Find, for each normal prompt, K prepended tokens with which the erased model best denoises its image.

        Args:
            model ([`DiffusionModel`]):
                The erased model; left unchanged.
            concept (`str`):
                The concept to bring back (fills `prompt_template` when `prompts` is not given).
            original ([`DiffusionModel`], *optional*):
                The model before erasure, to draw the attack images; by default `model` with adapters disabled.
            images (`torch.Tensor` of shape `(N, 3, H, W)` in [0, 1], *optional*):
                Concept images: `k` per prompt in prompt order when `N = k * len(prompts)`, else one pool shared by
                every prompt. When `None`, the original model draws `images_per_prompt` for each prompt.
            prompts (`list[str]`, *optional*):
                Normal prompts (at most `max_prompts` are used).
            output_dir (`str` or `Path`, *optional*):
                Where to save the result ([`AttackResult.save`]).

        Returns:
            [`AttackResult`] with one adversarial prompt per normal prompt and its best probe loss over the steps.
        """
        cfg = self.config
        if cfg.num_tokens > model.max_length - 2:
            raise ValueError(
                f"unlearn_diff.num_tokens={cfg.num_tokens} exceeds the {model.max_length - 2} positions of the model."
            )
        generator = torch.Generator().manual_seed(cfg.seed)
        sources = normal_prompts(prompts, concept, cfg.prompt_template, cfg.max_prompts)
        if images is None:
            warn_if_no_original(model, original, self.name)
        latents = latents_per_prompt(
            model,
            original,
            sources,
            images_for_prompts(images, prompts, sources),
            cfg.images_per_prompt,
            generator=generator,
            generate_steps=cfg.generate_steps,
            guidance_scale=cfg.guidance_scale,
        )
        allowed = allowed_token_ids(model, cfg.vocabulary, cfg.banned_words)
        kept = [remove_banned_words(prompt, cfg.banned_words) for prompt in sources]
        changed = [(a, b) for a, b in zip(sources, kept, strict=True) if a != b]
        if changed:
            warnings.warn(
                f"unlearn_diff: banned words removed from {len(changed)} normal prompt(s), e.g. {changed[0][0]!r} -> "
                f"{changed[0][1]!r}; the adversarial tokens must carry the concept alone.",
                stacklevel=2,
            )
        found, history = [], []
        for index, (prompt, x0) in enumerate(zip(kept, latents, strict=True)):
            text, losses = self._attack_prompt(model, prompt, x0, allowed, generator, index, len(sources))
            found.append(text)
            history.append(losses)

        result = AttackResult(
            attack=self.name,
            concept=concept,
            prompts=found,
            source_prompts=sources,
            loss_history=history,
            config=dataclasses.asdict(cfg),
            model=model.name,
        )
        if output_dir is not None:
            result.save(output_dir)
        return result

    def _attack_prompt(self, model, prompt, x0, allowed, generator, index, total):
        cfg = self.config
        table = model.token_embedding.weight
        # [P_adv; P] must fit between BOS and EOS: the normal prompt is cut, never the adversarial tokens.
        kept_ids = prompt_ids(model, prompt)[: model.max_length - 2 - cfg.num_tokens]
        tail_ids = torch.tensor(kept_ids, dtype=torch.long, device=table.device)
        tail = table[tail_ids].detach().float()[None]  # (1, n, D), fixed
        soft = table[random_tokens(allowed, (cfg.num_tokens,), generator)].detach().float()[None]
        soft.requires_grad_(True)  # P_adv's continuous embeddings, (1, K, D)
        optimizer = torch.optim.AdamW([soft], lr=cfg.lr, weight_decay=cfg.weight_decay)
        probe_x, probe_noise, probe_t = make_probe(model, x0, cfg.eval_samples, generator)

        @torch.no_grad()
        def probe_loss(ids: torch.LongTensor) -> float:
            token_embeds = torch.cat([table[ids][None].float(), tail], dim=1)
            cond = model.encode_prompt(token_embeds=token_embeds).expand(len(probe_x), -1, -1)
            return F.mse_loss(model.predict_noise(probe_x, probe_t, cond).float(), probe_noise.float()).item()

        best_ids = project_to_tokens(soft, table, allowed)[0]
        history = [probe_loss(best_ids)]
        for step in tqdm(range(cfg.steps), desc=f"unlearn_diff {index + 1}/{total}", leave=False, mininterval=2):
            x_t, noise, t = sample_noisy(model, x0, cfg.batch_size, generator)
            hard = table[project_to_tokens(soft, table, allowed)].float()
            adv = soft + (hard - soft).detach()  # straight-through, as in P4D
            cond = model.encode_prompt(token_embeds=torch.cat([adv, tail], dim=1)).expand(cfg.batch_size, -1, -1)
            loss = F.mse_loss(model.predict_noise(x_t, t, cond).float(), noise.float())
            (soft.grad,) = torch.autograd.grad(loss, [soft])  # only the adversarial tokens get a gradient
            optimizer.step()
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                ids = project_to_tokens(soft, table, allowed)[0]
                value = probe_loss(ids)
                if value < history[-1]:
                    best_ids = ids
                history.append(min(value, history[-1]))
        return decode(model, torch.cat([best_ids, tail_ids])[None])[0], history
