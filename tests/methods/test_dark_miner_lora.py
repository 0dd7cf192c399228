"""Where Dark Miner's adapters go (lora.targets): attention values (A7), or the cross-attention keys and values or
whole sets of Linear layers (A19)."""

import pytest
import torch

from darkminer.methods.dark_miner import DarkMiner, DarkMinerConfig
from darkminer.methods.dark_miner.config import CircumventConfig, LoraSettings, MiningConfig
from darkminer.methods.dark_miner.method import MinedEmbedding, _lora_targets
from darkminer.models import add_lora, attention_value_modules, linear_modules
from darkminer.testing import tiny_model


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("all", lambda u: attention_value_modules(u)),
        ("cross", lambda u: attention_value_modules(u, "cross")),
        ("noxattn", lambda u: linear_modules(u, cross_attention=False)),
        ("linear", lambda u: linear_modules(u)),
    ],
)
def test_targets_name_the_module_sets(targets, expected):
    unet = tiny_model().unet
    assert _lora_targets(unet, targets) == expected(unet)


def test_cross_kv_names_every_cross_attention_key_and_value_and_nothing_else():
    unet = tiny_model().unet
    names = _lora_targets(unet, "cross_kv")
    keys = [n for n in names if n.endswith(".attn2.to_k")]
    values = [n for n in names if n.endswith(".attn2.to_v")]
    assert keys and len(keys) == len(values) == len(names) // 2
    assert values == attention_value_modules(unet, "cross")


def test_unknown_targets_are_refused():
    with pytest.raises(ValueError, match="lora.targets"):
        LoraSettings(targets="convs")


def test_circumventing_trains_the_image_side_layers_of_a_noxattn_adapter():
    model = tiny_model()
    torch.manual_seed(0)
    add_lora(model.unet, _lora_targets(model.unet, "noxattn"), rank=2, alpha=2.0)
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters() if "lora_B" in n}
    circumvent = CircumventConfig(steps=2, batch_size=2)
    miner = DarkMiner(DarkMinerConfig(mining=MiningConfig(length=4), circumvent=circumvent))
    start = model.prompt_token_embeddings("a star photo", 4)
    pool = [MinedEmbedding("star", 0, start, torch.randn(3, 4, 8, 8))]
    miner._circumvent(model, pool, torch.Generator().manual_seed(0), None, 0)
    moved = {n for n, p in model.unet.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])}
    assert any(".ff." in n for n in moved) and not any(".attn2." in n for n in before)


def test_an_erase_with_adapters_on_every_linear_layer_reloads_as_it_ran(tmp_path):
    from darkminer.config import load_config
    from darkminer.methods.base import ErasureRequest
    from darkminer.models import load_lora
    from darkminer.testing import TINY_METHOD_OVERRIDES

    overrides = [*TINY_METHOD_OVERRIDES["dark_miner"], "max_loops=1", "lora.targets=linear"]
    model = tiny_model()
    DarkMiner(load_config(DarkMinerConfig, None, overrides)).erase(model, ErasureRequest(concepts=["star"]), tmp_path)
    probe = (torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500]))
    cond = model.encode_prompt(["a star photo"])
    fresh = tiny_model()
    load_lora(fresh, tmp_path)
    adapted = {n for n, _ in fresh.unet.named_modules() if n.endswith(".lora_A")}
    assert any(".ff." in n for n in adapted) and any("time_emb_proj" in n for n in adapted)
    with torch.no_grad():
        torch.testing.assert_close(fresh.predict_noise(*probe, cond), model.predict_noise(*probe, cond))
