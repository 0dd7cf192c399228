"""UCE: Unified Concept Editing in Diffusion Models (Gandikota, Orgad, Belinkov, Materzyńska, Bau; WACV 2024).

UCE edits, in closed form and without training, the linear maps through which text enters the UNet: the key and
value projections W (`to_k`, `to_v`) of every cross-attention module. With E the text embeddings c_i of the concepts
to erase, each with the output v*_i it should get, and P the embeddings c_j of concepts to preserve, §3 solves

    min_W  sum_{i in E} ||W c_i - v*_i||^2  +  lambda sum_{j in P} ||W c_j - W_old c_j||^2,

    W = (sum_E v*_i c_i^T + lambda sum_P W_old c_j c_j^T) (sum_E c_i c_i^T + lambda sum_P c_j c_j^T)^-1.

Erasing sets v*_i = W_old c*_i, what the original projection gives the guide concept c* (the empty prompt by
default), so that the erased concept's tokens yield the guide's keys and values. As the authors' code does, the
objective also carries rho ||W - W_old||_F^2 (rho = `regularization`; rho W_old joins the first factor and rho I the
second), which keeps the inverse well posed with few texts, and the erase term is weighted by `erase_scale` (eta).
Subtracting W_old gives the change we compute and store:

    W - W_old = eta sum_E (v*_i - W_old c_i) c_i^T M^-1,     M = eta sum_E c_i c_i^T + lambda sum_P c_j c_j^T + rho I,

in float64, with one M shared by every projection since they all read the same text.

Which token embeddings (the paper leaves it open; this is the authors' code's choice, generalised to texts in which
the concept is followed by more words). The c are the text encoder's outputs, what cross-attention reads. For each
text about the concept, the c_i are the concept's last token and every position after it: the words that follow,
EOS and the padding, which a causal text encoder computes with the concept in view. They are paired position by
position with the same text about the guide, from the guide's last token on, or, when the guide is empty, from the
token just before the concept's place (BOS for a bare concept word): "a photo of a red star" -> "a photo of a red",
"star" reading the keys/values of "red" and EOS those of EOS. A preserved concept is put in the same texts and
contributes every position.

The change of each projection is stored as an exact LoRA (`models.add_lora_from_deltas`, rank min(out, in)), so it
saves, loads and merges like every other method's adapter; `erasure_config.json` says it is a closed-form weight
edit stored as LoRA. Nothing is trained, so there is nothing to resume: a finished run directory is loaded as is.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...config import ConfigError
from ...models import DiffusionModel, add_lora_from_deltas, load_lora, save_lora
from ...models.adapters import ERASURE_CONFIG_NAME, write_erasure_config
from ...models.lora import has_lora
from ...training.checkpoint import RunDirectory
from ...worlds import World
from ..base import ErasureRequest, ErasureResult
from ..prompts import CONCEPT_MARK, fill, prompt_templates
from .config import UCEConfig


def default_preserved(world: World, concepts: list[str]) -> list[str]:
    """The world's siblings of each erased concept (the other shapes for a shape on ShapesWorld; none elsewhere)."""
    return list(dict.fromkeys(v for c in concepts for v in world.related(c) if v not in concepts))


