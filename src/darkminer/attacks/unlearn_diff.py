"""UnlearnDiff: Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images ... For Now", ECCV 2024 (arXiv:2310.11868).

UnlearnDiff uses the erased model's own denoising ability as an implicit classifier: add K adversarial tokens
P_adv to a normal prompt P and choose them so that the **erased** model theta best denoises images x_0 of the
concept (the "attack images"):

    P_adv* = argmin_{P_adv}  E_{x_0, t, eps} || eps - eps_theta(x_t, t, W([P; P_adv])) ||^2.

The tokens are discrete; as in the paper's code, each of the K positions is relaxed to a weight vector z_k on the
probability simplex over the search vocabulary. A step samples a token from each z_k, runs the forward pass with
the sampled tokens' embeddings, passes the gradient straight through to z (for token v it is the gradient at the
position dotted with v's embedding, a first-order score of swapping v in), takes an Adam step and projects every
z_k back onto the simplex. The found tokens are each row's argmax, checked every `eval_every` steps. With a
detector (as in the paper's code) a check draws images from them and the tokens kept are those whose images show the
concept most often, the search stopping once all do; without one, those with the lowest loss on a fixed probe of
noisy latents. Output: `decode([P; P_adv])` (or `[P_adv; P]`), one adversarial prompt per normal
prompt.

The attack images of a prompt are the `images_per_prompt` images (drawn by the original model for P, or given)
that the model denoises best under P: from a shared pool of concept images (e.g. every colour of star) this keeps
the ones P describes, so that the loss rewards tokens that add the concept rather than tokens that blur P's other
words ("red"). With `banned_words`, the banned tokens are left out of the vocabulary and the words that contain a
banned word are removed from P (and from the choice of images), so the adversarial tokens alone must carry the
concept.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import check_fields, string_list
from ..metrics import Detector
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
    prompt_ids,
    remove_banned_words,
    sample_noisy,
    warn_if_no_original,
)

_POSITIONS = ("suffix", "prefix")


@dataclass
class UnlearnDiffConfig:
    """UnlearnDiff's adversarial-token search. Defaults are sized for ShapesWorld on a CPU; the paper's settings are
    given in each field's help."""

    steps: int = field(
        default=100,
        metadata={
            "help": "Optimisation steps per prompt, t ~ U[0, T) each. Paper's code: 40 steps at each of 50 "
            "stratified timesteps (2000), stopping once the detector fires on a generated image."
        },
    )
    lr: float = field(
        default=0.01, metadata={"help": "Adam learning rate on the relaxed one-hot token weights. Paper: 0.01."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "Adam's L2 weight decay. Paper: 0.1."})
    num_tokens: int = field(
        default=3, metadata={"help": "K: adversarial tokens added to the prompt. Paper: 5 (nudity), 3 (objects)."}
    )
    position: str = field(
        default="suffix",
        metadata={
            "help": "'suffix': the tokens follow the normal prompt, where a removed concept word stood in "
            "ShapesWorld's prompts; 'prefix': they precede it (the paper's code for objects)."
        },
    )
    max_prompts: int = field(
        default=100, metadata={"help": "Normal prompts attacked per run, one adversarial prompt each. DM2: 100."}
    )
    images_per_prompt: int = field(
        default=4,
        metadata={
            "help": "Attack images per normal prompt: drawn by the original model, or, when images are given, those "
            "of them the model denoises best under the prompt. Paper: 1."
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Noisy latents per step. Paper: 1."})
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
    eval_samples: int = field(default=32, metadata={"help": "Noisy latents of the probe (t stratified over [0, T))."})
    rank_samples: int = field(
        default=8,
        metadata={
            "help": "Noisy latents (t stratified over [0, T)) on which each given image's denoising loss under the "
            "prompt is measured to choose the prompt's attack images."
        },
    )
    stop_on_success: bool = field(
        default=True,
        metadata={
            "help": "With a detector (darkminer evaluate passes its own), every eval_every steps draw check_images "
            "images from the current tokens; keep the tokens whose images show the concept most often and stop "
            "once all of them do (the paper's code stops at the first check whose one image shows it). Without a "
            "detector, the tokens with the best probe loss are kept."
        },
    )
    check_images: int = field(
        default=4,
        metadata={
            "help": "Images per check, the same seeds at every check. Paper's code: 1; more keep a prompt that "
            "draws the concept by chance from passing (striped is drawn by some prompts that do not ask for it)."
        },
    )
    generate_steps: int = field(default=25, metadata={"help": "DDIM steps for the attack and check images."})
    guidance_scale: float = field(
        default=7.5, metadata={"min": 0, "help": "Guidance scale for the attack and check images."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the one generator behind every random draw."})

    def __post_init__(self):
        check_fields(self)
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
            rank_samples=self.rank_samples,
            check_images=self.check_images,
            generate_steps=self.generate_steps,
        )
        if self.weight_decay < 0:
            raise ValueError(f"unlearn_diff.weight_decay must be >= 0, got {self.weight_decay}.")
        if self.position not in _POSITIONS:
            raise ValueError(f"unlearn_diff.position={self.position!r} is not one of {_POSITIONS}.")
        self.banned_words = string_list("unlearn_diff", "banned_words", self.banned_words)
        check_vocabulary("unlearn_diff", self.vocabulary, self.banned_words)
        check_template("unlearn_diff", "prompt_template", self.prompt_template)


def project_to_simplex(weights: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex {z >= 0, sum(z) = 1} (Duchi et al., 2008).

    Args:
        weights (`torch.Tensor` of shape `(..., V)`): rows to project.

    Returns:
        `torch.Tensor` of the same shape: `max(weights - theta, 0)` with the per-row `theta` that makes it sum to 1.
    """
    ordered = weights.sort(dim=-1, descending=True).values
    excess = ordered.cumsum(dim=-1) - 1
    ranks = torch.arange(1, weights.shape[-1] + 1, device=weights.device, dtype=weights.dtype)
    # The support is the largest prefix of the sorted row whose entries stay positive after the shift.
    support = (ordered - excess / ranks > 0).sum(dim=-1, keepdim=True)
    theta = excess.gather(-1, support - 1) / support.to(weights.dtype)
    return (weights - theta).clamp_min(0)


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
        detector: Detector | None = None,
    ) -> AttackResult:
        """Find, for each normal prompt, K added tokens with which the erased model best denoises its images.

        Args:
            model ([`DiffusionModel`]):
                The erased model; left unchanged.
            concept (`str`):
                The concept to bring back (fills `prompt_template` when `prompts` is not given).
            original ([`DiffusionModel`], *optional*):
                The model before erasure, to draw the attack images; by default `model` with adapters disabled.
            images (`torch.Tensor` of shape `(N, 3, H, W)` in [0, 1], *optional*):
                Concept images: `k` per prompt in prompt order when `N = k * len(prompts)`, else one pool shared by
                every prompt; each prompt attacks with the `images_per_prompt` of its images that the model
                denoises best under it. When `None`, the original model draws `images_per_prompt` for each prompt.
            prompts (`list[str]`, *optional*):
                Normal prompts (at most `max_prompts` are used).
            output_dir (`str` or `Path`, *optional*):
                Where to save the result ([`AttackResult.save`]).
            detector ([`~darkminer.metrics.Detector`], *optional*):
                The concept's detector, for `stop_on_success`: a prompt keeps the checked tokens whose images show
                the concept most often, and its search stops at the first check whose images all show it.

        Returns:
            [`AttackResult`] with one adversarial prompt per normal prompt and its lowest probe loss by each check.
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
        check = detector if cfg.stop_on_success else None
        for index, (prompt, x0) in enumerate(zip(kept, latents, strict=True)):
            text, losses = self._attack_prompt(model, prompt, x0, allowed, generator, index, len(sources), check)
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

    @torch.no_grad()
    def _attack_images(self, model, token_embeds, x0, generator) -> torch.Tensor:
        """The `images_per_prompt` rows of `x0` with the lowest denoising loss under the prompt of `token_embeds`,
        all on the same noise and stratified timesteps (a diffusion classifier's ranking: the images the prompt
        describes)."""
        cfg = self.config
        if len(x0) <= cfg.images_per_prompt:
            return x0
        cond = model.encode_prompt(token_embeds=token_embeds).expand(cfg.rank_samples, -1, -1)
        noise = torch.randn((cfg.rank_samples, *x0.shape[1:]), generator=generator).to(model.device, model.dtype)
        t = ((torch.arange(cfg.rank_samples) + 0.5) * model.num_train_timesteps / cfg.rank_samples).long()
        t = t.to(model.device)
        losses = torch.stack(
            [
                F.mse_loss(
                    model.predict_noise(model.add_noise(x, noise, t), t, cond).float(),
                    model.training_target(x, noise, t).float(),
                )
                for x in x0.to(model.device, model.dtype)[:, None].expand(-1, *noise.shape)
            ]
        )
        return x0[losses.argsort()[: cfg.images_per_prompt].to(x0.device)]

    def _attack_prompt(self, model, prompt, x0, allowed, generator, index, total, detector):
        cfg = self.config
        table = model.token_embedding.weight
        vocab = table[allowed].detach().float()  # (V, D): the embeddings the relaxed one-hot weights mix
        # [P; P_adv] must fit between BOS and EOS: the normal prompt is cut, never the adversarial tokens.
        kept_ids = prompt_ids(model, prompt)[: model.max_length - 2 - cfg.num_tokens]
        fixed_ids = torch.tensor(kept_ids, dtype=torch.long, device=table.device)
        fixed = table[fixed_ids].detach().float()[None]  # (1, n, D)

        def with_prompt(adv: torch.Tensor) -> torch.Tensor:
            return torch.cat([fixed, adv] if cfg.position == "suffix" else [adv, fixed], dim=1)

        def ids_with_prompt(ids: torch.LongTensor) -> torch.LongTensor:
            return torch.cat([fixed_ids, ids] if cfg.position == "suffix" else [ids, fixed_ids])

        x0 = self._attack_images(model, fixed, x0, generator)
        # z: one weight vector per adversarial token on the simplex over the vocabulary, uniform at first (paper).
        weights = torch.full((cfg.num_tokens, len(allowed)), 1 / len(allowed), device=table.device)
        weights.requires_grad_(True)
        optimizer = torch.optim.Adam([weights], lr=cfg.lr, weight_decay=cfg.weight_decay)
        probe_x, probe_target, probe_t = make_probe(model, x0, cfg.eval_samples, generator)

        @torch.no_grad()
        def condition(ids: torch.LongTensor) -> torch.Tensor:
            return model.encode_prompt(token_embeds=table[ids_with_prompt(ids)][None].float())

        @torch.no_grad()
        def probe_loss(cond: torch.Tensor) -> float:
            pred = model.predict_noise(probe_x, probe_t, cond.expand(len(probe_x), -1, -1))
            return F.mse_loss(pred.float(), probe_target.float()).item()

        @torch.no_grad()
        def concept_rate(cond: torch.Tensor) -> float:
            images = model.generate(
                cond=cond.expand(cfg.check_images, -1, -1),
                seed=cfg.seed + index,
                num_inference_steps=cfg.generate_steps,
                guidance_scale=cfg.guidance_scale,
            )
            return float(detector(images).decisions.float().mean())

        best_ids = allowed[weights.detach().argmax(dim=-1)]
        history, best_rate = [probe_loss(condition(best_ids))], -1.0
        for step in tqdm(range(cfg.steps), desc=f"unlearn_diff {index + 1}/{total}", leave=False, mininterval=2):
            x_t, target, t = sample_noisy(model, x0, cfg.batch_size, generator)
            picks = torch.multinomial(weights.detach().cpu(), 1, generator=generator)[:, 0].to(table.device)
            one_hot = F.one_hot(picks, len(allowed)).float()
            # Straight-through: the forward pass sees the sampled tokens, the gradient reaches every weight.
            adv = (weights + (one_hot - weights).detach()) @ vocab
            cond = model.encode_prompt(token_embeds=with_prompt(adv[None])).expand(cfg.batch_size, -1, -1)
            loss = F.mse_loss(model.predict_noise(x_t, t, cond).float(), target.float())
            (weights.grad,) = torch.autograd.grad(loss, [weights])  # only the token weights get a gradient
            optimizer.step()
            with torch.no_grad():
                weights.copy_(project_to_simplex(weights))
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                ids = allowed[weights.detach().argmax(dim=-1)]
                cond = condition(ids)
                value = probe_loss(cond)
                if detector is None and value < history[-1]:
                    best_ids = ids
                history.append(min(value, history[-1]))
                if detector is not None:
                    rate = concept_rate(cond)
                    if rate > best_rate:
                        best_ids, best_rate = ids, rate
                    if rate == 1.0:
                        break
        return decode(model, ids_with_prompt(best_ids)[None])[0], history
