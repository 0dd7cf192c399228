"""A24: the concept's texts enter the pool, and are circumvented, before the first loop."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig
from darkminer.methods.prompts import prompt_templates
from darkminer.models import load_lora
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model

_TINY = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=2", "circumvent.images_per_embedding=1"]


def _miner(*overrides: str) -> DarkMiner:
    return DarkMiner(load_config(DarkMinerConfig, None, [*_TINY, *overrides]))


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _assert_same_adapter(run_dir, reference_dir) -> None:
    again, whole = (load_file(d / "pytorch_lora_weights.safetensors") for d in (run_dir, reference_dir))
    assert whole.keys() == again.keys()
    for key in whole:
        torch.testing.assert_close(again[key], whole[key])


def test_the_texts_enter_the_pool_before_the_first_loop(tmp_path):
    miner = _miner("circumvent.prompt_steps=3")
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    texts = prompt_templates(miner._world, "star")
    first = _log(tmp_path)[0]
    assert first["loop"] == -1 and first["texts"] == len(texts) and len(first["circumvent"]["l_c"]) == 3
    _, pool, _ = miner._resume(tiny_model(), SimpleNamespace(latest=lambda: (2, tmp_path / "checkpoint-2")))
    seeded = [entry for entry in pool if entry.loop == -1]
    assert [entry.template for entry in seeded] == texts
    assert all(entry.latents.shape[0] == 1 for entry in seeded)
    assert all(entry.loop >= 0 for entry in pool[len(seeded) :])


def test_the_loops_draw_what_they_draw_without_the_texts(tmp_path):
    """With steps too small to move the adapters, the first loop mines the same embedding after the texts' stage as
    without it: the stage draws from its own generator and leaves the loops' draws as they were."""
    runs = {}
    for name, extra in {"off": [], "on": ["circumvent.prompt_steps=2"]}.items():
        miner = _miner(*extra, "max_loops=1", "circumvent.lr=1e-30")
        miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / name)
        runs[name] = next(r for r in _log(tmp_path / name) if r.get("loop") == 0)
    for key in ("mining_loss", "score"):
        assert runs["on"][key] == pytest.approx(runs["off"][key], rel=1e-6)
    assert runs["on"]["score"] != 0.0


def test_the_texts_move_the_adapters(tmp_path):
    miner = _miner("circumvent.prompt_steps=2", "max_loops=1", "verify.tau=1.0", "verify.patience=5")
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    model = tiny_model()
    load_lora(model, tmp_path)
    moved = [p for n, p in model.unet.named_parameters() if "lora_B" in n]
    assert moved and any(bool(torch.any(p != 0)) for p in moved)


def test_negative_prompt_steps_are_refused():
    with pytest.raises(ValueError, match="prompt_steps"):
        CircumventConfig(prompt_steps=-1)


def test_the_texts_steps_decay_at_a_loop_s_share(monkeypatch):
    """prompt_steps twice a loop's steps: the learning rate decays at twice a loop's lr_decay_step."""
    from darkminer.methods.dark_miner import method
    from darkminer.methods.dark_miner.method import MinedEmbedding
    from darkminer.models import add_lora, attention_value_modules

    decays = []
    monkeypatch.setattr(method, "_step_lr", lambda base, step, decay_step, decay: decays.append(decay_step) or base)
    model = tiny_model()
    add_lora(model.unet, attention_value_modules(model.unet), rank=2, alpha=2.0)
    miner = _miner("circumvent.steps=4", "circumvent.lr_decay_step=3")
    entry = MinedEmbedding("star", -1, model.prompt_token_embeddings("a star photo", 4), torch.randn(2, 4, 8, 8))
    miner._circumvent(model, [entry], torch.Generator().manual_seed(0), None, 0, steps=8, uniform=True)
    miner._circumvent(model, [entry], torch.Generator().manual_seed(0), None, 0)
    assert decays == [6] * 8 + [3] * 4


