"""The attack registry, the result type and the shared vocabulary helpers, apart from any one attack."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from darkminer.attacks import (
    CCE,
    P4D,
    Attack,
    AttackResult,
    CCEConfig,
    P4DConfig,
    RingABell,
    RingABellConfig,
    UnlearnDiff,
    UnlearnDiffConfig,
    get_attack,
    list_attacks,
    register_attack,
)
from darkminer.attacks.common import allowed_token_ids, images_for_prompts, project_to_tokens, remove_banned_words
from darkminer.attacks.unlearn_diff import project_to_simplex
from darkminer.config import load_config
from darkminer.testing import tiny_model


@pytest.fixture(scope="module")
def plain():
    return tiny_model(seed=0)


# ---------------------------------------------------------------------- registry


def test_unknown_attack_lists_the_registered_ones():
    with pytest.raises(ValueError, match="nope") as info:
        get_attack("nope")
    for entry in list_attacks():
        assert entry.name in str(info.value)


def test_register_attack_validates():
    @dataclass
    class Config:
        steps: int = 1

    class NoRun:
        name = "x"

    with pytest.raises(ValueError, match="already registered"):
        register_attack("cce", CCEConfig, CCE, "again")
    with pytest.raises(ValueError, match="dataclass"):
        register_attack("fresh", dict, CCE, "not a dataclass config")
    with pytest.raises(ValueError, match="run"):
        register_attack("fresh", Config, NoRun, "no run method")
    assert "fresh" not in {e.name for e in list_attacks()}


@pytest.mark.parametrize("entry", list_attacks(), ids=lambda e: e.name)
def test_every_attack_satisfies_the_protocol_and_documents_its_config(entry):
    attack = entry.attack_class(entry.config_class())
    assert isinstance(attack, Attack) and attack.name == entry.name
    for f in dataclasses.fields(entry.config_class):
        assert f.metadata.get("help"), f"{entry.name}.{f.name} has no help text"


def test_configs_load_from_dotted_overrides():
    config = load_config(P4DConfig, None, ["steps=3", "banned_words=[star, photo]", "init=random"])
    assert (config.steps, config.banned_words, config.init) == (3, ["star", "photo"], "random")
    config = load_config(RingABellConfig, None, ["concept_pairs=[[a star, a thing]]", "eta=5.5"])
    assert config.concept_pairs == [["a star", "a thing"]] and config.eta == 5.5
    with pytest.raises(ValueError, match="init"):
        P4DConfig(init="zeros")
    with pytest.raises(ValueError, match="mutation_rate"):
        RingABellConfig(mutation_rate=1.5)


@pytest.mark.parametrize("config_class", [P4DConfig, UnlearnDiffConfig, RingABellConfig])
def test_banned_words_take_a_word_or_a_list_of_words(config_class):
    assert config_class(banned_words="star").banned_words == ["star"]
    for bad in (None, [3], "star photo".split() + [None]):
        with pytest.raises(ValueError, match="banned_words"):
            config_class(banned_words=bad)


# ---------------------------------------------------------------------- AttackResult


def test_result_needs_an_output():
    with pytest.raises(ValueError, match="at least one"):
        AttackResult(attack="cce", concept="star")
    with pytest.raises(ValueError, match="shape"):
        AttackResult(attack="cce", concept="star", embeddings=torch.zeros(3, 32))


def test_mixed_result_conditions_prompts_then_embeddings(plain, tmp_path):
    embeddings = plain.prompt_token_embeddings(["a red star", "a cat"], 3)
    result = AttackResult(attack="x", concept="star", prompts=["a photo"], embeddings=embeddings, loss_history=[[1.0]])
    cond = result.conditionings(plain)
    assert cond.shape == (3, plain.max_length, 32)
    assert torch.allclose(cond[0], plain.encode_prompt("a photo")[0])
    assert torch.allclose(cond[1:], plain.encode_prompt(token_embeds=embeddings))

    loaded = AttackResult.load(result.save(tmp_path))
    assert loaded.prompts == ["a photo"] and torch.equal(loaded.embeddings, embeddings)


def test_load_detects_a_torn_save(plain, tmp_path):
    result = AttackResult(attack="x", concept="star", embeddings=torch.zeros(1, 2, 32))
    result.save(tmp_path / "a")
    AttackResult(attack="x", concept="star", embeddings=torch.ones(1, 2, 32)).save(tmp_path / "b")
    (tmp_path / "b" / "embeddings.safetensors").replace(tmp_path / "a" / "embeddings.safetensors")
    with pytest.raises(ValueError, match="interrupted"):
        AttackResult.load(tmp_path / "a")
    (tmp_path / "b" / "prompts.json").unlink()
    with pytest.raises(FileNotFoundError, match="prompts.json"):
        AttackResult.load(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "prompts.json").read_text())["attack"] == "x"


# ---------------------------------------------------------------------- inputs


def test_cce_inverts_given_images(plain):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    config = CCEConfig(steps=2, length=2, eval_every=1, eval_samples=2, batch_size=1)
    result = CCE(config).run(plain, concept="star", images=images)
    assert result.embeddings.shape == (1, 2, 32) and len(result.loss_history[0]) == 3


def test_given_images_are_paired_with_prompts_or_pooled(plain):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    paired = images_for_prompts(images, ["a", "b"], ["a", "b"])
    assert [torch.equal(p, images[i * 2 : i * 2 + 2]) for i, p in enumerate(paired)] == [True, True]
    assert len(images_for_prompts(images, ["a", "b", "c", "d"], ["a", "b"])) == 2  # cut by max_prompts
    pooled = images_for_prompts(images[:3], ["a", "b"], ["a", "b"])
    assert all(p is images[:3] or torch.equal(p, images[:3]) for p in pooled)
    config = P4DConfig(steps=1, num_tokens=2, eval_samples=2)
    result = P4D(config).run(plain, concept="star", original=plain, prompts=["a star", "a cat"], images=images[:3])
    assert len(result.prompts) == 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CCE(CCEConfig(steps=1)).run(plain, concept="star", images=images * 2 - 1)
    with pytest.raises(ValueError, match="shape"):
        P4D(config).run(plain, concept="star", original=plain, images=images[:, :1])


def test_warnings_for_missing_original_and_stripped_prompts(plain):
    with pytest.warns(UserWarning, match="original"):
        P4D(P4DConfig(steps=1, num_tokens=2, eval_samples=2, generate_steps=1)).run(plain, concept="star")
    config = UnlearnDiffConfig(steps=1, num_tokens=2, eval_samples=2, banned_words=["star"])
    with pytest.warns(UserWarning, match="banned words removed"):
        result = UnlearnDiff(config).run(
            plain, concept="star", original=plain, images=torch.rand(1, 3, 32, 32), prompts=["a star photo"]
        )
    assert result.prompts[0].startswith("a photo") and "star" not in result.prompts[0]  # tokens follow the prompt


def test_too_many_tokens_for_the_model_raises(plain):
    with pytest.raises(ValueError, match="num_tokens"):
        RingABell(RingABellConfig(num_tokens=plain.max_length)).run(plain, concept="star")


# ---------------------------------------------------------------------- the search vocabulary


def test_search_vocabulary(plain):
    tokenizer = plain.tokenizer
    words = set(allowed_token_ids(plain, "words").tolist())
    everything = set(allowed_token_ids(plain, "all").tolist())
    assert words < everything and not everything & set(tokenizer.all_special_ids)
    star = tokenizer.convert_tokens_to_ids("star</w>")
    assert star in words and star not in set(allowed_token_ids(plain, "words", ["Star"]).tolist())
    allowed = allowed_token_ids(plain, "words", ["star"])
    ids = project_to_tokens(plain.token_embedding.weight[[star, star]], plain.token_embedding.weight, allowed)
    assert set(ids.tolist()) <= set(allowed.tolist())
    assert remove_banned_words("a Stars photo of a star", ["star"]) == "a photo of a"


def test_project_to_simplex():
    rows = torch.tensor([[0.5, 0.5, -1.0], [2.0, 0.0, 0.0], [0.6, 0.6, 0.0], [0.2, 0.3, 0.5]])
    expected = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert torch.allclose(project_to_simplex(rows), expected)
    projected = project_to_simplex(torch.randn(6, 50, generator=torch.Generator().manual_seed(0)))
    assert (projected >= 0).all() and torch.allclose(projected.sum(-1), torch.ones(6))
    assert torch.allclose(project_to_simplex(projected), projected)


def test_cce_keeps_the_checked_embedding_the_detector_flags_most(plain):
    """keep_detected: a detector that flags only the first check's images (the starting prompt's) gets the start
    back; without it, or with the option off, CCE returns its last step."""
    images = torch.rand(2, 3, 32, 32)
    config = CCEConfig(steps=4, length=2, eval_every=2, eval_samples=2, batch_size=1, check_every=2, check_images=2)
    calls = []

    def first_check_only(batch):
        calls.append(len(batch))
        return SimpleNamespace(decisions=torch.full((len(batch),), len(calls) == 1))

    start = plain.prompt_token_embeddings(config.init_prompt.format(concept="star"), config.length).float()
    kept = CCE(config).run(plain, concept="star", images=images, detector=first_check_only)
    assert calls == [2, 2, 2] and torch.equal(kept.embeddings, start.cpu())
    for result in (
        CCE(config).run(plain, concept="star", images=images),
        CCE(dataclasses.replace(config, keep_detected=False)).run(
            plain, concept="star", images=images, detector=first_check_only
        ),
    ):
        assert not torch.equal(result.embeddings, start.cpu())
    assert len(calls) == 3
