"""`lorasweep report` on tiny studies: real trials, failed and pruned ones, and plain Optuna studies."""

import optuna
import pytest
import yaml
from conftest import invoke, optimize

from lorasweep.analysis import Row, critical_mixture_ratio, front, spearman
from lorasweep.findings import findings
from lorasweep.plots import plot


def row(number, method, lr, learn, forget, rank=None, targets=None, replay=0.0):
    return Row(number, method, lr, rank, targets, replay, learn, forget, 0, 0, 0.0)


def test_front_keeps_only_undominated_points():
    rows = [
        row(0, "lora", 1e-3, 0.2, 0.1),
        row(1, "lora", 1e-3, 0.5, 0.3),
        row(2, "lora", 1e-3, 0.4, 0.4),
        row(3, "lora", 1e-3, 0.6, 0.9),
    ]
    assert [r.number for r in front(rows)] == [0, 1, 3]


def test_findings_on_constructed_trials():
    rows = [
        row(i, "full", lr, learn, forget)
        for i, (lr, learn, forget) in enumerate(
            [(1e-4, 0.2, 0.05), (3e-4, 0.4, 0.15), (1e-3, 0.8, 0.6), (3e-3, 0.1, 1.3)]
        )
    ]
    rows += [
        row(10 + i, "lora", lr, learn, forget, 16, "all-linear")
        for i, (lr, learn, forget) in enumerate(
            [(1e-3, 0.2, 0.2), (3e-3, 0.6, 0.3), (1e-2, 0.7, 1.1), (3e-2, 0.0, 1.7)]
        )
    ]
    rows += [row(20, "lora", 3e-3, 0.12, 0.35, 16, "qv")]
    verdicts = {f.claim: (f.verdict, f.evidence) for f in findings(rows, tolerance=0.7)}
    assert verdicts["All-linear LoRA learns more than q,v-only at equal rank"] == (
        "confirms",
        "rank 16: 0.700 vs 0.120",
    )
    assert verdicts["Within full, a higher LR forgets more"][0] == "confirms"
    # within tolerance 0.7: best full 1e-3 (0.8), best LoRA 3e-3 (0.6): 3x
    assert verdicts["Best LoRA LR is about 10x the best full-FT LR"] == (
        "confirms",
        "LoRA 3.00e-03 / full 1.00e-03 = 3.0x",
    )
    assert verdicts["More replay lowers forgetting"][0] == "not enough trials"
    few = {f.claim: f.verdict for f in findings(rows[:2], tolerance=None)}
    assert few["Within full, a higher LR forgets more"] == "not enough trials"
    assert few["All-linear LoRA learns more than q,v-only at equal rank"] == "not enough trials"


def test_critical_mixture_ratio_is_the_largest_domain_share_within_tolerance():
    rows = [
        row(i, "full", 1e-3, 0.8, f, replay=r)
        for i, (r, f) in enumerate([(0.0, 0.6), (0.1, 0.2), (0.3, 0.0)])
    ]
    assert critical_mixture_ratio(rows, 0.25) == pytest.approx(0.9)
    assert critical_mixture_ratio(rows, None) is None
    assert spearman([0.0, 0.1, 0.3], [0.6, 0.2, 0.0]) == pytest.approx(-1.0)


def test_report_of_a_real_study_with_failed_and_pruned_trials(tmp_path, cache_dir, prepared, tiny_space):
    url = optimize(tmp_path, tiny_space, "--n-trials", "3")
    study = optuna.load_study(study_name="default", storage=url)
    # a failed and a pruned trial, as a crash or a pruner would leave them
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    report = ("report", "--storage", url, "--artifact-dir", str(tmp_path / "artifacts"))
    result = invoke(*report, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "results" / "default"
    text = (out / "report.md").read_text()
    assert "3 complete" in text and "1 fail" in text and "1 pruned" in text
    for section in (
        "## Findings",
        "## Pareto front",
        "## Learning rate",
        "## Targets and rank",
        "## Parameter importances",
        "## Cost",
    ):
        assert section in text
    # three trials settle none of the claims, nor importances: the report says so instead of guessing
    assert (
        "| Best LoRA LR is about 10x the best full-FT LR (LoRA Without Regret) | not enough trials |" in text
    )
    assert "| Within full, a higher LR forgets more (2308.04014) | not enough trials |" in text
    assert "importances need 8 or more" in text
    for name in ("pareto.png", "lr.png", "pareto.html", "history.html"):
        assert (out / name).stat().st_size > 1000
    artifacts = optuna.artifacts.get_all_artifact_meta(optuna.load_study(study_name="default", storage=url))
    assert {a.filename for a in artifacts} == {
        "report.md",
        "pareto.png",
        "lr.png",
        "pareto.html",
        "history.html",
    }
    # a report written again replaces its artifacts' content rather than adding copies
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    again = invoke(*report, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    artifacts = optuna.artifacts.get_all_artifact_meta(optuna.load_study(study_name="default", storage=url))
    assert len(artifacts) == 5
    report_id = next(a.artifact_id for a in artifacts if a.filename == "report.md")
    stored = (tmp_path / "artifacts" / report_id).read_text()
    assert "2 fail" in stored and stored == (out / "report.md").read_text()


def test_report_of_a_plain_optuna_study_says_what_is_missing(tmp_path, cache_dir):
    url = f"sqlite:///{tmp_path}/plain.db"
    study = optuna.create_study(study_name="plain", storage=url, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=3)
    result = invoke(
        "report",
        "--storage",
        url,
        "--out",
        str(tmp_path / "r"),
        "--artifact-dir",
        str(tmp_path / "a"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "No completed trial with lorasweep's records" in (tmp_path / "r" / "report.md").read_text()


def test_report_of_a_replay_study_estimates_the_critical_mixture_ratio(
    tmp_path, cache_dir, prepared, tiny_space
):
    space = yaml.safe_load(tiny_space.read_text())
    space["params"]["replay_ratio"] = {"choices": [0.0, 0.3, 0.6]}
    space["baselines"] = []
    space["sampler"] = {"name": "random"}
    tiny_space.write_text(yaml.safe_dump(space, sort_keys=False))
    url = optimize(tmp_path, tiny_space, "--n-trials", "4")
    result = invoke(
        "report",
        "--storage",
        url,
        "--forget-tolerance",
        "10",
        "--artifact-dir",
        str(tmp_path / "a"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "results" / "default" / "report.md").read_text()
    assert "## Replay" in text and "Estimated critical mixture ratio" in text
    assert (tmp_path / "results" / "default" / "replay.png").exists()


def test_plots_take_more_methods_than_a_palette_has_colours(tmp_path):
    # a space of LoRA inits x LoRA+ ratios and PEFT types makes 20 or more variants
    rows = [
        Row(i, f"lora variant{i}", 1e-3 * (1 + i), 8, "qv", 0.0, 0.1 * (i % 7), 0.05 * i, 1000 * i, 0, 1.0)
        for i in range(23)
    ]
    for r in rows:
        r.peak_memory_gb = 0.01 * (1 + r.number)
    files = plot(rows, tmp_path, "peak_memory_gb", budget=0.1)
    assert [f.name for f in files] == ["pareto.png", "lr.png", "memory.png"]
    assert all(f.stat().st_size > 0 for f in files)
