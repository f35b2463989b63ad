import copy
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_SPACE

from lorasweep.search_space import load_space
from lorasweep.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, space) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_shipped_spaces_validate():
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        assert space.params and space.baselines


def test_conditional_params_are_sampled_only_when_active(tmp_path):
    space = load_space(write(tmp_path, TINY_SPACE))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    for _ in range(20):
        trial = study.ask()
        config = space.suggest(trial)
        if config.method == "full":
            assert set(trial.params) == {"method", "full_learning_rate"}
            assert 3e-4 <= config.learning_rate <= 3e-3
        else:
            assert set(trial.params) == {"method", "rank", "target_modules", "lora_learning_rate"}
            assert 3e-3 <= config.learning_rate <= 3e-2 and 2 <= config.rank <= 8
        study.tell(trial, [0.0, 0.0])
    assert {t.params["method"] for t in study.trials} == {"lora", "full"}


def test_baselines_become_optuna_params(tmp_path):
    space = load_space(write(tmp_path, TINY_SPACE))
    assert space.baselines == [
        {"method": "full", "full_learning_rate": 1.0e-3},
        {"method": "lora", "rank": 4, "target_modules": "all-linear", "lora_learning_rate": 1.0e-2},
    ]


def test_fixed_config_reaches_every_trial(tmp_path):
    space = load_space(write(tmp_path, TINY_SPACE))
    config = space.trial_config(space.baselines[0])
    assert config.train_tokens == 8192 and config.world.n_general == 40 and config.method == "full"


def edit(path: str, value):
    """TINY_SPACE with one entry (dotted path) replaced; None deletes it."""
    space = copy.deepcopy(TINY_SPACE)
    *parents, last = path.split(".")
    node = space
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return space


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "objectives",
            "x",
            (
                "unknown key 'objectives'; did you mean 'objective'? (allowed: objective, forget_tolerance, "
                "pruner, config, params"
            ),
        ),
        ("params.rank.hi", 3, "param 'rank': unknown key 'hi'"),
        ("params.rank.low", 9, "param 'rank': low 9 is greater than high 8"),
        ("params.rank.low", "two", "field 'low' is 'two'; expected an integer"),
        (
            "params.method.choices",
            ["lora", "adapter"],
            "field 'method' is 'adapter'; allowed: full, lora, rslora",
        ),
        ("params.target_modules.choices", ["all-linear", "every"], "field 'target_modules' is 'every'"),
        ("params.rank.when", {"methd": "lora"}, "'when' refers to 'methd'"),
        ("params.rank.when", {"method": "dora"}, "'when' value 'dora' is not a choice of 'method'"),
        ("params.full_learning_rate.when", None, "both set 'learning_rate' and can be active together"),
        ("params.rank.type", "float", "type 'float' does not fit field 'rank'"),
        ("params.lora_learning_rate.low", 0, "a log scale needs low > 0"),
        ("params.lora_learning_rate.field", "speed", "'speed' is not a trial-config field"),
        (
            "params.lora_learning_rate.field",
            "learning_rat",
            "'learning_rat' is not a trial-config field; did you mean 'learning_rate'? (searchable: ",
        ),
        ("params.seed", 3, "param 'seed' must be a mapping"),
        ("config.method", "full", "field 'method' is both fixed under 'config' and searched"),
        ("config.batch_size", "big", "field 'batch_size' is 'big'; expected an integer"),
        ("sampler.name", "cmaes", "sampler name 'cmaes' is unknown (allowed: tpe, random)"),
        ("sampler.warmup", 3, "unknown sampler option 'warmup' for tpe"),
        ("baselines.0.learning_rate", 0.5, "'learning_rate' is 0.5; param 'full_learning_rate' is float in"),
        ("baselines.1.rank", None, "baseline 2: no value for 'rank'"),
        ("baselines.0.rank", 4, "baseline 1: 'rank' is not a param active in this baseline"),
    ],
)
def test_invalid_spaces_name_file_field_and_allowed(tmp_path, path, value, message):
    space_file = write(tmp_path, edit(path, value))
    with pytest.raises(ConfigError) as info:
        load_space(space_file)
    text = str(info.value)
    assert text.startswith(str(space_file)) and message in text and "\n" not in text
