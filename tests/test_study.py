"""The study: balanced arms (`compare`), in a real SQLite study and through the CLI."""

import copy

import optuna
import pytest
import yaml
from conftest import TINY_SPACE, optimize

from lorasweep.search_space import load_space
from lorasweep.study import open_study, queue_arm
from lorasweep.validation import ConfigError

FULL = optuna.distributions.CategoricalDistribution(["lora", "full"])


def space_file(tmp_path, **top) -> str:
    space = copy.deepcopy(TINY_SPACE) | top
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


def add(study, state, method, **system_attrs):
    study.add_trial(
        optuna.create_trial(
            state=state,
            params={"method": method},
            distributions={"method": FULL},
            values=[0.5, 0.1] if state == optuna.trial.TrialState.COMPLETE else None,
            system_attrs=system_attrs,
        )
    )


def waiting_arms(study) -> list:
    return [t.user_attrs["arm"] for t in study.trials if t.state == optuna.trial.TrialState.WAITING]


def test_the_arm_with_fewest_trials_goes_next_ties_in_choice_order(tmp_path):
    space = load_space(space_file(tmp_path, compare="method", baselines=[]))
    study = open_study("arms", f"sqlite:///{tmp_path}/s.db", space, seed=0)
    queue_arm(study, space)
    assert waiting_arms(study) == ["lora"]  # 0 and 0: the first choice
    queue_arm(study, space)
    assert waiting_arms(study) == ["lora"]  # nothing more is queued while a trial waits

    study = open_study("counts", f"sqlite:///{tmp_path}/s.db", space, seed=0)
    State = optuna.trial.TrialState
    add(study, State.COMPLETE, "full")
    add(study, State.PRUNED, "full")  # a duplicate pruned at step 0 counts for its arm
    add(study, State.COMPLETE, "lora")
    add(study, State.FAIL, "lora")  # a dead worker's trial, queued again below: its retry counts
    add(study, State.COMPLETE, "lora", failed_trial=3, retry_history=[3])
    queue_arm(study, space)
    # full 2, lora 2 (counting the retried FAIL too would make it 3 and send full): a tie, the first choice
    assert waiting_arms(study) == ["lora"]

    study = open_study("failed", f"sqlite:///{tmp_path}/s.db", space, seed=0)
    add(study, State.COMPLETE, "lora")
    add(study, State.FAIL, "full")  # a failed trial that was not run again counts for its arm
    queue_arm(study, space)
    assert waiting_arms(study) == ["lora"]


def test_without_compare_nothing_is_queued(tmp_path):
    space = load_space(space_file(tmp_path, baselines=[]))
    study = open_study("free", f"sqlite:///{tmp_path}/s.db", space, seed=0)
    queue_arm(study, space)
    assert study.trials == []


@pytest.mark.parametrize(
    ("compare", "message"),
    [
        ("rank", "'compare' is 'rank'; allowed: a categorical param every trial has (method)"),
        ("target_modules", "'compare' is 'target_modules'; allowed: a categorical param every trial"),
        (["method"], "'compare' is ['method']; allowed:"),
    ],
)
def test_compare_names_a_categorical_param_every_trial_has(tmp_path, compare, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_space(space_file(tmp_path, compare=compare))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_optimize_gives_each_method_half_of_the_trials(tmp_path, prepared):
    url = optimize(tmp_path, space_file(tmp_path, compare="method"), "--n-trials", "6")
    trials = optuna.load_study(study_name="default", storage=url).trials
    methods = [t.params["method"] for t in trials]
    assert sorted(methods) == ["full"] * 3 + ["lora"] * 3
    assert methods[:2] == ["full", "lora"]  # the baselines run first and count for their arms
    assert all(t.user_attrs["arm"] == t.params["method"] for t in trials)
