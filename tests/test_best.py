"""Constrained studies with pruning, choosing the study, and `lorasweep best` through the real CLI."""

import json

import optuna
import pytest
import yaml
from conftest import invoke, optimize, write_space

from lorasweep.search_space import load_space
from lorasweep.study import best_trials, load_study
from lorasweep.validation import ConfigError


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_constrained_study_prunes_and_records_why(tmp_path, cache_dir, prepared, pruner):
    # a warm-up of 1 startup trial and 4 evaluation points: later poor trials are stopped early
    space = write_space(
        tmp_path,
        objective="constrained",
        forget_tolerance=0.5,
        pruner={"name": pruner, **({"n_startup_trials": 1} if pruner == "median" else {})},
        sampler={"name": "random"},
    )
    spec = yaml.safe_load((tmp_path / "space.yaml").read_text())
    spec["config"]["eval_points"] = 4
    spec["params"]["lora_learning_rate"]["low"] = 1.0e-5  # some trials learn next to nothing
    spec["params"]["full_learning_rate"]["low"] = 1.0e-6
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    optimize(tmp_path, space, "--n-trials", "8")
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{tmp_path}/s.db")
    assert study.metric_names == ["learn"] and len(study.directions) == 1
    assert study.user_attrs["objective"] == "constrained" and study.user_attrs["pruner"]["name"] == pruner
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    pruned = study.get_trials(states=[optuna.trial.TrialState.PRUNED])
    assert complete and pruned, [t.state for t in study.trials]
    for t in complete:
        assert t.constraints == {"forget": pytest.approx(t.user_attrs["forget"] - 0.5)}
    for t in pruned:
        step = t.user_attrs["pruned_at_step"]
        assert step in t.intermediate_values and step < 32  # stopped before the last step
        assert t.user_attrs["prune_reason"].startswith(f"{pruner} pruner: learn")
    best = best_trials(study)
    feasible = [t for t in complete if t.user_attrs["forget"] <= 0.5]
    assert best == ([max(feasible, key=lambda t: t.value)] if feasible else [])


def test_best_json_lists_the_pareto_front(tmp_path, cache_dir, prepared):
    optimize(tmp_path, write_space(tmp_path), "--n-trials", "3")
    result = invoke("best", "--storage", f"sqlite:///{tmp_path}/s.db", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{tmp_path}/s.db")
    assert out["study"] == "default" and out["objective"] == "pareto"
    assert [t["trial"] for t in out["trials"]] == [t.number for t in best_trials(study)]
    assert {t.number for t in study.best_trials} == {t["trial"] for t in out["trials"]}
    for entry in out["trials"]:
        trial = study.trials[entry["trial"]]
        assert entry["values"] == {"learn": trial.values[0], "forget": trial.values[1]}
        assert entry["params"] == trial.params and entry["config"]["method"] == trial.params["method"]
    table = invoke("best", "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path)
    assert table.returncode == 0 and "Pareto front of 'default'" in table.stdout


def test_reading_commands_choose_the_study(tmp_path, cache_dir, prepared):
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(ConfigError, match="no such file"):
        load_study(url, None)
    space = load_space(write_space(tmp_path))
    from lorasweep.study import open_study

    open_study("one", url, space, seed=0)
    assert load_study(url, None).study_name == "one"
    open_study("two", url, space, seed=0)
    with pytest.raises(ConfigError, match="--study is needed: .* holds 2 studies: one, two"):
        load_study(url, None)
    with pytest.raises(ConfigError, match="--study 'three': not in .* \\(studies there: one, two\\)"):
        load_study(url, "three")
    result = invoke("best", "--storage", url, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "holds 2 studies" in result.stderr


def test_a_plain_optuna_study_is_read_without_our_attrs(tmp_path, cache_dir):
    url = f"sqlite:///{tmp_path}/plain.db"
    study = optuna.create_study(study_name="plain", storage=url, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=4)
    result = invoke("best", "--storage", url, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["objective"] == "pareto" and all(t["config"] is None for t in out["trials"])


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"objective": "maximal"}, "objective 'maximal' is unknown (allowed: pareto, constrained)"),
        ({"objective": "constrained"}, "objective 'constrained' needs forget_tolerance"),
        ({"pruner": {"name": "median"}}, "pruner 'median' needs objective: constrained"),
        (
            {"objective": "constrained", "forget_tolerance": 0.3, "pruner": {"name": "asha"}},
            "pruner name 'asha' is unknown (allowed: none, median, hyperband, dominance)",
        ),
        (
            {
                "objective": "constrained",
                "forget_tolerance": 0.3,
                "pruner": {"name": "median", "patience": 2},
            },
            "unknown pruner option 'patience' for median",
        ),
        (
            {"objective": "constrained", "forget_tolerance": -1},
            "'forget_tolerance' is -1.0; allowed: a number >= 0",
        ),
        (
            {"objective": "constrained", "forget_tolerance": 0.3, "pruner": {"name": "dominance"}},
            "pruner 'dominance' needs objective: pareto",
        ),
        (
            {"memory_objective": "vram"},
            "memory_objective 'vram' is unknown (allowed: peak_memory, trainable_params)",
        ),
        (
            {"objective": "constrained", "forget_tolerance": 0.3, "memory_objective": "peak_memory"},
            "memory_objective needs objective: pareto (a constrained study has the one objective learn)",
        ),
        (
            {"memory_objective": "trainable_params", "pruner": {"name": "dominance"}},
            "pruner 'dominance' compares (learn, forget) points and cannot weigh a third objective",
        ),
        ({"memory_budget_gb": 0}, "field 'memory_budget_gb' is 0.0; allowed: a number of GiB > 0"),
        ({"memory_objective": ["peak_memory"]}, "memory_objective '['peak_memory']' is unknown (allowed: "),
        ({"memory_budget_gb": "lots"}, "'memory_budget_gb' is 'lots'"),
    ],
)
def test_objective_and_pruner_are_validated(tmp_path, top, message):
    with pytest.raises(ConfigError) as info:
        load_space(write_space(tmp_path, **top))
    assert message in str(info.value)
