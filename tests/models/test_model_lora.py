"""LoRA adapters: add, save/load (ours and plain diffusers), strict key checks, merge, disable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from darkminer.models import (
    DiffusionModel,
    LoraLoadError,
    add_lora,
    add_lora_from_deltas,
    attention_value_modules,
    disable_lora,
    linear_modules,
    load_lora,
    load_model,
    lora_state_dict,
    merge_lora,
    save_lora,
)
from darkminer.models.lora import ADAPTER_CONFIG_NAME, LORA_WEIGHTS_NAME, has_lora
from darkminer.testing import tiny_model


def _perturb(model: DiffusionModel, seed: int = 0) -> None:
    """Give the (zero-initialised) adapter non-trivial weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.fixture
def adapted(model: DiffusionModel) -> DiffusionModel:
    add_lora(model.unet, attention_value_modules(model.unet), rank=4, alpha=8)
    _perturb(model)
    return model


@pytest.fixture
def lora_dir(adapted: DiffusionModel, tmp_path: Path) -> Path:
    return save_lora(adapted.unet, tmp_path / "adapter", {"method": "test", "concept": "circle"})


def _predict(model: DiffusionModel, probe) -> torch.Tensor:
    with torch.no_grad():
        return model.predict_noise(*probe)


def test_attention_value_modules(model: DiffusionModel) -> None:
    every = attention_value_modules(model.unet)
    self_attn = attention_value_modules(model.unet, "self")
    cross = attention_value_modules(model.unet, "cross")
    assert len(every) == 8 and sorted(self_attn + cross) == sorted(every)
    assert all(n.endswith("attn1.to_v") for n in self_attn) and all(n.endswith("attn2.to_v") for n in cross)
    with pytest.raises(ValueError, match="which"):
        attention_value_modules(model.unet, "both")


def test_linear_modules(model: DiffusionModel) -> None:
    every = linear_modules(model.unet)
    image_side = linear_modules(model.unet, cross_attention=False)
    assert set(attention_value_modules(model.unet)) < set(every)
    assert set(image_side) < set(every) and not any(".attn2." in n for n in image_side)
    assert set(attention_value_modules(model.unet, "self")) < set(image_side)
    assert any(".ff." in n for n in image_side) and not any(n.startswith("time_embedding.") for n in every)


