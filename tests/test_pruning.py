"""The dominance pruner's rule on constructed curves, and in a real pareto study."""

import optuna
import pytest
import yaml

from lorasweep.pruning import dominated_by, dominates, should_prune

# (learn, forget) at three evaluation points of three completed trials
CURVES = [
    [(0.2, 0.1), (0.5, 0.2), (0.7, 0.3)],
    [(0.3, 0.1), (0.6, 0.1), (0.8, 0.2)],
    [(0.1, 0.5), (0.2, 0.6), (0.3, 0.7)],
]


def test_dominance_needs_both_objectives_at_least_as_good_and_one_better():
    assert dominates((0.5, 0.1), (0.4, 0.2))
    assert dominates((0.5, 0.2), (0.4, 0.2))  # equal forget, better learn
    assert dominates((0.4, 0.1), (0.4, 0.2))  # equal learn, less forgetting
    assert not dominates((0.4, 0.2), (0.4, 0.2))  # equal is not dominance
    assert not dominates((0.6, 0.3), (0.4, 0.2))  # more learning but more forgetting: a trade-off


def test_tpe_goes_on_past_pruned_trials_of_a_pareto_study_that_recorded_learning_curves():
    # the objective records a pareto trial's intermediate learn (for the dashboard) and the dominance
    # pruner then prunes it; TPE read such a trial by a single direction and raised
    from lorasweep.optuna_private import report
    from lorasweep.replicates import WithoutReplicates

    sampler = WithoutReplicates(optuna.samplers.TPESampler(n_startup_trials=2, seed=0))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        report(trial, 1, x)
        if trial.number % 2:
            raise optuna.TrialPruned()
        return x, x

    study.optimize(objective, n_trials=8)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"] * 4
    assert all(t.intermediate_values == {1: t.params["x"]} for t in study.trials)  # kept for the dashboard


def test_points_are_compared_at_the_same_evaluation_point():
    # (0.45, 0.25) is dominated by trials 0 and 1 at point 1; at point 2 only by trial 1, since
    # trial 0 (0.7, 0.3) learned more but also forgot more: a trade-off, not dominance
    assert dominated_by((0.45, 0.25), 1, CURVES) == 2
    assert dominated_by((0.45, 0.25), 2, CURVES) == 1
    assert dominated_by((0.45, 0.25), 5, CURVES) == 0  # curves shorter than the point do not count


@pytest.mark.parametrize(
    ("point", "index", "k", "warmup", "pruned"),
    [
        ((0.45, 0.25), 1, 2, 1, True),  # dominated by 2 at point 1, past warm-up
        ((0.45, 0.25), 1, 3, 1, False),  # k = 3 needs one more
        ((0.45, 0.25), 1, 2, 2, False),  # still in warm-up
        ((0.15, 0.6), 0, 1, 0, True),  # no warm-up: pruned at the first point
        ((0.9, 0.05), 2, 1, 0, False),  # on the front
        ((0.25, 0.8), 2, 1, 0, True),  # learns less and forgets more than trial 2 (0.3, 0.7)
    ],
)
def test_should_prune(point, index, k, warmup, pruned):
    assert should_prune(point, index, CURVES, k, warmup) is pruned


def test_dominance_pruner_in_a_pareto_study(tmp_path, cache_dir, prepared, tiny_space):
    from conftest import optimize

    space = yaml.safe_load(tiny_space.read_text())
    space["pruner"] = {"name": "dominance", "k": 1, "warmup_points": 1}
    space["config"]["eval_points"] = 4
    space["params"]["lora_learning_rate"]["low"] = 1.0e-5  # some trials fall behind early
    space["params"]["full_learning_rate"]["low"] = 1.0e-6
    space["sampler"] = {"name": "random"}
    tiny_space.write_text(yaml.safe_dump(space, sort_keys=False))
    url = optimize(tmp_path, tiny_space, "--n-trials", "8")
    study = optuna.load_study(study_name="default", storage=url)
    pruned = study.get_trials(states=[optuna.trial.TrialState.PRUNED])
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert pruned and complete
    for t in pruned:
        # where it was stopped, at least k = 1 trial completed before it was ahead at the same point
        point = t.user_attrs["pruned_point"]
        assert t.user_attrs["prune_reason"].startswith("dominance pruner:")
        assert point["evaluation"] >= 1  # warm-up of one evaluation
        assert t.intermediate_values[t.user_attrs["pruned_at_step"]] == point["learn"]
        earlier = [c for c in complete if c.datetime_complete < t.datetime_complete]
        curves = [
            [
                (c.user_attrs["learn_curve"][s], c.user_attrs["forget_curve"][s])
                for s in sorted(c.user_attrs["learn_curve"], key=int)
            ]
            for c in earlier
        ]
        assert dominated_by((point["learn"], point["forget"]), point["evaluation"], curves) >= 1
    for t in complete:
        assert len(t.user_attrs["forget_curve"]) == 4
        assert t.user_attrs["forget_curve"][max(t.user_attrs["forget_curve"], key=int)] == t.values[1]


def test_a_configuration_already_completed_is_pruned_as_a_duplicate_not_trained(
    tmp_path, cache_dir, prepared
):
    from conftest import TINY_SPACE

    from lorasweep.objective import TRIAL_FAILURES, make_objective
    from lorasweep.search_space import load_space
    from lorasweep.study import open_study

    one_config = {"method": {"choices": ["full"]}, "lr": {"field": "learning_rate", "choices": [1.0e-3]}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "params": one_config, "baselines": []}, sort_keys=False))
    space = load_space(path)
    study = open_study("dup", optuna.storages.InMemoryStorage(), space, seed=0)
    study.optimize(make_objective(space, cache_dir=cache_dir), n_trials=3, catch=TRIAL_FAILURES)
    first, *again = study.trials
    assert first.state.name == "COMPLETE" and first.user_attrs["train_steps"] > 0
    for trial in again:
        assert trial.state.name == "PRUNED" and trial.params == first.params
        assert trial.user_attrs["duplicate_of"] == 0 and trial.user_attrs["pruned_at_step"] == 0
        assert trial.user_attrs["prune_reason"].startswith("duplicate of trial 0")
        assert "train_steps" not in trial.user_attrs and not trial.intermediate_values  # not trained
