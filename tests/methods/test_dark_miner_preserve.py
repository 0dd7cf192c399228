"""Dark Miner's preserved terms (A14): l_p of Eq. 8 holds c0, 0*c and -c by default, or the ones configured (the
empty prompt of classifier-free guidance among them)."""

from __future__ import annotations

import json

import pytest

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model


def _preservation_losses(tmp_path, preserve, *extra):
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", f"circumvent.preserve={preserve}", *extra]
    DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
        tiny_model(), ErasureRequest(concepts=["star"]), tmp_path
    )
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    return [x for r in records if "circumvent" in r for x in r["circumvent"]["l_p"]]


def test_no_preserved_term_means_no_preservation_loss(tmp_path):
    losses = _preservation_losses(tmp_path, "[]")
    assert losses and all(x == 0.0 for x in losses)


def test_fewer_preserved_terms_weigh_less(tmp_path):
    full = _preservation_losses(tmp_path / "full", "[anchor, zero, negative]")
    anchor = _preservation_losses(tmp_path / "anchor", "[anchor]")
    # The adapters start as the identity, so the first step has l_p = 0 and the same update in both runs: the
    # second step sees the same adapters and images, and the anchor's term is one of the full run's three.
    assert full[0] < 1e-10 and anchor[0] < 1e-10
    assert 0 < anchor[1] < full[1]


@pytest.mark.parametrize("preserve", [["anchor", "minus"], ["zero", "zero"], [None]])
def test_bad_preserved_terms_are_refused(preserve):
    with pytest.raises(ValueError, match="circumvent.preserve"):
        CircumventConfig(preserve=preserve)


def test_the_paper_terms_are_the_default():
    assert CircumventConfig().preserve == ["anchor", "zero", "negative"]


def test_the_unconditional_prediction_is_held(tmp_path):
    losses = _preservation_losses(tmp_path, "[unconditional]")
    assert losses[0] < 1e-10 and all(0 < x < float("inf") for x in losses[1:])


def test_holding_the_unconditional_prediction_adds_a_term(tmp_path):
    paper = _preservation_losses(tmp_path / "paper", "[anchor, zero, negative]")
    more = _preservation_losses(tmp_path / "more", "[anchor, zero, negative, unconditional]")
    assert paper[0] < 1e-10 and more[0] < 1e-10
    assert 0 < paper[1] < more[1]


def test_one_term_may_be_given_as_a_string():
    assert CircumventConfig(preserve="negative").preserve == ["negative"]


def test_terms_are_kept_in_one_order():
    assert CircumventConfig(preserve=("unconditional", "negative", "anchor")).preserve == [
        "anchor",
        "negative",
        "unconditional",
    ]


@pytest.mark.parametrize("name", ["anchor", "preserve", "preserve_prompts"])
def test_no_value_is_refused_by_name(name):
    """An empty YAML value (None) is an error naming the field, the same for every field of prompts or terms."""
    with pytest.raises(ValueError, match=rf"circumvent\.{name} is empty"):
        CircumventConfig(**{name: None})


@pytest.mark.parametrize("value", [5, ["a solid red circle", None]])
def test_a_value_that_is_not_strings_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"circumvent\.preserve_prompts=.*string"):
        CircumventConfig(preserve_prompts=value)


def test_extra_prompts_are_held(tmp_path):
    losses = _preservation_losses(tmp_path, "[]", "circumvent.preserve_prompts=[a circle photo, a square photo]")
    assert losses[0] < 1e-10 and all(0 < x < float("inf") for x in losses[1:])


def test_one_extra_prompt_may_be_given_as_a_string():
    assert CircumventConfig(preserve_prompts="a solid red circle").preserve_prompts == ["a solid red circle"]
