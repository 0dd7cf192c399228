"""Real-model families from the command line, on tiny random-weight stand-ins: SD 1.x and SD 2.x (v-prediction)
pipeline directories without a CLIP of their own, a single-file checkpoint with `--model-config`, and SDXL refused;
`--device`, `--dtype` and `--gradient-checkpointing`, recorded where the run is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from darkminer.cli import main
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_clip_dir, tiny_model_dir, tiny_single_file

BF16 = ["--device", "cpu", "--dtype", "bf16"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        "sd1": tiny_model_dir(root / "sd1", family="sd1", clip=False),
        "sd2": tiny_model_dir(root / "sd2", family="sd2", clip=False),
        "clip": tiny_clip_dir(root / "clip"),
        "single": tiny_single_file(root / "model.safetensors"),
    }


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"darkminer {command}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _erase(model: Path, out: Path, method: str, *extra: str) -> list[str]:
    argv = ["erase", "--model", str(model), "--method", method, "--concept", "cat", "--output-dir", str(out)]
    return [*argv, *extra, *TINY_METHOD_OVERRIDES[method]]


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("method", ["dark_miner", "esd"])
def test_erase_and_generate_in_bf16(models: dict[str, Path], family: str, method: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    extra = ["--clip", str(models["clip"])] if method == "dark_miner" else []
    assert main(_erase(models[family], run, method, *BF16, *extra, "--no-report")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["runtime"]["dtype"] == "bfloat16" and config["runtime"]["device"] == "cpu"
    adapter = load_file(run / "pytorch_lora_weights.safetensors")
    assert adapter and all(v.dtype == torch.float32 for v in adapter.values())  # LoRA stays fp32
    out = tmp_path / "images"
    argv = ["generate", "--model", str(models[family]), "--adapter", str(run), "--prompt", "a cat", "-n", "2"]
    assert main([*argv, "--steps", "2", *BF16, "--output-dir", str(out)]) == 0
    assert len(list(out.glob("p000_*.png"))) == 2
    assert json.loads((out / "config.json").read_text())["runtime"]["dtype"] == "bfloat16"


def test_generate_from_a_single_file_with_its_config(models: dict[str, Path], tmp_path: Path) -> None:
    argv = ["generate", "--model", str(models["single"]), "--model-config", str(models["sd1"]), "--prompt", "a cat"]
    assert main([*argv, "-n", "1", "--steps", "2", *BF16, "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "grid.png").is_file()


def test_sdxl_is_refused_in_one_line(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    for name in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        (tmp_path / name).mkdir()
    assert main(["generate", "--model", str(tmp_path), "--prompt", "a cat", "--output-dir", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys, "generate")
    assert "SDXL" in line and "SD 1.x and SD 2.x" in line


def test_dark_miner_without_clip_is_refused_before_any_work(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(_erase(models["sd1"], run, "dark_miner")) == 2
    assert "--clip" in _one_error_line(capsys, "erase")
    assert not run.exists()


def test_pickle_only_clip_directory_is_refused(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text((models["clip"] / "config.json").read_text())
    torch.save({}, clip / "pytorch_model.bin")
    assert main(_erase(models["sd1"], tmp_path / "run", "dark_miner", "--clip", str(clip))) == 2
    assert "safetensors" in _one_error_line(capsys, "erase")


def test_resuming_in_another_dtype_is_refused(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(_erase(models["sd1"], run, "esd", *BF16, "--no-report")) == 0
    assert main(_erase(models["sd1"], run, "esd", "--device", "cpu", "--dtype", "fp32", "--no-report")) == 2
    assert "dtype" in _one_error_line(capsys, "erase")
    # The same dtype under another spelling, and another chunk size, resume it.
    assert main(_erase(models["sd1"], run, "esd", "--dtype", "bfloat16", "--batch-size", "1", "--no-report")) == 0


def test_gradient_checkpointing_trains_the_same_adapter(models: dict[str, Path], tmp_path: Path) -> None:
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    assert main(_erase(models["sd1"], plain, "esd", "--no-report")) == 0
    assert main(_erase(models["sd1"], checkpointed, "esd", "--no-report", "--gradient-checkpointing")) == 0
    a, b = (load_file(p / "pytorch_lora_weights.safetensors") for p in (plain, checkpointed))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in b.items() if "lora.up" in k)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
