"""`darkminer speed` on the tiny architecture: every stage timed against its floor, written as JSON. The figures
themselves are a benchmark's to print (docs/performance.md), not a unit test's to assert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from darkminer.cli import main
from darkminer.commands import speed
from darkminer.commands.speed import SpeedConfig
from darkminer.config import ConfigError


def test_speed_writes_every_stage_with_its_floor(tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed.json"
    argv = ["speed", "--architecture", "tiny", "--device", "cpu", "--steps", "1", "4", "--repeats", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["dtype"] == "float32"
    for stage in ("mining", "circumventing", "sampling"):
        row = figures[stage]
        assert row["seconds"] > 0 and row["floor_seconds"] > 0 and row["tflops"] > 0
        assert row["ratio"] == pytest.approx(row["seconds"] / row["floor_seconds"])
    assert figures["verification"]["seconds"] > 0 and figures["projected_hours"] > 0
    printed = capsys.readouterr().out
    assert "mining step" in printed and "projected paper-setting run" in printed


def test_speed_times_each_switch_off_and_on(tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed.json"
    argv = ["speed", "--architecture", "tiny", "--device", "cpu", "--steps", "1", "4", "--repeats", "2"]
    assert main([*argv, "--switches", "one_call", "one_batch", "channels_last", "--json", str(out)]) == 0
    switches = json.loads(out.read_text())["switches"]
    assert list(switches) == ["one_call", "one_batch", "channels_last"]
    for row in switches.values():
        assert row["off_seconds"] > 0 and row["on_seconds"] > 0
        assert row["speedup"] == pytest.approx(row["off_seconds"] / row["on_seconds"])
    assert "| one_batch | one verification |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": "sd3"}, "--architecture 'sd3'"),
        ({"steps": (5, 5)}, "first < second"),
        ({"switches": ["fast"]}, "--switches 'fast'"),
    ],
)
def test_speed_config_is_checked(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpeedConfig(**overrides)


def test_a_time_per_step_of_zero_or_less_is_refused(monkeypatch) -> None:
    """On a busy machine the higher step count can time faster; the difference must not become a figure."""
    times = iter([0.30, 0.20, 0.10, 0.25])  # timed at 1 and 2 steps, then the floor at 1 and 2 steps
    monkeypatch.setattr(speed, "_seconds", lambda run, device: next(times))
    with pytest.raises(ConfigError, match="2 steps timed no slower than 1 .*widen --steps or raise --repeats"):
        speed._per_step_pair(lambda n: None, lambda n: None, (1, 2), torch.device("cpu"), repeats=1)