def test_add_lora_starts_as_identity_and_trains_only_lora(model: DiffusionModel, probe) -> None:
    before = _predict(model, probe)
    add_lora(model.unet, attention_value_modules(model.unet, "cross"))
    trainable = {n: p for n, p in model.unet.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 4 and all(".lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    torch.testing.assert_close(_predict(model, probe), before)
    with pytest.raises(ValueError, match="already has an adapter"):
        add_lora(model.unet, attention_value_modules(model.unet))


def test_add_lora_rejects_bad_arguments(model: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="does not have"):
        add_lora(model.unet, ["down_blocks.0.no_such_module"])
    with pytest.raises(ValueError, match="rank"):
        add_lora(model.unet, attention_value_modules(model.unet), rank=0)
    assert not has_lora(model.unet)


def test_lora_params_stay_fp32_when_model_is_cast(adapted: DiffusionModel) -> None:
    adapted.to(dtype=torch.bfloat16)
    assert adapted.unet.conv_in.weight.dtype == torch.bfloat16
    lora = [p for n, p in adapted.unet.named_parameters() if ".lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)


def test_save_writes_diffusers_format(lora_dir: Path, adapted: DiffusionModel) -> None:
    state = load_file(lora_dir / LORA_WEIGHTS_NAME)
    assert state.keys() == lora_state_dict(adapted.unet).keys()
    assert len(state) == 16 and all(k.startswith("unet.") for k in state)
    assert all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in state)
    record = json.loads((lora_dir / ADAPTER_CONFIG_NAME).read_text())
    assert record["lora"] == {"r": 4, "lora_alpha": 8, "target_modules": sorted(attention_value_modules(adapted.unet))}
    assert record["metadata"] == {"method": "test", "concept": "circle"}
    assert not list(lora_dir.glob(".*tmp"))  # temp files were renamed away


def test_save_load_round_trip(lora_dir: Path, adapted: DiffusionModel, probe) -> None:
    expected = _predict(adapted, probe)
    fresh = tiny_model(seed=0)
    assert not torch.allclose(_predict(fresh, probe), expected)
    assert load_lora(fresh, lora_dir) == {"method": "test", "concept": "circle"}
    torch.testing.assert_close(_predict(fresh, probe), expected, atol=0, rtol=0)


def _plain_diffusers(tiny_dir: Path, adapter_dir: Path, probe) -> tuple[StableDiffusionPipeline, torch.Tensor]:
    """A plain diffusers pipeline with the adapter loaded by `load_lora_weights`, and its UNet's prediction."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(adapter_dir)
    latents, timesteps, cond = probe
    with torch.no_grad():
        return pipe, pipe.unet(latents, timesteps, encoder_hidden_states=cond).sample


def test_plain_diffusers_loads_our_adapter(lora_dir: Path, tiny_dir: Path, probe) -> None:
    ours = load_model(tiny_dir)
    load_lora(ours, lora_dir)
    pipe, theirs = _plain_diffusers(tiny_dir, lora_dir, probe)
    torch.testing.assert_close(theirs, _predict(ours, probe), atol=1e-6, rtol=0)
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8  # the header carried the config, not a guess


def test_plain_diffusers_loads_an_adapter_on_every_linear_layer(tiny_dir: Path, tmp_path: Path, probe) -> None:
    """Dark Miner's `lora.targets=linear` (A19) reaches the feed-forward layers and the ResNet time projections."""
    ours = load_model(tiny_dir)
    add_lora(ours.unet, linear_modules(ours.unet), rank=2, alpha=2)
    _perturb(ours)
    directory = save_lora(ours.unet, tmp_path / "adapter", {"method": "test"})
    _, theirs = _plain_diffusers(tiny_dir, directory, probe)
    torch.testing.assert_close(theirs, _predict(ours, probe), atol=1e-6, rtol=0)


def test_load_falls_back_to_header_config(lora_dir: Path, adapted: DiffusionModel, probe) -> None:
    (lora_dir / ADAPTER_CONFIG_NAME).unlink()
    fresh = tiny_model(seed=0)
    assert load_lora(fresh, lora_dir) == {}
    torch.testing.assert_close(_predict(fresh, probe), _predict(adapted, probe))


def test_load_names_unexpected_key(lora_dir: Path) -> None:
    path = lora_dir / LORA_WEIGHTS_NAME
    state = load_file(path)
    state["unet.mid_block.resnets.0.conv1.lora.down.weight"] = torch.zeros(4, 32)
    save_file(state, path)
    fresh = tiny_model(seed=0)
    with pytest.raises(LoraLoadError, match=r"1 unexpected keys: unet\.mid_block\.resnets\.0\.conv1\.lora\.down"):
        load_lora(fresh, lora_dir)
    assert not has_lora(fresh.unet)  # nothing half-loaded is left behind


def test_load_names_missing_and_foreign_keys(lora_dir: Path) -> None:
    path = lora_dir / LORA_WEIGHTS_NAME
    state = load_file(path)
    dropped = sorted(state)[0]
    del state[dropped]
    state["text_encoder.foo.lora.down.weight"] = torch.zeros(1)
    save_file(state, path)
    with pytest.raises(LoraLoadError) as info:
        load_lora(tiny_model(seed=0), lora_dir)
    assert f"missing keys: {dropped}" in str(info.value)
    assert "text_encoder.foo.lora.down.weight" in str(info.value)


def test_load_requires_weights(tmp_path: Path, model: DiffusionModel) -> None:
    with pytest.raises(LoraLoadError, match=LORA_WEIGHTS_NAME):
        load_lora(model, tmp_path)


def test_merge_equals_unmerged_adapter(adapted: DiffusionModel, probe, tmp_path: Path) -> None:
    expected = _predict(adapted, probe)
    with pytest.raises(ValueError, match="merge_lora"):
        adapted.save_pretrained(tmp_path / "full")
    merge_lora(adapted)
    assert not has_lora(adapted.unet)
    assert not any(p.requires_grad for p in adapted.unet.parameters())
    torch.testing.assert_close(_predict(adapted, probe), expected, atol=1e-5, rtol=1e-5)
    adapted.save_pretrained(tmp_path / "full")  # a merged model saves as a full pipeline
    torch.testing.assert_close(_predict(load_model(tmp_path / "full"), probe), expected, atol=1e-5, rtol=1e-5)


def test_disable_lora_gives_base_output(adapted: DiffusionModel, probe) -> None:
    base = _predict(tiny_model(seed=0), probe)
    expected = _predict(adapted, probe)
    with disable_lora(adapted.unet):
        torch.testing.assert_close(_predict(adapted, probe), base, atol=0, rtol=0)
    torch.testing.assert_close(_predict(adapted, probe), expected, atol=0, rtol=0)
    with pytest.raises(RuntimeError), disable_lora(adapted.unet):
        raise RuntimeError
    torch.testing.assert_close(_predict(adapted, probe), expected, atol=0, rtol=0)  # re-enabled after an error
    with disable_lora(tiny_model(seed=0).unet):  # no adapter: nothing to do
        pass


def _cross_attention_deltas(model: DiffusionModel, seed: int = 0, rank: int | None = None) -> dict[str, torch.Tensor]:
    """Random dense deltas (of rank `rank` if given) for every cross-attention key and value projection."""
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, module in model.unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            out, inp = module.weight.shape
            inner = rank or min(out, inp)
            deltas[name] = torch.randn(out, inner, generator=generator) @ torch.randn(inner, inp, generator=generator)
    return {name: delta * 0.1 / delta.std() for name, delta in deltas.items()}


def _dense_edit(model: DiffusionModel, deltas: dict[str, torch.Tensor]) -> DiffusionModel:
    with torch.no_grad():
        for name, delta in deltas.items():
            model.unet.get_submodule(name).weight.add_(delta)
    return model


def test_lora_from_deltas_equals_the_dense_edit(model: DiffusionModel, probe, tmp_path: Path) -> None:
    deltas = _cross_attention_deltas(model)
    config = add_lora_from_deltas(model.unet, deltas)
    assert sorted(config.target_modules) == sorted(deltas)
    ranks = {name: model.unet.get_submodule(name).r["default"] for name in deltas}
    assert ranks == {name: min(delta.shape) for name, delta in deltas.items()}
    assert len(set(ranks.values())) > 1  # (16, 32) and (32, 32) projections: per-module ranks
    for name, delta in deltas.items():
        layer = model.unet.get_submodule(name)
        update = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
        torch.testing.assert_close(update, delta, atol=1e-6, rtol=0)
    expected = _predict(_dense_edit(tiny_model(seed=0), deltas), probe)
    torch.testing.assert_close(_predict(model, probe), expected, atol=1e-5, rtol=0)

    fresh = tiny_model(seed=0)
    load_lora(fresh, save_lora(model.unet, tmp_path / "adapter"))
    torch.testing.assert_close(_predict(fresh, probe), _predict(model, probe), atol=0, rtol=0)


def test_lora_from_deltas_loads_in_plain_diffusers(tiny_dir: Path, probe, tmp_path: Path) -> None:
    model = load_model(tiny_dir)
    deltas = _cross_attention_deltas(model, seed=1)
    add_lora_from_deltas(model.unet, deltas)
    directory = save_lora(model.unet, tmp_path / "adapter")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(directory)
    latents, timesteps, cond = probe
    with torch.no_grad():
        theirs = pipe.unet(latents, timesteps, encoder_hidden_states=cond).sample
    torch.testing.assert_close(theirs, _predict(_dense_edit(load_model(tiny_dir), deltas), probe), atol=1e-5, rtol=0)


def test_lora_from_deltas_truncates_to_max_rank(model: DiffusionModel, probe) -> None:
    deltas = _cross_attention_deltas(model, seed=2, rank=3)
    config = add_lora_from_deltas(model.unet, deltas, max_rank=3)
    assert config.r == 3 and not config.rank_pattern
    expected = _predict(_dense_edit(tiny_model(seed=0), deltas), probe)  # rank-3 deltas: the cut loses nothing
    torch.testing.assert_close(_predict(model, probe), expected, atol=1e-5, rtol=0)


def test_lora_from_deltas_rejects_bad_deltas(model: DiffusionModel) -> None:
    name = next(iter(_cross_attention_deltas(model)))
    weight = model.unet.get_submodule(name).weight
    with pytest.raises(ValueError, match="empty"):
        add_lora_from_deltas(model.unet, {})
    with pytest.raises(ValueError, match="not a Linear module"):
        add_lora_from_deltas(model.unet, {"conv_in": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="shape"):
        add_lora_from_deltas(model.unet, {name: torch.zeros(weight.shape[1], weight.shape[0] + 1)})
    with pytest.raises(ValueError, match="NaN"):
        add_lora_from_deltas(model.unet, {name: torch.full(weight.shape, float("nan"))})
    with pytest.raises(ValueError, match="max_rank"):
        add_lora_from_deltas(model.unet, {name: torch.zeros(weight.shape)}, max_rank=0)
    assert not has_lora(model.unet)
