"""Memory as a third objective (`memory_objective`) and as a constraint (`memory_budget_gb`)."""

import optuna
import pytest
from conftest import invoke, optimize, write_space

from lorasweep.study import best_trials, load_study

GiB = 2**30
# On the tiny world's model, full FT is estimated at 0.00296 GiB and LoRA at 0.00253..0.00278
# (memory.py, on a CPU): this budget takes LoRA and leaves full FT out.
BUDGET = 0.0029


def test_a_memory_budget_leaves_out_untrained_what_cannot_fit_and_the_front_is_over_three_objectives(
    tmp_path, cache_dir, prepared
):
    space = write_space(tmp_path, memory_objective="peak_memory", memory_budget_gb=BUDGET)
    url = optimize(tmp_path, space, "--n-trials", "4")
    study = load_study(url, None)
    assert study.metric_names == ["learn", "forget", "peak_memory_gb"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.user_attrs["memory_objective"] == "peak_memory"
    assert study.user_attrs["memory_budget_gb"] == BUDGET

    full = [t for t in study.trials if t.params["method"] == "full"]
    lora = [t for t in study.trials if t.params["method"] == "lora"]
    assert full and lora
    for t in full:  # over the budget by its estimate: pruned before anything is loaded
        assert t.state == optuna.trial.TrialState.PRUNED and "learn" not in t.user_attrs
        estimate = t.user_attrs["memory_estimate_bytes"] / GiB
        assert t.constraints["memory"] == pytest.approx(estimate - BUDGET) and estimate > BUDGET
        assert t.user_attrs["prune_reason"].startswith(f"memory estimate {estimate:.3g} GiB (about 0.0 GiB")
        assert "exceeds memory_budget_gb 0.0029: not trained" in t.user_attrs["prune_reason"]
    for t in lora:  # trained; on a CPU the memory objective reads the estimate
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.user_attrs["peak_memory_source"] == "estimated"
        assert t.values[2] == t.user_attrs["peak_memory_gb"] == t.user_attrs["memory_estimate_bytes"] / GiB
        assert t.constraints["memory"] == pytest.approx(t.values[2] - BUDGET) and t.constraints["memory"] <= 0
    front = best_trials(study)
    assert front and {t.number for t in front} <= {t.number for t in lora}
    for t in lora:  # the front is over all three objectives: nothing on it is dominated in 3-D
        if t not in front:
            assert any(
                u.values[0] >= t.values[0] and u.values[1] <= t.values[1] and u.values[2] <= t.values[2]
                for u in front
            )

    best = invoke("best", "--storage", url, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    assert "learn up, forget down, peak_memory_gb down, peak memory <= 0.0029 GiB" in best.stdout
    report = invoke("report", "--storage", url, "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Third objective: peak memory GiB, minimised" in text
    assert "Memory budget: 0.0029 GiB per device" in text
    assert f"{len(full)} not trained: their estimate was over" in text
    assert f"- full FT: none within the memory budget (all its {len(full)} trial" in text
    assert "lorasweep optimize adds trials" not in text  # more trials would not bring full FT within it
    assert (
        "| learn | forget | peak memory GiB | seeds |" in text
        and "![learn / peak memory GiB](memory.png)" in text
    )
    assert (tmp_path / "r" / "memory.png").stat().st_size > 0 and (tmp_path / "r" / "pareto.html").exists()


def test_trainable_parameters_as_the_third_objective(tmp_path, cache_dir, prepared):
    space = write_space(tmp_path, memory_objective="trainable_params")
    study = load_study(optimize(tmp_path, space, "--n-trials", "2"), None)  # the two baselines
    assert study.metric_names == ["learn", "forget", "trainable_params"]
    full, lora = sorted(study.trials, key=lambda t: t.params["method"])
    assert full.values[2] == full.user_attrs["trainable_params"] == full.user_attrs["total_params"]
    assert lora.values[2] == lora.user_attrs["trainable_params"] < full.values[2]
    assert not full.constraints and not lora.constraints  # no budget asked: no constraint
    assert lora in best_trials(study)  # fewest trainable parameters: never dominated


def test_a_constrained_study_takes_a_budget_beside_its_forget_tolerance(tmp_path, cache_dir, prepared):
    space = write_space(tmp_path, objective="constrained", forget_tolerance=10.0, memory_budget_gb=BUDGET)
    study = load_study(optimize(tmp_path, space, "--n-trials", "2"), None)
    full, lora = sorted(study.trials, key=lambda t: t.params["method"])
    assert full.state == optuna.trial.TrialState.PRUNED and full.constraints["memory"] > 0
    assert lora.state == optuna.trial.TrialState.COMPLETE and len(lora.values) == 1
    assert set(lora.constraints) == {"forget", "memory"}
    assert lora.constraints["forget"] == pytest.approx(lora.user_attrs["forget"] - 10.0)
    assert best_trials(study) == [lora]


def test_compared_arms_stop_queueing_an_arm_whose_trials_are_all_over_the_budget(
    tmp_path, cache_dir, prepared
):
    space = write_space(tmp_path, memory_budget_gb=BUDGET, compare="method")
    study = load_study(optimize(tmp_path, space, "--n-trials", "7"), None)
    methods = [t.params["method"] for t in study.trials]
    # the baselines (full, lora), then turns (lora first of equal counts) until two full trials
    # have been over the budget; LoRA for the rest
    assert methods == ["full", "lora", "lora", "full", "lora", "lora", "lora"], methods
    assert all(t.constraints["memory"] > 0 for t in study.trials if t.params["method"] == "full")
