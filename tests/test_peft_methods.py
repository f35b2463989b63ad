"""`method: peft`: any PEFT method through PEFT's own config, searched, recorded, exported."""

from __future__ import annotations

import copy
import json

import optuna
import pytest
import yaml
from conftest import TINY_SPACE, invoke, optimize

from lorasweep.config import TrialConfig
from lorasweep.search_space import load_space
from lorasweep.validation import ConfigError

SPACE = {
    **TINY_SPACE,
    # the fixed peft_config makes the fixed part a valid config; the searched keys replace its own
    "config": {
        **TINY_SPACE["config"],
        "method": "peft",
        "peft_config": {"peft_type": "VERA"},
        "learning_rate": 1e-2,
    },
    "params": {
        "peft_type": {"field": "peft_config.peft_type", "choices": ["OFT", "VERA", "MISS"]},
        "oft_block_size": {
            "field": "peft_config.oft_block_size",
            "choices": [0],
            "when": {"peft_type": "OFT"},
        },
        "oft_r": {"field": "peft_config.r", "type": "int", "low": 2, "high": 8, "when": {"peft_type": "OFT"}},
        "vera_r": {"field": "peft_config.r", "choices": [16, 32], "when": {"peft_type": "VERA"}},
        "miss_r": {"field": "peft_config.r", "choices": [4], "when": {"peft_type": "MISS"}},
    },
    "baselines": [
        {"peft_config.peft_type": "OFT", "peft_config.oft_block_size": 0, "peft_config.r": 4},
        {"peft_config.peft_type": "VERA", "peft_config.r": 16},
        {"peft_config.peft_type": "MISS", "peft_config.r": 4},
    ],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache_dir):
    path = tmp_path_factory.mktemp("peft")
    (path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return path, optimize(path, "space.yaml", "--n-trials", "3")


def test_a_study_searches_peft_methods_and_their_options(study):
    _, url = study
    trials = optuna.load_study(study_name="default", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    oft, vera, miss = (t.user_attrs for t in trials)
    assert miss["config"]["peft_config"] == {"peft_type": "MISS", "r": 4}
    assert oft["config"]["peft_config"] == {"peft_type": "OFT", "oft_block_size": 0, "r": 4}
    assert vera["config"]["peft_config"] == {"peft_type": "VERA", "r": 16}
    assert oft["trainable_params"] != vera["trainable_params"]
    for attrs in (oft, vera, miss):
        assert attrs["target_modules_resolved"] == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )  # the all-linear preset, mapped as for LoRA
        assert attrs["optimizer_state_bytes"] == attrs["memory_estimate"]["optimizer"]


@pytest.mark.parametrize(("number", "kind"), [(0, "OFT"), (1, "VERA"), (2, "MISS")])
def test_an_exported_peft_method_loads_with_plain_peft_and_scores_the_recorded_learn(
    study, tmp_path, number, kind
):
    from peft import PeftModel
    from test_reproduce import exact_match
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorasweep.config import WorldConfig
    from lorasweep.world import build_world

    path, url = study
    out = tmp_path / kind
    result = invoke("export", "--trial", str(number), "--out", str(out), "--storage", url, cwd=path)
    assert result.returncode == 0, result.stderr
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == kind
    recorded = optuna.load_study(study_name="default", storage=url).trials[number].user_attrs
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"]), out
    )
    world = build_world(WorldConfig(**recorded["config"]["world"]))
    assert (
        exact_match(model.eval(), AutoTokenizer.from_pretrained(out), world.domain_probes)
        == recorded["learn"]
    )


