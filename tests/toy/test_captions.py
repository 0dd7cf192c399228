"""ShapesWorld captions: the training sampler never leaks the held-out split, and captions pin down their labels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from darkminer.toy.captions import (
    COLOUR_WORDS,
    CONCEPTS,
    GENERIC_CAPTIONS,
    HELDOUT_TEMPLATES,
    HELDOUT_WORD_PAIRS,
    IMPLICIT_PHRASES,
    SHAPE_WORDS,
    SOLID_WORDS,
    TRAIN_TEMPLATES,
    article,
    caption_constraints,
    concept_prompts,
    fill_template,
    get_concept,
    heldout_prompts,
    matches,
    sample_caption,
    sample_implicit_caption,
)
from darkminer.toy.render import ALL_LABELS, COLOURS, SHAPES

SAMPLES_PER_LABEL = 40


def _descriptions() -> set[str]:
    """Every noun phrase `describe` can produce (a superset of what `sample_caption` asks it for)."""
    nouns = [w for words in SHAPE_WORDS.values() for w in words] + ["shape", "thing", "object"]
    colours = [None] + [w for words in COLOUR_WORDS.values() for w in words]
    out = set()
    for noun, colour in itertools.product(nouns, colours):
        core = f"{colour} {noun}" if colour else noun
        if (colour, noun) in HELDOUT_WORD_PAIRS:
            continue
        out |= {core, f"striped {core}", f"{core} with stripes", f"{core} in stripes"}
        out |= {f"{solid} {core}" for solid in SOLID_WORDS}
    return out


def _training_captions() -> set[str]:
    """Every caption the training sampler can produce, enumerated exhaustively."""
    bare_implicit = {p.removeprefix("a ").removeprefix("an ") for p in IMPLICIT_PHRASES}
    captions = set(GENERIC_CAPTIONS)
    for template in TRAIN_TEMPLATES:
        captions |= {fill_template(template, d) for d in _descriptions() | bare_implicit}
    return captions


@pytest.fixture(scope="module")
def training_captions() -> set[str]:
    return _training_captions()


@pytest.fixture(scope="module")
def sampled() -> list[tuple[str, object]]:
    """(caption, label) pairs from the training sampler, many per label, from a seeded generator."""
    rng = np.random.default_rng(0)
    return [(sample_caption(label, rng), label) for label in ALL_LABELS for _ in range(SAMPLES_PER_LABEL)]


def _fits(template: str, text: str) -> bool:
    """Whether `text` can be `template` with its one placeholder filled by something non-empty."""
    prefix, suffix = template.replace("{d}", "{a}").split("{a}")
    return len(text) > len(prefix) + len(suffix) and text.startswith(prefix) and text.endswith(suffix)


def test_enumeration_covers_the_sampler(sampled, training_captions):
    # Guards the exhaustive enumeration the held-out tests rely on.
    missing = {caption for caption, _ in sampled} - training_captions
    assert not missing, sorted(missing)[:10]


def test_sampled_captions_never_use_a_heldout_template(sampled):
    for caption, _ in sampled:
        for template in HELDOUT_TEMPLATES:
            assert not _fits(template, caption), (caption, template)


def test_sampled_captions_never_pair_heldout_synonyms(sampled):
    for caption, _ in sampled:
        words = set(caption.split())
        for colour_word, shape_word in HELDOUT_WORD_PAIRS:
            assert not (colour_word in words and shape_word in words), caption


def test_caption_constraints_match_the_sampled_label(sampled):
    for caption, label in sampled:
        assert matches(caption_constraints(caption), label), (caption, label, caption_constraints(caption))


def test_the_sampler_names_every_attribute_often():
    rng = np.random.default_rng(1)
    label = ALL_LABELS[0]
    constraints = [caption_constraints(sample_caption(label, rng)) for _ in range(300)]
    for key in ("shape", "colour", "pattern"):
        assert sum(key in c for c in constraints) > 30, key


def test_implicit_captions_constrain_to_their_label():
    rng = np.random.default_rng(2)
    for phrase, label in IMPLICIT_PHRASES.items():
        for _ in range(20):
            caption = sample_implicit_caption(phrase, rng)
            assert phrase.removeprefix("a ") in caption
            constraints = caption_constraints(caption)
            assert constraints == {"shape": label.shape, "colour": label.colour, "pattern": label.pattern}
            assert matches(constraints, label)


def test_concepts_cover_every_kind_with_implicit_phrases():
    assert len(CONCEPTS) >= 6
    assert {c.kind for c in CONCEPTS.values()} >= {"object", "style", "colour"}
    for name, concept in CONCEPTS.items():
        assert concept.name == name
        assert len(concept.implicit_phrases) >= 2, name
        for phrase in concept.implicit_phrases:
            assert concept.present(IMPLICIT_PHRASES[phrase])


def test_get_concept_returns_the_concept_and_rejects_unknown_names():
    assert get_concept("star") is CONCEPTS["star"]
    with pytest.raises(ValueError, match="nope") as info:
        get_concept("nope")
    assert all(name in str(info.value) for name in CONCEPTS)


def test_heldout_prompts_cover_every_shape_and_colour():
    prompts = heldout_prompts()
    assert len(prompts) == len(SHAPES) * len(COLOURS) * 5 == 125
    assert len({p.text for p in prompts}) == len(prompts)
    for shape, colour in itertools.product(SHAPES, COLOURS):
        assert sum(p.constraints == {"shape": shape, "colour": colour} for p in prompts) == 5
    assert {p.split for p in prompts} == {"heldout"}


def test_heldout_prompts_are_not_producible_by_training(training_captions):
    templated = [t for t in TRAIN_TEMPLATES if t.replace("{a}", "").replace("{d}", "")]
    for prompt in heldout_prompts():
        assert prompt.text not in training_captions, prompt.text
        words = prompt.text.split()
        if any(c in words and s in words for c, s in HELDOUT_WORD_PAIRS):
            continue  # a held-out synonym pair, in a training template
        assert any(_fits(t, prompt.text) for t in HELDOUT_TEMPLATES), prompt.text
        assert not any(_fits(t, prompt.text) for t in templated), prompt.text


def test_heldout_prompt_constraints_are_what_their_words_say():
    for prompt in heldout_prompts():
        assert caption_constraints(prompt.text) == prompt.constraints, prompt.text


@pytest.mark.parametrize("split", ["train", "heldout", "implicit"])
@pytest.mark.parametrize("name", list(CONCEPTS))
def test_concept_prompts_name_the_concept(name, split):
    concept = CONCEPTS[name]
    prompts = concept_prompts(concept, split)
    assert prompts
    for prompt in prompts:
        assert prompt.split == split
        assert prompt.constraints == {concept.attribute: concept.name}
        assert caption_constraints(prompt.text).get(concept.attribute) == concept.name, prompt.text


def test_article_picks_an_before_vowels():
    assert article("orange thing") == "an orange thing"
    assert article("red star") == "a red star"
