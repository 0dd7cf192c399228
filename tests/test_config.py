"""Typed configs: dotted overrides, YAML files, unknown keys and invalid values refused by name, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkminer.config import ConfigError, load_config, parse_overrides, to_dict
from darkminer.methods import AllButOneConfig, DarkMinerConfig, get_method

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIG_DIR.glob("*/*.yaml")) + sorted(CONFIG_DIR.glob("*/*.yml"))


def test_parse_overrides_builds_a_nested_tree_of_yaml_values():
    assert parse_overrides(["a.b=1", "c=x", "d=[1,2]"]) == {"a": {"b": 1}, "c": "x", "d": [1, 2]}


def test_parse_overrides_merges_siblings_and_keeps_equals_in_values():
    assert parse_overrides(["a.b=0.5", "a.c=true", "e=k=v"]) == {"a": {"b": 0.5, "c": True}, "e": "k=v"}


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="mining.steps") as info:
        parse_overrides(["mining.steps"])
    assert "key=value" in str(info.value)


def test_defaults_are_valid():
    assert load_config(DarkMinerConfig) == DarkMinerConfig()
    assert load_config(AllButOneConfig) == AllButOneConfig()


def test_overrides_set_nested_fields():
    config = load_config(DarkMinerConfig, None, ["mining.steps=7", "verify.tau=0.3"])
    assert config.mining.steps == 7
    assert config.verify.tau == 0.3
    assert config.mining.lr == DarkMinerConfig().mining.lr  # siblings keep their defaults


def test_an_exponent_without_a_dot_is_a_number(tmp_path: Path):
    """YAML 1.1 reads "1e-6" as a string; a float field takes it as the number it spells."""
    assert load_config(DarkMinerConfig, None, ["mining.lr=1e-6"]).mining.lr == 1e-6
    assert load_config(DarkMinerConfig, None, ["mining.lr=1.5e-3"]).mining.lr == 1.5e-3
    (tmp_path / "c.yaml").write_text("mining:\n  lr: 1e-6\n")
    assert load_config(DarkMinerConfig, tmp_path / "c.yaml").mining.lr == 1e-6
    with pytest.raises(ConfigError, match=r"mining.lr='fast' must be a number"):
        load_config(DarkMinerConfig, None, ["mining.lr=fast"])


def test_unknown_key_is_named_with_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(DarkMinerConfig, None, ["mining.stepz=3"])
    message = str(info.value)
    assert "mining.stepz" in message
    assert "steps" in message and "embedding_space" in message


def test_unknown_top_level_key_is_refused():
    with pytest.raises(ConfigError, match="nope"):
        load_config(AllButOneConfig, None, ["nope=1"])


def test_yaml_overrides_defaults_and_cli_overrides_win(tmp_path: Path):
    path = tmp_path / "dm.yaml"
    path.write_text("max_loops: 5\nmining:\n  steps: 11\n  lr: 0.05\nverify:\n  tau: 0.1\n")
    config = load_config(DarkMinerConfig, path, ["mining.steps=3"])
    assert config.max_loops == 5
    assert config.mining.lr == 0.05
    assert config.verify.tau == 0.1
    assert config.mining.steps == 3
    assert config.mining.length == DarkMinerConfig().mining.length


def test_empty_yaml_gives_the_defaults(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(AllButOneConfig, path) == AllButOneConfig()


def test_yaml_that_is_a_list_is_refused(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- steps\n- 3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(DarkMinerConfig, path)


def test_missing_yaml_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DarkMinerConfig, tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("cls", "override", "field", "shown"),
    [
        (DarkMinerConfig, "mining.embedding_space=foo", "mining.embedding_space", "foo"),
        (DarkMinerConfig, "verify.tau=2", "verify.tau", "2"),
        (DarkMinerConfig, "circumvent.current_prob=1.5", "circumvent.current_prob", "1.5"),
        (DarkMinerConfig, "lora.targets=keys", "lora.targets", "keys"),
        (DarkMinerConfig, "pool.prompt=no placeholder", "pool.prompt", "no placeholder"),
        (DarkMinerConfig, "max_loops=0", "max_loops", "0"),
        (DarkMinerConfig, "circumvent.anchor=[a photo, ' ']", "circumvent.anchor", "' '"),
        (AllButOneConfig, "steps=0", "all_but_one.steps", "0"),
        (AllButOneConfig, "templates=[a photo]", "all_but_one.templates", "a photo"),
    ],
)
def test_invalid_values_are_refused_naming_the_field_and_value(cls, override, field, shown):
    with pytest.raises(ValueError) as info:
        load_config(cls, None, [override])
    assert field in str(info.value) and shown in str(info.value)


def test_list_fields_accept_a_single_string():
    config = load_config(AllButOneConfig, None, ["target_modules=attn2.to_v"])
    assert config.target_modules == ["attn2.to_v"]
    assert load_config(DarkMinerConfig, None, ["circumvent.anchor=a green photo"]).circumvent.anchor == [
        "a green photo"
    ]


def test_to_dict_round_trips():
    config = load_config(DarkMinerConfig, None, ["mining.steps=7"])
    assert load_config(DarkMinerConfig, None, [], **to_dict(config)) == config


@pytest.mark.parametrize(
    "path",
    SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="no YAML under configs/ yet"))],
    ids=lambda p: str(p.relative_to(CONFIG_DIR)) if p else "none",
)
def test_shipped_config_loads_into_its_method_config(path: Path):
    entry = get_method(path.parent.name)
    config = load_config(entry.config_class, path)
    assert isinstance(config, entry.config_class)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# darkminer "), f"{path}: first line must be the command that runs it"


def test_a_value_for_a_section_is_refused():
    # Regression: `mining=3` used to be accepted, leaving an int where the MiningConfig belongs.
    with pytest.raises(ConfigError) as info:
        load_config(DarkMinerConfig, None, ["mining=3"])
    assert "'mining'" in str(info.value) and "mining.<key>" in str(info.value) and "steps" in str(info.value)