@pytest.mark.parametrize(
    ("peft_config", "message"),
    [
        (None, "field 'peft_config' is None; allowed: a mapping with peft_type with method peft"),
        (
            {"peft_type": "PROMPT_TUNING"},
            "field 'peft_config.peft_type' is 'PROMPT_TUNING'; allowed: BOFT, C3A",
        ),
        (
            {"peft_type": "ADALORA"},
            "allowed: BOFT, C3A, FOURIERFT, HRA, IA3, LOHA, LOKR, MISS, OFT, SHIRA, VERA",
        ),
        ({"peft_type": "oft"}, "field 'peft_config.peft_type' is 'oft'; did you mean 'OFT'?"),
        (
            {"peft_type": "VERA", "inference_mode": True},
            "field 'peft_config.inference_mode' is not an option",
        ),
        ({"peft_type": "LORA"}, "(LoRA itself: method lora, rslora, dora or qlora)"),
        ({"peft_type": "VERA", "rank": 4}, "field 'peft_config.rank' is not an option of PEFT's VeraConfig"),
        (
            {"peft_type": "OFT", "r": 4},
            "field 'peft_config': PEFT's OFTConfig refuses it: You can only specify",
        ),
    ],
)
def test_bad_peft_configs_are_one_line_errors(peft_config, message):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({"method": "peft", "peft_config": peft_config}, "trial.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_searched_peft_key_is_checked_by_peft_when_the_method_is_fixed(tmp_path):
    space = {
        **TINY_SPACE,
        "config": {**TINY_SPACE["config"], "method": "peft", "peft_config": {"peft_type": "VERA"}},
        "params": {"peft_config.d_initial": {"type": "float", "low": 0.01, "high": 0.5}},
        "baselines": [],
    }
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(space))
    assert load_space(tmp_path / "ok.yaml").params[0].field == "peft_config.d_initial"
    space["params"] = {"peft_config.vera_rank": {"choices": [4, 8]}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(
        ConfigError, match="field 'peft_config.vera_rank' is not an option of PEFT's VeraConfig"
    ):
        load_space(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (  # a searched key without a `when` goes with every method chosen
            {"params": {"oft_block_size": {"field": "peft_config.oft_block_size", "choices": [0]}}},
            (
                "param 'oft_block_size' with peft_type VERA: field 'peft_config.oft_block_size' is not an "
                "option of PEFT's VeraConfig"
            ),
        ),
        (  # a fixed key only one of the chosen methods knows
            {"config": {"peft_config": {"peft_type": "VERA", "vera_dropout": 0.1}}},
            "param 'peft_type' choice 'OFT': field 'peft_config.vera_dropout' is not an option of PEFT's OFTConfig",
        ),
        (
            {
                "params": {
                    "peft_type": {
                        "field": "peft_config.peft_type",
                        "choices": ["OFT", "VERA", "MISS", "LORA"],
                    }
                }
            },
            "param 'peft_type' choice 'LORA': field 'peft_config.peft_type' is 'LORA'",
        ),
        (  # the same, where the method is searched too: checked for each chosen PEFT method
            {"method searched": True, "config": {"peft_config": {"peft_type": "VERA", "vera_dropout": 0.1}}},
            "param 'peft_type' choice 'OFT': field 'peft_config.vera_dropout' is not an option of PEFT's OFTConfig",
        ),
        (
            {
                "method searched": True,
                "params": {
                    "peft_type": {
                        "field": "peft_config.peft_type",
                        "choices": ["OFT", "VERA", "MISS", "LORA"],
                    }
                },
            },
            "param 'peft_type' choice 'LORA': field 'peft_config.peft_type' is 'LORA'",
        ),
    ],
)
def test_where_the_method_is_searched_each_chosen_method_knows_its_keys(tmp_path, change, message):
    space = copy.deepcopy(SPACE)
    space["config"].update(change.get("config", {}))
    space["params"].update(change.get("params", {}))
    if change.get("method searched"):  # as search_spaces/peft_methods.yaml: PEFT is one method of several
        del space["config"]["method"]
        space["params"] = {"method": {"choices": ["lora", "peft"]}, **space["params"]}
        space["params"]["peft_type"]["when"] = {"method": "peft"}
    space["baselines"] = []
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_space(tmp_path / "space.yaml")
    text = str(info.value)
    assert text.startswith(str(tmp_path / "space.yaml")) and message in text and "\n" not in text


def test_a_key_whose_when_goes_through_another_param_is_checked_only_with_its_methods(tmp_path):
    # use_cayley_neumann is OFT's alone; it goes with OFT through oft_block_size's own `when`
    space = copy.deepcopy(SPACE)
    space["params"]["cayley"] = {
        "field": "peft_config.use_cayley_neumann",
        "choices": [True, False],
        "when": {"oft_block_size": [0]},
    }
    space["baselines"] = []
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    assert load_space(tmp_path / "space.yaml").params[-1].field == "peft_config.use_cayley_neumann"
    del space["params"]["cayley"]["when"]  # now it would go with VeRA too
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    with pytest.raises(
        ConfigError, match="param 'cayley' with peft_type VERA: field 'peft_config.use_cayley"
    ):
        load_space(tmp_path / "space.yaml")
