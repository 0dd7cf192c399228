"""Run directories: config conflicts, atomic checkpoints with a total limit, the JSON-lines log, finite-loss checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from darkminer.training.checkpoint import (
    CONFIG_NAME,
    LOG_NAME,
    NonFiniteLossError,
    RunConflictError,
    RunDirectory,
    check_finite,
    load_tensors,
    save_tensors,
)

CONFIG = {"method": "dark_miner", "config": {"mining": {"steps": 10, "lr": 0.1}, "seed": 0}}


def _write_marker(text: str):
    def write(directory: Path) -> None:
        (directory / "state.txt").write_text(text)

    return write


def test_writes_the_resolved_config(tmp_path: Path):
    run = RunDirectory(tmp_path / "run", CONFIG)
    assert json.loads((tmp_path / "run" / CONFIG_NAME).read_text()) == CONFIG
    assert run.config == CONFIG
    assert run.latest() is None and run.checkpoints() == []


def test_same_config_reopens_the_run(tmp_path: Path):
    RunDirectory(tmp_path, CONFIG)
    run = RunDirectory(tmp_path, json.loads(json.dumps(CONFIG)))
    assert run.config == CONFIG


def test_tuples_and_lists_count_as_the_same_config(tmp_path: Path):
    RunDirectory(tmp_path, {"concepts": ("star",)})
    RunDirectory(tmp_path, {"concepts": ["star"]})


def test_different_config_is_a_conflict_naming_the_key_and_the_fix(tmp_path: Path):
    RunDirectory(tmp_path, CONFIG)
    changed = {"method": "dark_miner", "config": {"mining": {"steps": 20, "lr": 0.1}, "seed": 0}}
    with pytest.raises(RunConflictError) as info:
        RunDirectory(tmp_path, changed)
    message = str(info.value)
    assert "config.mining.steps" in message
    assert "config.mining.lr" not in message and "config.seed" not in message
    assert "resume" in message and "--output-dir" in message and "fresh" in message
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == CONFIG  # the original is untouched


def test_added_key_is_a_conflict(tmp_path: Path):
    RunDirectory(tmp_path, CONFIG)
    with pytest.raises(RunConflictError, match="alternative"):
        RunDirectory(tmp_path, {**CONFIG, "alternative": "circle"})


def test_a_field_added_since_the_run_started_reads_as_its_default(tmp_path: Path):
    """A run recorded before `mining.restarts` existed resumes, checkpoints included, while the field keeps its
    default; set to anything else, it is another run."""
    old = RunDirectory(tmp_path, CONFIG)
    old.save_checkpoint(3, _write_marker("step 3"))
    old.close()
    defaults = {"method": "dark_miner", "config": {"mining": {"steps": 0, "lr": 0.0, "restarts": 1}, "seed": 0}}
    grown = {"method": "dark_miner", "config": {"mining": {"steps": 10, "lr": 0.1, "restarts": 1}, "seed": 0}}
    resumed = RunDirectory(tmp_path, grown, defaults=defaults)
    assert resumed.latest() == (3, tmp_path / "checkpoint-3")
    resumed.close()
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == CONFIG  # the record is kept as it was
    other = {"method": "dark_miner", "config": {"mining": {"steps": 10, "lr": 0.1, "restarts": 2}, "seed": 0}}
    with pytest.raises(RunConflictError, match="config.mining.restarts"):
        RunDirectory(tmp_path, other, defaults=defaults)


def test_checkpoints_keep_only_the_total_limit(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG, total_limit=2)
    for step in (1, 2, 3, 10):
        path = run.save_checkpoint(step, _write_marker(f"step {step}"))
        assert path == tmp_path / f"checkpoint-{step}"
        assert (path / "state.txt").read_text() == f"step {step}"
    assert [step for step, _ in run.checkpoints()] == [3, 10]  # numeric, not lexical, order
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-3"]
    assert run.latest() == (10, tmp_path / "checkpoint-10")


def test_no_limit_keeps_every_checkpoint(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG, total_limit=None)
    for step in range(1, 5):
        run.save_checkpoint(step, _write_marker(str(step)))
    assert [step for step, _ in run.checkpoints()] == [1, 2, 3, 4]


def test_saving_the_same_step_again_replaces_it(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG)
    run.save_checkpoint(5, _write_marker("old"))
    run.save_checkpoint(5, _write_marker("new"))
    assert (tmp_path / "checkpoint-5" / "state.txt").read_text() == "new"
    assert not (tmp_path / "checkpoint-5.tmp").exists()


def test_a_failing_write_leaves_the_previous_checkpoint_intact(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG, total_limit=1)
    run.save_checkpoint(1, _write_marker("good"))

    def crash(directory: Path) -> None:
        (directory / "state.txt").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        run.save_checkpoint(2, crash)
    assert not (tmp_path / "checkpoint-2").exists()
    assert {p.name for p in tmp_path.glob("checkpoint-*")} <= {"checkpoint-1", "checkpoint-2.tmp"}
    assert run.latest() == (1, tmp_path / "checkpoint-1")
    assert (tmp_path / "checkpoint-1" / "state.txt").read_text() == "good"
    # A retry of the same step succeeds over the leftover temporary folder.
    run.save_checkpoint(2, _write_marker("retried"))
    assert run.latest() == (2, tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-2.tmp").exists()


def test_log_read_and_truncate(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG)
    assert run.read_log() == []
    for step in range(5):
        run.log(step=step, loss=0.5 * step, stage="mining")
    records = run.read_log()
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert all("time" in r and r["stage"] == "mining" for r in records)
    assert records[2]["loss"] == 1.0
    assert len((tmp_path / LOG_NAME).read_text().splitlines()) == 5

    run.truncate_log(lambda r: r["step"] < 3)
    assert [r["step"] for r in run.read_log()] == [0, 1, 2]
    run.log(step=3, loss=0.0)
    assert [r["step"] for r in run.read_log()] == [0, 1, 2, 3]
    assert not (tmp_path / (LOG_NAME + ".tmp")).exists()


def test_log_accepts_non_json_values(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG)
    run.log(path=tmp_path, values=(1, 2))
    record = run.read_log()[0]
    assert record["path"] == str(tmp_path) and record["values"] == [1, 2]


def test_check_finite_passes_finite_terms():
    check_finite("mining", 3, {"loss": torch.tensor(1.0), "reg": torch.tensor([0.0, 2.0])}, None)


def test_check_finite_names_stage_step_terms_and_last_checkpoint(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG)
    run.save_checkpoint(40, _write_marker("ok"))
    terms = {"l_c": torch.tensor(float("nan")), "l_p": torch.tensor(0.25)}
    with pytest.raises(NonFiniteLossError) as info:
        check_finite("circumvent", 42, terms, run)
    message = str(info.value)
    for part in ("circumvent", "42", "l_c=nan", "l_p=0.25", str(tmp_path / "checkpoint-40")):
        assert part in message, part


def test_check_finite_without_a_checkpoint_says_so(tmp_path: Path):
    for run in (None, RunDirectory(tmp_path, CONFIG)):
        with pytest.raises(NonFiniteLossError, match="no checkpoint") as info:
            check_finite("all_but_one", 0, {"guidance": torch.tensor(float("inf"))}, run)
        assert "all_but_one" in str(info.value) and "guidance=inf" in str(info.value)


def test_non_finite_loss_error_is_a_floating_point_error():
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_save_and_load_tensors_round_trip(tmp_path: Path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, requires_grad=True)}
    save_tensors(tmp_path / "x.safetensors", tensors, metadata={"step": "3"})
    loaded = load_tensors(tmp_path / "x.safetensors")
    torch.testing.assert_close(loaded["a"], tensors["a"])
    torch.testing.assert_close(loaded["b"], tensors["b"].detach())
    assert not (tmp_path / "x.safetensors.tmp").exists()


def test_check_finite_accepts_vector_terms():
    # Regression: formatting a per-sample term used to raise "only one element tensors can be converted".
    with pytest.raises(NonFiniteLossError, match="per_sample=nan"):
        check_finite("mining", 7, {"per_sample": torch.tensor([0.5, float("nan")])}, None)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG, total_limit=None)
    run.save_checkpoint(1, _write_marker("one"))
    run.save_checkpoint(2, _write_marker("two and more"))
    (tmp_path / "checkpoint-2" / "state.txt").write_text("tw")  # truncated by a full disk, say
    with pytest.warns(UserWarning, match="checkpoint-2 is damaged"):
        assert run.latest() == (1, tmp_path / "checkpoint-1")


def test_checkpoints_of_another_config_are_refused_without_config_json(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG)
    run.save_checkpoint(3, _write_marker("x"))
    run.close()
    (tmp_path / CONFIG_NAME).unlink()
    other = {**CONFIG, "config": {**CONFIG["config"], "seed": 1}}
    with pytest.raises(RunConflictError, match="checkpoint-3 was written by a run with another config"):
        RunDirectory(tmp_path, other)
    assert not (tmp_path / CONFIG_NAME).exists()
    assert RunDirectory(tmp_path, CONFIG).latest() == (3, tmp_path / "checkpoint-3")  # its own config resumes it


def test_a_run_directory_is_locked_for_other_processes_only(tmp_path: Path):
    import subprocess
    import sys

    run = RunDirectory(tmp_path, CONFIG)
    RunDirectory(tmp_path, CONFIG).close()  # the same process may reopen it
    probe = "import sys; from darkminer.training.checkpoint import RunDirectory; RunDirectory(sys.argv[1], {})"
    refused = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode != 0 and "RunLockedError" in refused.stderr
    assert f"process {os.getpid()}" in refused.stderr
    run.close()
    # Released: another process may take it now (its empty config differs from ours, which is the next check).
    taken = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert "RunLockedError" not in taken.stderr and "RunConflictError" in taken.stderr


def test_non_finite_loss_advice_does_not_resume_into_the_same_failure(tmp_path: Path):
    run = RunDirectory(tmp_path, CONFIG)
    run.save_checkpoint(2, _write_marker("x"))
    with pytest.raises(NonFiniteLossError) as info:
        check_finite("mining", 7, {"l_m": torch.tensor(float("nan"))}, run)
    assert "new --output-dir" in str(info.value) and "re-run the same command to resume" not in str(info.value)
