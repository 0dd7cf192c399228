"""Build ShapesWorld's CLIP-style BPE tokenizer (`vocab.json` + `merges.txt`, loadable by `CLIPTokenizer`).

The merges are learned with the `tokenizers` BPE trainer on the caption vocabulary (weighted so that every caption
word becomes one token) plus the 3000 most frequent English words shipped in `words.txt`, so that token-search
attacks search a real vocabulary. The vocabulary is laid out as CLIP's: the 256 byte-level symbols, the same with
the end-of-word suffix `</w>`, the merged symbols in merge order, then `<|startoftext|>` and `<|endoftext|>`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .captions import (
    COLOUR_WORDS,
    GENERIC_CAPTIONS,
    HELDOUT_TEMPLATES,
    IMPLICIT_PHRASES,
    SHAPE_WORDS,
    SOLID_WORDS,
    TRAIN_TEMPLATES,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def english_words() -> list[str]:
    """The 3000 most frequent English words (lower-case, alphabetic), most frequent first."""
    text = (resources.files("darkminer.toy") / "words.txt").read_text()
    return [w for w in text.split() if w]


def caption_words() -> set[str]:
    """Every word that ShapesWorld captions and evaluation prompts can contain."""
    texts = [*TRAIN_TEMPLATES, *HELDOUT_TEMPLATES, *GENERIC_CAPTIONS, *IMPLICIT_PHRASES]
    texts += [w for words in (*SHAPE_WORDS.values(), *COLOUR_WORDS.values()) for w in words]
    texts += [*SOLID_WORDS, "striped with in stripes shape thing object an"]
    words = set()
    for text in texts:
        words.update(text.replace("{a}", " ").replace("{d}", " ").split())
    return words


def filler_words() -> list[str]:
    """English words that carry no ShapesWorld meaning; captions are padded with them so the text encoder learns
    to ignore words it has no grounding for (held-out templates are made of such words)."""
    reserved = caption_words() | {"photo", "picture", "image", "drawing", "render"}
    return [w for w in english_words() if w not in reserved and len(w) > 1]


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_tokenizer(output_dir: str | Path, vocab_size: int = 6000, model_max_length: int = 32) -> Path:
    """Train the BPE merges and write a `CLIPTokenizer` directory.

    Args:
        output_dir: where `vocab.json`, `merges.txt` and `tokenizer_config.json` go.
        vocab_size: total vocabulary size including the 512 byte symbols and the two special tokens.
        model_max_length: the padded sequence length (CLIP uses 77; ShapesWorld prompts are short).

    Returns:
        The output directory.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    byte_chars = _bytes_to_unicode()
    corpus = []
    for word in sorted(caption_words()):
        corpus.extend([word] * 200)
    for rank, word in enumerate(english_words()):
        corpus.extend([word] * max(1, 20 - rank // 150))

    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        initial_alphabet=byte_chars,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]

    vocab: dict[str, int] = {}
    for symbol in [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m) for m in merges), BOS, EOS]:
        vocab.setdefault(symbol, len(vocab))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2)
    )
    return out
