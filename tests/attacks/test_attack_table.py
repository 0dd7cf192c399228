"""One table that runs every registered attack on a tiny erased model."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from darkminer.attacks import AttackResult, get_attack, list_attacks
from darkminer.attacks.common import original_model

ATTACKS = [entry.name for entry in list_attacks()]
DISCRETE = [
    name for name in ATTACKS if "banned_words" in {f.name for f in dataclasses.fields(get_attack(name).config_class)}
]

TINY_ATTACK_SETTINGS: dict[str, dict] = {
    "cce": dict(
        steps=8, lr=0.05, length=2, batch_size=2, num_embeddings=2, num_images=4, eval_every=1, eval_samples=4,
        generate_steps=2,
    ),
    "p4d": dict(
        steps=8, lr=0.1, num_tokens=4, init="random", batch_size=2, eval_every=1, eval_samples=4, generate_steps=2
    ),
    "unlearn_diff": dict(steps=8, lr=0.1, num_tokens=3, batch_size=2, eval_every=1, eval_samples=4, generate_steps=2),
    "ring_a_bell": dict(population=16, generations=8, num_tokens=4),
}  # fmt: skip
"""A few steps per attack on `tiny_model`, at learning rates where every loss curve fell in all of six seeds tried."""

ZERO_BUDGET = {
    "cce": ["steps", "num_embeddings", "num_images", "batch_size"],
    "p4d": ["steps", "max_prompts", "num_tokens", "batch_size"],
    "unlearn_diff": ["steps", "max_prompts", "num_tokens", "batch_size"],
    "ring_a_bell": ["generations", "population", "max_prompts", "num_tokens"],
}

PROMPTS = ["a photo of a star", "a red star"]


def _attack(name, **overrides):
    entry = get_attack(name)
    return entry.attack_class(entry.config_class(**{**TINY_ATTACK_SETTINGS[name], **overrides}))


def _snapshot(model):
    return {k: v.clone() for k, v in model.unet.state_dict().items()} | {
        f"text_encoder.{k}": v.clone() for k, v in model.text_encoder.state_dict().items()
    }


def _probe(model):
    latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.predict_noise(latents, torch.tensor([50, 500]), model.encode_prompt(PROMPTS))


@pytest.fixture(scope="module")
def runs(erased):
    """Each attack run once on the shared erased model, with the model's state before and after."""
    cache = {}

    def run(name):
        if name not in cache:
            before, probe = _snapshot(erased), _probe(erased)
            result = _attack(name).run(erased, concept="star", prompts=PROMPTS)
            cache[name] = (result, before, probe)
        return cache[name]

    return run


def test_every_registered_attack_has_tiny_settings():
    assert set(ATTACKS) == set(TINY_ATTACK_SETTINGS) == set(ZERO_BUDGET)
    assert {"cce", "p4d", "unlearn_diff", "ring_a_bell"} <= set(ATTACKS)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_reduces_its_loss(name, runs):
    result, _, _ = runs(name)
    assert result.loss_history and len(result.loss_history) == len(result)
    for curve in result.loss_history:
        assert all(torch.isfinite(torch.tensor(curve)))
        assert curve[-1] < curve[0], curve


@pytest.mark.parametrize("name", ATTACKS)
def test_outputs_generate_images(name, runs, erased):
    result, _, _ = runs(name)
    cond = result.conditionings(erased)
    assert cond.shape == (len(result), erased.max_length, erased.text_encoder.config.hidden_size)
    images = erased.generate(cond=cond, num_inference_steps=2)
    assert images.shape == (len(result), 3, 32, 32)
    if name == "cce":
        assert result.embeddings.shape == (2, 2, erased.token_embedding.embedding_dim) and not result.prompts
    else:
        assert len(result.prompts) == len(PROMPTS) and result.source_prompts == PROMPTS
        assert all(isinstance(p, str) and p for p in result.prompts)


@pytest.mark.parametrize("name", ATTACKS)
def test_model_is_left_unchanged(name, runs, erased):
    _, before, probe = runs(name)
    after = _snapshot(erased)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in erased.unet.parameters())
    assert torch.equal(_probe(erased), probe)  # the adapters are still enabled
    with original_model(erased, None):  # disable_lora, with the requires_grad flags restored on exit
        assert not torch.equal(_probe(erased), probe)


