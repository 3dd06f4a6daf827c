"""Typed configs: YAML, dotted overrides, unknown keys and bad types are errors."""

import pytest

from lmforge import config as configlib
from lmforge.errors import UserError
from lmforge.recipes.pretrain import PretrainConfig, build_config, config_to_dict
from lmforge.train.loop import TrainConfig


def test_overrides_parse_into_a_tree():
    tree = configlib.parse_overrides(
        ["--train.lr=3e-4", "--model.preset", "llama-tiny", "--train.compile=true"]
    )
    assert tree == {"train": {"lr": "3e-4", "compile": "true"}, "model": {"preset": "llama-tiny"}}


def test_build_coerces_types_and_applies_presets():
    cfg = build_config(
        {
            "model": {"preset": "llama-tiny", "num_layers": "6"},
            "train": {"lr": "3e-4", "compile": "true", "max_steps": "1e3"},
        },
    )
    assert (
        cfg.model.num_layers == 6 and cfg.model.position == "rope" and cfg.model.num_kv_heads == 2
    )
    assert cfg.train.lr == 3e-4 and cfg.train.compile is True and cfg.train.max_steps == 1000


def test_preset_override_recomputes_derived_fields():
    cfg = build_config({"model": {"preset": "gpt2-tiny", "hidden_size": 256}})
    assert cfg.model.head_dim == 64 and cfg.model.intermediate_size == 1024


def test_unknown_key_is_an_error():
    with pytest.raises(UserError, match="unknown config key 'train.lrr'"):
        configlib.build(PretrainConfig, {"train": {"lrr": 1}})
    with pytest.raises(UserError, match="unknown config key"):
        configlib.build(PretrainConfig, {"optimiser": {}})


def test_bad_type_and_bad_value_are_errors():
    with pytest.raises(UserError, match="must be of type int"):
        configlib.build(TrainConfig, {"max_steps": "many"})
    with pytest.raises(UserError, match="bad config"):
        configlib.build(TrainConfig, {"max_steps": -1})
    with pytest.raises(UserError, match="not divisible"):
        build_config({"model": {"preset": "gpt2-tiny", "num_heads": 3}})


def test_yaml_round_trip(tmp_path):
    cfg = build_config({"model": "llama-tiny", "train": {"max_steps": 7}})
    path = tmp_path / "c.yaml"
    path.write_text(configlib.dump_yaml(config_to_dict(cfg)))
    assert configlib.load_yaml(path)["model"]["family"] == "gpt"
    again = build_config(configlib.load_yaml(path))
    assert again == cfg


def test_objective_defaults_to_the_family_and_must_match_it():
    assert build_config({}).train.objective == "causal_lm"
    with pytest.raises(UserError, match="unknown objective 'nope'"):
        build_config({"train": {"objective": "nope"}})
    with pytest.raises(UserError, match="unknown model family 'rnn'"):
        build_config({"model": {"family": "rnn"}})
    with pytest.raises(UserError, match="is a gpt model, not bert"):
        build_config({"model": {"family": "bert", "preset": "gpt2-tiny"}})


def test_bad_yaml_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        configlib.load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        configlib.load_yaml(bad)
