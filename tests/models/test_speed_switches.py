"""The speed switches change how fast, not what: one UNet call for a circumventing step's targets and predictions
(adapters masked per row), one sampler call for verification's x_c and x_r, channels-last and torch.compile."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from darkminer.cli import main
from darkminer.config import load_config
from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.method import MinedEmbedding
from darkminer.models import add_lora, attention_value_modules, disable_lora, lora_row_mask
from darkminer.testing import TINY_METHOD_OVERRIDES, tiny_model, tiny_model_dir


def _adapted_model(seed: int = 0):
    """A tiny model whose LoRA does something (B is zero at initialisation)."""
    model = tiny_model(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        add_lora(model.unet, attention_value_modules(model.unet), rank=2)
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)
    return model


def test_masked_rows_are_the_frozen_original_and_train_nothing():
    model = _adapted_model()
    x, t = torch.randn(4, *model.latent_shape), torch.tensor([10, 200, 500, 900])
    cond = model.encode_prompt(["a star", "a photo", "a red circle", "a blue square"])
    with torch.no_grad(), disable_lora(model.unet):
        frozen = model.predict_noise(x, t, cond)
    with torch.no_grad():
        adapted = model.predict_noise(x, t, cond)
    assert (frozen - adapted).abs().max() > 1e-3  # the adapter matters
    rows = torch.tensor([False, True, False, True])
    params = [p.requires_grad_(True) for n, p in model.unet.named_parameters() if "lora_" in n]
    with lora_row_mask(model.unet, rows):
        mixed = model.predict_noise(x, t, cond)
    torch.testing.assert_close(mixed[~rows], frozen[~rows], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[rows], adapted[rows], rtol=0, atol=1e-5)
    mixed[~rows].square().sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in params)
    with pytest.raises(ValueError, match="rows"), lora_row_mask(model.unet, rows[:3]):
        model.predict_noise(x, t, cond)


def _miner(**overrides) -> DarkMiner:
    extra = [f"{k}={v}" for k, v in overrides.items()]
    return DarkMiner(load_config(DarkMinerConfig, None, [*TINY_METHOD_OVERRIDES["dark_miner"], *extra]))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_call_circumventing_trains_what_two_calls_train(checkpointing):
    """Same losses and the same adapter after a few steps (float rounding apart), also when gradient checkpointing
    runs the masked layers again in the backward pass."""
    finals, histories = [], []
    for one_call in (False, True):
        model = _adapted_model()
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
        embedding = model.prompt_token_embeddings("a star", 4).float()
        latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
        pool = [MinedEmbedding("star", 0, embedding, latents)]
        miner = _miner(**{"circumvent.one_call": one_call, "circumvent.steps": 4})
        histories.append(miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0))
        finals.append({n: p.detach().clone() for n, p in model.unet.named_parameters() if "lora_" in n})
    for key in ("l_c", "l_p"):
        torch.testing.assert_close(
            torch.tensor(histories[0][key]), torch.tensor(histories[1][key]), rtol=1e-4, atol=1e-6
        )
    for name, value in finals[0].items():
        torch.testing.assert_close(finals[1][name], value, rtol=1e-4, atol=1e-5)


def test_one_batch_verification_scores_what_two_calls_score():
    model = _adapted_model()
    embedding = model.prompt_token_embeddings("a star", 4).float()
    pool_images = torch.rand(4, 3, 32, 32)
    scores = [
        _miner(**{"verify.one_batch": one})._verify(
            model, embedding, pool_images, torch.arange(2), torch.Generator().manual_seed(0)
        )
        for one in (False, True)
    ]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


def test_channels_last_and_compile_keep_the_predictions_and_the_parameter_names(monkeypatch):
    model = tiny_model(0)
    x, t, cond = torch.randn(2, *model.latent_shape), torch.tensor([10, 500]), model.encode_prompt(["a", "b"])
    with torch.no_grad():
        reference = model.predict_noise(x, t, cond)
    names = list(model.unet.state_dict())
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: compiled.append(type(self).__name__))
    model.speed_up(compile="blocks", channels_last=True)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_noise(x, t, cond), reference, rtol=0, atol=1e-5)
    assert list(model.unet.state_dict()) == names
    assert len(compiled) == len(model.unet.down_blocks) + 1 + len(model.unet.up_blocks)
    assert model.runtime()["compile"] == "blocks" and model.runtime()["channels_last"] is True
    compiled.clear()
    tiny_model(0).speed_up(compile="unet")
    assert compiled == ["UNet2DConditionModel"]


def test_the_switches_reach_the_model_from_the_command_line(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "sd")
    out = tmp_path / "run"
    command = ["erase", "--model", str(model_dir), "--method", "esd", "--concept", "star", "--output-dir", str(out)]
    assert main([*command, "--device", "cpu", "--channels-last", "--no-report", "steps=2", "ddim_steps=2"]) == 0
    runtime = json.loads((out / "config.json").read_text())["runtime"]
    assert runtime["channels_last"] is True and runtime["compile"] == "off"
    with pytest.raises(SystemExit) as refused:  # argparse names the choices
        main([*command, "--compile", "everything"])
    assert refused.value.code == 2


def test_the_switches_that_win_on_cpu_are_on_by_default():
    config = DarkMinerConfig()
    assert config.verify.one_batch and config.circumvent.one_call
    assert not dataclasses.replace(config.circumvent, one_call=False).one_call


def test_a_compiled_unet_circumvents_in_two_calls(monkeypatch):
    """A compiled graph would ignore the row mask's hooks, so one_call is not used there."""
    from darkminer.methods.dark_miner import method

    monkeypatch.setattr(method, "lora_row_mask", lambda *a: pytest.fail("the row mask on a compiled UNet"))
    model = _adapted_model()
    model.compiled = "unet"  # as `speed_up(compile="unet")` records it
    embedding = model.prompt_token_embeddings("a star", 4).float()
    pool = [MinedEmbedding("star", 0, embedding, torch.randn(2, *model.latent_shape))]
    _miner(**{"circumvent.steps": 2})._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
