"""A22: circumventing a loop's c again while verification still scores it at or above tau."""

from __future__ import annotations

import json
import time

import pytest

from darkminer.config import load_config
from darkminer.methods.base import ErasureRequest
from darkminer.methods.dark_miner import CircumventConfig, DarkMiner, DarkMinerConfig
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model
from darkminer.training.checkpoint import RunConflictError, _config_hash


def _run(tmp_path, rounds: int, scores: list[float]) -> tuple[DarkMiner, list[dict]]:
    """One loop with verify scores fed from `scores` (the loop's own first, then one after each round)."""
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "verify.tau=0.5", f"circumvent.rounds={rounds}"]
    miner = DarkMiner(load_config(DarkMinerConfig, None, overrides))
    fed = iter(scores)
    miner._verify = lambda *args, **kwargs: next(fed)
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    return miner, [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def test_rounds_go_on_while_the_circumvented_c_still_scores_above_tau(tmp_path):
    miner, (record,) = _run(tmp_path, rounds=4, scores=[0.9, 0.8, 0.3])
    assert record["round_scores"] == [0.8, 0.3]  # the third score is below tau: no third round
    assert len(record["circumvent"]["l_c"]) == 2 * miner.config.circumvent.steps


def test_the_verifications_between_rounds_are_timed_apart_from_circumventing(tmp_path):
    def slow_score(*args, **kwargs):
        time.sleep(0.3)
        return 0.9

    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "verify.tau=0.5", "circumvent.rounds=2"]
    miner = DarkMiner(load_config(DarkMinerConfig, None, overrides))
    miner._verify = slow_score
    miner.erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert record["reverify_seconds"] >= 0.3  # one verification between the two rounds


def test_the_last_round_is_not_verified_again(tmp_path):
    miner, (record,) = _run(tmp_path, rounds=2, scores=[0.9, 0.8])
    assert record["round_scores"] == [0.8]
    assert len(record["circumvent"]["l_c"]) == 2 * miner.config.circumvent.steps


def test_one_round_is_the_paper_and_logs_no_round_scores(tmp_path):
    miner, (record,) = _run(tmp_path, rounds=1, scores=[0.9])
    assert "round_scores" not in record and "reverify_seconds" not in record
    assert len(record["circumvent"]["l_c"]) == miner.config.circumvent.steps


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="circumvent.rounds"):
        CircumventConfig(rounds=0)


def test_a_run_recorded_before_rounds_existed_resumes(tmp_path):
    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1"]
    DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
        tiny_model(), ErasureRequest(concepts=["star"]), tmp_path
    )
    # what a run of the code before the field wrote: its config and its checkpoints' config hash without it
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["config"]["circumvent"]["rounds"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    old_hash = _config_hash(recorded)
    for manifest in tmp_path.glob("checkpoint-*/checkpoint.json"):
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "config_hash": old_hash}))
    longer = load_config(DarkMinerConfig, None, [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=2"])
    with pytest.raises(RunConflictError, match="max_loops"):  # another max_loops is still another run
        DarkMiner(longer).erase(tiny_model(), ErasureRequest(concepts=["star"]), tmp_path)
    result = DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(
        tiny_model(), ErasureRequest(concepts=["star"]), tmp_path
    )
    assert len(result.history) == 1  # the finished loop was read back, not run again
