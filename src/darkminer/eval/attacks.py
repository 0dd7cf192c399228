"""The attack half of an evaluation, the same on every world: each attack searches adversarial prompts or
embeddings against the model as given (adapter active), each adversarial output draws `ceil(attack_images /
outputs)` images (one each for a hundred prompts, 16 for CCE's one embedding by default), and the ASR is the share
of those images the suite's detector flags (Table 1's ASR columns). Each record also holds the ASR's floor, the
share of as many images drawn from the same noise with the empty prompt: what the model draws with no attack at all.
On ShapesWorld a shape or a colour is a fifth of the unconditional images, so an attack at that rate found nothing.

The original model draws `per_prompt` images of each of the suite's attack sources once per evaluation: UnlearnDiff
and P4D attack each prompt with its own images, CCE inverts the `pool` the detector scores highest (App. B: the top
1000 among the normal prompts' images).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..attacks import get_attack
from ..config import load_config
from ..metrics import attack_success_rate
from ..models import DiffusionModel
from ..worlds import Suite

ATTACK_IMAGES_PER_PROMPT = 4
"""Images the original model draws of each attack source."""
DETECTOR_FIELDS = ("stop_on_success", "keep_detected")
"""Config fields of attacks that use the concept's detector, which the evaluation then passes to them."""


def attack_config(name: str, overrides: list[str], extra: list[str]):
    """The config of attack `name`: its defaults, then `extra`, then the '<attack>.<field>=value' overrides."""
    mine = [o.split(".", 1)[1] for o in overrides if o.startswith(f"{name}.")]
    return load_config(get_attack(name).config_class, None, [*extra, *mine])


def jsonable_config(config) -> dict:
    """A resolved config as results.json holds it (tuples as lists), to compare a finished result with a config."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def attack_revision(name: str) -> int:
    """The registered attack's `revision` (1 where it declares none): results of another revision are not its."""
    return getattr(get_attack(name).attack_class, "revision", 1)


def has_field(attack: str, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(get_attack(attack).config_class)}


def generate_cond(model, cond: torch.Tensor, seed: int, steps: int = 25, batch: int = 128) -> torch.Tensor:
    """One image per conditioning row, in batches seeded by the row index."""
    return torch.cat(
        [
            model.generate(cond=cond[i : i + batch], seed=seed + i, num_inference_steps=steps)
            for i in range(0, len(cond), batch)
        ]
    )


def run_attacks(
    model: DiffusionModel,
    suite: Suite,
    job,
    out: Path,
    names: list[str],
    *,
    pool: int = 32,
    done: Callable[[str, dict, torch.Tensor], None],
) -> None:
    """Run the attacks `names` of an [`EvaluateJob`] `job` against `model`; after each, `done(name, record,
    adversarial_images)`, where a caller may record progress (ShapesWorld's evaluation resumes after the last one).

    Args:
        pool (`int`): how many of the original's top-scoring images CCE inverts.
    """
    if not names:
        return
    per_prompt, pooled = suite.attack_images(model, ATTACK_IMAGES_PER_PROMPT, pool, job.seed + 4, job.sampling_steps)
    floors: dict[int, float] = {}
    for name in names:
        done(name, *run_attack(model, suite, job, name, per_prompt, pooled, out, floors))


def unprompted_rate(model, suite: Suite, job, count: int) -> float:
    """The ASRs' floor: the share of `count` images the empty prompt draws, from the noise of the adversarial images
    (seed + 3), that the suite's detector flags."""
    empty = generate_cond(model, model.encode_unconditional(count), job.seed + 3, job.sampling_steps)
    return attack_success_rate(suite.detector(empty).decisions)


def run_attack(
    model,
    suite: Suite,
    job,
    name: str,
    per_prompt: torch.Tensor,
    pooled: torch.Tensor,
    out: Path,
    floors: dict[int, float] | None = None,
):
    """One attack against the model as given; its record for results.json, and the images of its outputs.

    Args:
        floors (`dict[int, float]`, *optional*): floors already drawn in this evaluation, by image count; the
            attacks of one evaluation that draw as many images share one.
    """
    start = time.perf_counter()
    banned = job.ban_concept_words and has_field(name, "banned_words")
    config = attack_config(name, job.attack_overrides, [f"banned_words={suite.banned}"] if banned else [])
    attack = get_attack(name).attack_class(config)
    # An attack that checks its candidates' images (UnlearnDiff, as its paper's code; CCE's keep_detected) gets the
    # suite's detector.
    checked = {"detector": suite.detector} if any(has_field(name, f) for f in DETECTOR_FIELDS) else {}
    result = attack.run(
        model,
        concept=job.concept,
        prompts=suite.attack_sources,
        images=per_prompt if has_field(name, "images_per_prompt") else pooled,
        output_dir=out / name,
        **checked,
    )
    result.save(out / name)
    conditionings = result.conditionings(model)
    per_output = -(-job.attack_images // len(conditionings))
    adversarial = generate_cond(
        model, conditionings.repeat_interleave(per_output, dim=0), job.seed + 3, job.sampling_steps
    )
    decisions = suite.detector(adversarial).decisions
    seconds = round(time.perf_counter() - start, 1)
    floors = {} if floors is None else floors
    if len(adversarial) not in floors:
        floors[len(adversarial)] = unprompted_rate(model, suite, job, len(adversarial))
    record = {
        "asr": attack_success_rate(decisions),
        "unprompted": floors[len(adversarial)],
        "outputs": len(result),
        "images": len(adversarial),
        "prompts": result.prompts[:8],
        "seconds": seconds,
        "config": jsonable_config(config),
        "revision": attack_revision(name),
    }
    return record, adversarial