@pytest.mark.parametrize("name", ATTACKS)
def test_save_load_round_trip(name, runs, erased, tmp_path):
    result, _, _ = runs(name)
    loaded = AttackResult.load(result.save(tmp_path / name))
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["embeddings.safetensors", "prompts.json"]
    assert (loaded.attack, loaded.concept, loaded.prompts) == (name, "star", result.prompts)
    assert loaded.loss_history == result.loss_history and loaded.config == result.config
    assert (loaded.embeddings is None) == (result.embeddings is None)
    assert torch.equal(loaded.conditionings(erased), result.conditionings(erased))


@pytest.mark.parametrize("name", ATTACKS)
def test_output_dir_is_written(name, erased, tmp_path):
    overrides = {"steps": 1} if name != "ring_a_bell" else {"generations": 1}
    result = _attack(name, **overrides).run(erased, concept="star", prompts=PROMPTS[:1], output_dir=tmp_path)
    assert AttackResult.load(tmp_path).prompts == result.prompts


@pytest.mark.parametrize("name", DISCRETE)
def test_banned_words_never_appear(name, erased):
    banned = ["star", "photo"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unlearn_diff warns that it strips banned words from the normal prompt
        budget = {"generations": 4} if name == "ring_a_bell" else {"steps": 3}
        result = _attack(name, banned_words=banned, **budget).run(erased, concept="star", prompts=PROMPTS)
    assert len(result.prompts) == len(PROMPTS)
    for prompt in result.prompts:
        assert not any(word in prompt.lower() for word in banned), prompt


@pytest.mark.parametrize("name", DISCRETE)
def test_banned_words_need_whole_word_vocabulary(name):
    with pytest.raises(ValueError, match="vocabulary"):
        get_attack(name).config_class(banned_words=["star"], vocabulary="all")


@pytest.mark.parametrize("name", ATTACKS)
def test_zero_budget_raises(name):
    config_class = get_attack(name).config_class
    config_class()  # the defaults are valid
    for field in ZERO_BUDGET[name]:
        with pytest.raises(ValueError, match=field):
            config_class(**{field: 0})


@pytest.mark.parametrize("name", ATTACKS)
def test_no_prompts_raises(name, erased):
    with pytest.raises(ValueError, match="prompts"):
        _attack(name).run(erased, concept="star", prompts=[])


def test_ring_a_bell_uses_the_text_encoder_only(erased):
    def forbid(*args, **kwargs):
        raise AssertionError("Ring-A-Bell called the UNet")

    handle = erased.unet.register_forward_pre_hook(forbid)
    try:
        _attack("ring_a_bell", generations=2).run(erased, concept="star", prompts=PROMPTS[:1])
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["ring_a_bell", "unlearn_diff"])
def test_same_seed_same_result(name, erased):
    budget = {"generations": 4} if name == "ring_a_bell" else {"steps": 3}
    first = _attack(name, seed=3, **budget).run(erased, concept="star", prompts=PROMPTS[:1])
    second = _attack(name, seed=3, **budget).run(erased, concept="star", prompts=PROMPTS[:1])
    assert first.prompts == second.prompts and first.loss_history == second.loss_history


class _FixedDetector:
    """A detector that gives the same decision for every image and counts the images it was shown."""

    name, kind, threshold = "fixed", "object", None

    def __init__(self, decision: bool):
        self.decision, self.seen = decision, 0

    def metadata(self):
        return {"name": self.name}

    def __call__(self, images01):
        from darkminer.metrics import DetectorOutput

        self.seen += len(images01)
        return DetectorOutput(
            torch.full((len(images01),), float(self.decision)), torch.full((len(images01),), self.decision)
        )


@pytest.mark.parametrize("decision", [True, False])
def test_unlearn_diff_stops_once_the_detector_sees_the_concept(decision, erased):
    detector = _FixedDetector(decision)
    attack = _attack("unlearn_diff", steps=6, eval_every=2, check_images=2)
    result = attack.run(erased, concept="star", prompts=PROMPTS[:1], detector=detector)
    checks = 1 if decision else 3  # the first check succeeds, or all 6 / 2 of them run
    assert len(result.loss_history[0]) == 1 + checks
    assert detector.seen == 2 * checks


def test_unlearn_diff_without_stop_on_success_ignores_the_detector(erased):
    detector = _FixedDetector(True)
    attack = _attack("unlearn_diff", steps=6, eval_every=2, stop_on_success=False)
    result = attack.run(erased, concept="star", prompts=PROMPTS[:1], detector=detector)
    assert len(result.loss_history[0]) == 4 and detector.seen == 0