def edit_pairs(
    model: DiffusionModel, template: str, concept: str, guide: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(c_i, c*_i): the erased concept's embeddings in `template` and the guide's paired with them, both (n, D).

    `None` when the template does not name the concept (it holds no `{concept}` mark).

    Raises:
        ValueError: the concept falls beyond the tokenizer's `max_length` in this text.
    """
    if CONCEPT_MARK not in template:
        return None
    prefix = template.split(CONCEPT_MARK, 1)[0]
    # Position of a text's k-th token is k (BOS is position 0); CLIP's BPE splits words independently, so counting
    # the tokens of a prefix locates the concept inside the full text.
    concept_end = model.token_count(prefix + concept)
    guide_end = model.token_count((prefix + guide).rstrip())
    length = model.max_length - max(concept_end, guide_end)
    if length < 1:
        raise ConfigError(
            f"'{fill(template, concept)}' puts the concept beyond max_length={model.max_length} tokens; shorten it."
        )
    with torch.no_grad():
        embeds = model.encode_prompt([fill(template, concept), fill(template, guide)]).double().cpu()
    return embeds[0, concept_end : concept_end + length], embeds[1, guide_end : guide_end + length]


def cross_attention_projections(model: DiffusionModel, edit_keys: bool) -> dict[str, torch.nn.Linear]:
    """The `to_v` (and `to_k`) Linear modules of every cross-attention (`attn2`) module, by full name."""
    suffixes = ("attn2.to_k", "attn2.to_v") if edit_keys else ("attn2.to_v",)
    projections = {n: m for n, m in model.unet.named_modules() if n.endswith(suffixes)}
    if not projections:
        raise ValueError("The UNet has no cross-attention projections (attn2.to_k / attn2.to_v) to edit.")
    return projections


class UCE:
    """UCE behind the [`ErasureMethod`] protocol: a closed-form edit, stored as an exact LoRA."""

    name = "uce"

    def __init__(self, config: UCEConfig):
        self.config = config

    def erase(self, model: DiffusionModel, request: ErasureRequest, output_dir: str | Path) -> ErasureResult:
        """Edit the cross-attention keys/values so the concepts read like the guide; save the edit as a LoRA.

        Raises:
            ValueError: the UNet already carries an adapter, or no text names the concept.
        """
        cfg = self.config
        concepts = list(request.concepts)
        if request.alternative:
            warnings.warn(
                f"UCE ignores --alternative {request.alternative!r}; set its guide with the override guide=WORD.",
                stacklevel=2,
            )
        preserved = default_preserved(request.world, concepts) if cfg.preserve is None else list(cfg.preserve)
        run = RunDirectory(
            output_dir,
            {
                "method": self.name,
                "base_model": model.name,
                "concepts": concepts,
                "config": dataclasses.asdict(cfg),
                "preserved": preserved,
            },
            total_limit=None,
            runtime=model.runtime(),
        )
        metadata = {"method": self.name, "base_model": model.name, "concepts": concepts}
        if (run.path / ERASURE_CONFIG_NAME).is_file():  # a finished run: the edit is deterministic, load it
            load_lora(model, run.path)
            return ErasureResult(run.path, run.read_log(), {"preserved": preserved})
        if has_lora(model.unet):
            raise ConfigError("UCE edits the base weights; merge or remove the UNet's adapter first (merge_lora).")

        # The sets E (erased keys with the guide's keys paired) and P (preserved keys), as rows.
        erased, guides, kept = [], [], []
        for concept in concepts:
            templates = prompt_templates(request.world, concept, cfg.prompt_file)
            pairs = [edit_pairs(model, t, concept, cfg.guide) for t in templates]
            if all(p is None for p in pairs):
                raise ConfigError(f"No text names the concept {concept!r}; write it (or {{concept}}) in the prompts.")
            if None in pairs:
                warnings.warn(
                    f"UCE skips {pairs.count(None)} of {len(pairs)} texts that do not name {concept!r}: it edits the "
                    "concept's own tokens.",
                    stacklevel=2,
                )
            erased += [p[0] for p in pairs if p is not None]
            guides += [p[1] for p in pairs if p is not None]
            named = [t for t in templates if CONCEPT_MARK in t]
            if preserved:
                with torch.no_grad():
                    texts = [fill(t, p) for p in preserved for t in named]
                    kept.append(model.encode_prompt(texts).double().cpu().flatten(0, 1))
        c_erase, c_guide = torch.cat(erased), torch.cat(guides)
        width = c_erase.shape[1]
        gram = cfg.erase_scale * c_erase.T @ c_erase + cfg.regularization * torch.eye(width, dtype=torch.float64)
        if kept:
            c_keep = torch.cat(kept)
            gram += cfg.preserve_scale * c_keep.T @ c_keep

        deltas = {}
        stats = {}
        projections = cross_attention_projections(model, cfg.edit_keys)
        for name, module in tqdm(projections.items(), desc="uce", mininterval=2):
            w_old = module.weight.detach().double().cpu()
            residual = c_guide @ w_old.T - c_erase @ w_old.T  # v*_i - W_old c_i, as rows
            # delta = eta R^T C M^-1; M is symmetric, so solve M X = eta C^T R and transpose.
            delta = torch.linalg.solve(gram, cfg.erase_scale * c_erase.T @ residual).T
            after = c_guide @ w_old.T - c_erase @ (w_old + delta).T
            deltas[name] = delta.to(torch.float32)
            stats[name] = {
                "relative_change": float(delta.norm() / w_old.norm()),
                "erase_residual_before": float(residual.square().mean()),
                "erase_residual_after": float(after.square().mean()),
            }
        add_lora_from_deltas(model.unet, deltas, max_rank=cfg.max_rank)
        run.log(
            erased_vectors=len(c_erase),
            preserved_vectors=sum(len(k) for k in kept),
            preserved=preserved,
            projections=stats,
        )
        save_lora(model.unet, run.path, metadata=metadata)
        write_erasure_config(
            run,
            {
                **metadata,
                "form": "closed-form weight edit of the cross-attention to_k/to_v projections, stored as an exact "
                "LoRA (W - W_old factored by SVD; rank min(out, in) unless max_rank caps it)",
                "preserved": preserved,
                "config": dataclasses.asdict(cfg),
            },
        )
        summary = {
            "preserved": preserved,
            "erased_vectors": len(c_erase),
            "mean_relative_change": sum(s["relative_change"] for s in stats.values()) / len(stats),
        }
        return ErasureResult(run.path, run.read_log(), summary)