def test_a_run_killed_after_the_texts_resumes_from_checkpoint_0(tmp_path, monkeypatch):
    """The texts' stage is checkpointed: a run killed in its first loop does not circumvent them again, and ends
    with the adapter of an uninterrupted run."""
    overrides = ("circumvent.prompt_steps=3", "max_loops=1")
    _miner(*overrides).erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "whole")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    crashing = _miner(*overrides)
    monkeypatch.setattr(crashing, "_mine", killed)
    with pytest.raises(KeyboardInterrupt):
        crashing.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "killed")
    assert (tmp_path / "killed" / "checkpoint-0").is_dir()

    resumed = _miner(*overrides)
    monkeypatch.setattr(resumed, "_circumvent_prompts", killed)
    resumed.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "killed")
    _assert_same_adapter(tmp_path / "killed", tmp_path / "whole")
    assert [r["loop"] for r in _log(tmp_path / "killed")] == [-1, 0]


def test_a_fresh_start_drops_the_records_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    (tmp_path / "log.jsonl").write_text(json.dumps({"loop": -1, "texts": 20}) + "\n")
    _miner("circumvent.prompt_steps=2", "max_loops=1").erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    assert [r["loop"] for r in _log(tmp_path)] == [-1, 0]


def test_a_run_killed_during_the_texts_stage_starts_it_again(tmp_path, monkeypatch):
    """Killed after the texts' images are drawn and before checkpoint-0, the run has nothing to resume: it
    circumvents the texts from the start and ends with the adapter of an uninterrupted run, its log holding the
    stage once."""
    overrides = ("circumvent.prompt_steps=3", "max_loops=1")
    _miner(*overrides).erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "whole")

    crashing = _miner(*overrides)

    def killed_midway(model, pool, generator, run, *args, **kwargs):
        run.log(loop=-1, partial=True)  # what a killed run may leave behind
        raise KeyboardInterrupt

    monkeypatch.setattr(crashing, "_circumvent", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        crashing.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "killed")
    assert not list((tmp_path / "killed").glob("checkpoint-*"))

    _miner(*overrides).erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "killed")
    _assert_same_adapter(tmp_path / "killed", tmp_path / "whole")
    log = _log(tmp_path / "killed")
    assert [r["loop"] for r in log] == [-1, 0] and "partial" not in log[0]


def test_texts_longer_than_the_mined_embedding_that_mining_starts_from_are_named_in_a_warning(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a {concept}\na very long and detailed photo of a {concept} in the park\n")
    miner = _miner("mining.init=concept_prompts", "max_loops=1", f"mining.prompt_file={texts}")
    with pytest.warns(UserWarning, match=r"1 of 2 concept texts .* longer than mining.length=4 .*in the park"):
        miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "run")


def test_the_texts_enter_the_pool_whole_beside_a_shorter_mined_embedding(tmp_path):
    """A c of 4 tokens (CCE's length) does not cut the texts of the texts' stage: each is as long as it needs, the
    mined c keeps mining.length, and the run resumes a pool of both lengths."""
    texts = tmp_path / "texts.txt"
    texts.write_text("a {concept}\na big red {concept}\n")
    miner = _miner("circumvent.prompt_steps=2", "mining.init=prompt", f"mining.prompt_file={texts}")
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "run")
    model = tiny_model()
    _, pool, _ = miner._resume(model, SimpleNamespace(latest=lambda: (2, tmp_path / "run" / "checkpoint-2")))
    assert model.token_count("a big red star") == 6
    assert [entry.embedding.shape[1] for entry in pool] == [4, 6, 4, 4]
    torch.testing.assert_close(pool[1].embedding, model.prompt_token_embeddings("a big red star", 6).float())


@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        ("a {concept}", ["circumvent.prompt_steps=1"]),  # the text fits
        ("a very long and detailed photo of a {concept} in the park", ["circumvent.prompt_steps=1"]),  # never cut
        ("a very long and detailed photo of a {concept} in the park", ["mining.init=prompt"]),  # no text is used
        (  # c holds the whole encoding
            "a very long and detailed photo of a {concept} in the park",
            ["circumvent.prompt_steps=1", "mining.embedding_space=conditioning"],
        ),
    ],
)
def test_no_warning_when_no_text_is_cut(tmp_path, text, overrides):
    texts = tmp_path / "texts.txt"
    texts.write_text(text + "\n")
    miner = _miner(*overrides, "max_loops=1", f"mining.prompt_file={texts}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path / "run")
    assert not [w for w in caught if "concept texts are longer" in str(w.message)]
