import dataclasses

import pytest

from lorasweep.config import TrialConfig, WorldConfig
from lorasweep.validation import ConfigError


def test_round_trip_through_yaml(tmp_path):
    config = TrialConfig(method="full", learning_rate=3e-4, seed=7)
    config.to_yaml(tmp_path / "trial.yaml")
    assert TrialConfig.from_yaml(tmp_path / "trial.yaml") == config


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    (tmp_path / "t.yaml").write_text("learning_rate: 3e-4\n")  # PyYAML reads this as a string
    assert TrialConfig.from_yaml(tmp_path / "t.yaml").learning_rate == 3e-4


def test_alpha_resolves_from_ratio():
    assert TrialConfig(rank=8, alpha_ratio=4.0).resolved(0).alpha == 32.0
    assert TrialConfig(rank=8).resolved(0).alpha == 16.0
    assert TrialConfig(rank=8, alpha=5.0).resolved(0).alpha == 5.0
    assert TrialConfig(method="full", rank=8).resolved(0).alpha is None


def test_steps_follow_token_budget():
    assert TrialConfig(batch_size=16, max_length=64, train_tokens=150_000).steps == 146


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"methd": "lora"}, "unknown field 'methd'"),
        ({"learning_rat": 1e-3}, "unknown field 'learning_rat'; did you mean 'learning_rate'? (allowed: "),
        ({"method": "adapter"}, "field 'method' is 'adapter'; allowed: full, lora, rslora, dora, qlora"),
        (
            {"target_modules": "everything"},
            "field 'target_modules' is 'everything'; allowed: all-linear, attention, qv, mlp",
        ),
        ({"rank": "eight"}, "field 'rank' is 'eight'; expected an integer"),
        ({"rank": 0}, "field 'rank' is 0; allowed: an integer >= 1"),
        ({"rank": 4.5}, "field 'rank' is 4.5; expected an integer"),
        ({"learning_rate": "fast"}, "field 'learning_rate' is 'fast'; expected a number"),
        ({"rank": 10**30}, "field 'rank' is out of range; expected an integer in -2**63..2**63-1"),
        ({"threads": 2**40}, "field 'threads' is 1099511627776; allowed: an integer in 0..2**31-1"),
        ({"compile": "yes"}, "field 'compile' is 'yes'; expected true or false"),
        ({"alpha": 8, "alpha_ratio": 2}, "set only one of alpha and alpha_ratio"),
        ({"world": {"n_people": 3}}, "unknown field 'world.n_people'"),
        ({"world": {"n_heads": 5}}, "field 'world.n_heads' is 5; allowed: a positive divisor"),
        ({"train_tokens": 10}, "field 'train_tokens' is 10; allowed: at least one optimizer step"),
        ([1, 2], "must be a mapping"),
        (
            {"optimizer": "sgd"},
            "field 'optimizer' is 'sgd'; allowed: adamw, adamw_8bit, paged_adamw_8bit, adafactor",
        ),
        ({"fsdp_shards": 0}, "field 'fsdp_shards' is 0; allowed: an integer >= 1"),
        ({"init_lora_weights": "orthogonal", "rank": 5}, "field 'rank' is 5; allowed: an even number with"),
        (
            {"init_lora_weights": "svd"},
            "field 'init_lora_weights' is 'svd'; allowed: default, gaussian, orthogonal",
        ),
        (
            {"method": "qlora", "init_lora_weights": "orthogonal"},
            "allowed: default or gaussian with method qlora",
        ),
        ({"method": "full", "init_lora_weights": "pissa"}, "allowed: default with method full"),
        (
            {"method": "full", "loraplus_lr_ratio": 16},
            "field 'loraplus_lr_ratio' is 16.0; allowed: unset, or",
        ),
        (
            {"fsdp_shards": 3, "batch_size": 16},
            "field 'batch_size' is 16; allowed: a multiple of fsdp_shards (3)",
        ),
        (
            {"fsdp_shards": 2, "optimizer": "adamw_8bit"},
            "field 'optimizer' is 'adamw_8bit'; allowed: adamw with",
        ),
        (
            {"fsdp_shards": 2, "method": "qlora"},
            "field 'method' is 'qlora'; allowed: full, lora, rslora or dora",
        ),
        ({"fsdp_shards": 2, "compile": True}, "field 'compile' is True; allowed: false with fsdp_shards 2"),
        ({"fsdp_shards": 2, "lawa_k": 2}, "field 'lawa_k' is 2; allowed: 0 with fsdp_shards 2"),
        (
            {"fsdp_shards": 2, "device": "cuda:1"},
            "field 'device' is 'cuda:1'; allowed: auto, cpu or cuda with",
        ),
    ],
)
def test_invalid_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=None) as info:
        TrialConfig.from_dict(data, "trial.yaml")
    text = str(info.value)
    assert text.startswith("trial.yaml: ") and message in text and "\n" not in text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrialConfig(method="adapter"), "field 'method' is 'adapter'; allowed: full, lora"),
        (lambda: dataclasses.replace(TrialConfig(), rank=0), "field 'rank' is 0; allowed: an integer >= 1"),
        (lambda: dataclasses.replace(TrialConfig(), seed="7"), "field 'seed' is '7'; expected an integer"),
        (lambda: WorldConfig(n_heads=5), "field 'world.n_heads' is 5; allowed: a positive divisor"),
        (lambda: TrialConfig(world={"seed": 1}), "field 'world' is {'seed': 1}; expected a WorldConfig"),
    ],
)
def test_a_config_made_in_code_is_validated_on_construction(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).startswith(message)


def test_a_config_cannot_be_changed_into_an_invalid_one():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrialConfig().rank = 0


def test_numbers_made_in_code_take_their_field_type():
    config = TrialConfig(alpha=8, learning_rate="3e-4")
    assert (config.alpha, config.learning_rate) == (8.0, 3e-4) and isinstance(config.alpha, float)


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        TrialConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("method: [lora\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML at line"):
        TrialConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "latin1.yaml").write_bytes("method: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: cannot read"):
        TrialConfig.from_yaml(tmp_path / "latin1.yaml")
