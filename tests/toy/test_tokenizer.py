"""ShapesWorld's BPE tokenizer: a standard CLIPTokenizer directory in which every caption word is one token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from darkminer.toy.tokenizer import BOS, EOS, build_tokenizer, caption_words, english_words


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tokenizer_dir)


def test_build_writes_the_clip_tokenizer_files(tokenizer_dir: Path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tokenizer_dir / name).is_file(), name
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    assert vocab[BOS] == len(vocab) - 2 and vocab[EOS] == len(vocab) - 1
    assert (tokenizer_dir / "merges.txt").read_text().startswith("#version")


def test_loads_as_a_clip_tokenizer(tokenizer: CLIPTokenizer):
    assert isinstance(tokenizer, CLIPTokenizer)
    assert tokenizer.model_max_length == 32


def test_special_token_ids(tokenizer: CLIPTokenizer, tokenizer_dir: Path):
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    assert tokenizer.bos_token_id == vocab[BOS] == tokenizer.convert_tokens_to_ids(BOS)
    assert tokenizer.eos_token_id == vocab[EOS] == tokenizer.convert_tokens_to_ids(EOS)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    ids = tokenizer("a red star", padding="max_length").input_ids
    assert len(ids) == 32
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_every_caption_word_is_one_token(tokenizer: CLIPTokenizer):
    words = sorted(w for w in caption_words() if w.isalpha())
    assert len(words) > 50
    split = {w: tokenizer.tokenize(w) for w in words if len(tokenizer.tokenize(w)) != 1}
    assert not split, split


@pytest.mark.parametrize(
    "caption",
    ["A Red Star", "a photo of a striped crimson pentagram", "an azure disk with stripes", "look at a sheriff badge"],
)
def test_encode_decode_round_trip(tokenizer: CLIPTokenizer, caption: str):
    ids = tokenizer(caption).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(caption.split()) + 2  # one token per word
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == caption.lower()


def test_most_english_words_are_single_tokens(tokenizer: CLIPTokenizer):
    words = english_words()
    assert len(words) >= 1000
    single = sum(len(tokenizer.tokenize(w)) == 1 for w in words)
    assert single / len(words) >= 0.95
