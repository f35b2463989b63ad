"""Studies lorasweep did not write, or wrote long ago: best, report, reproduce and export say what
is missing instead of crashing.

The studies are built directly with Optuna (no training), one database for the module:

- `plain`: plain single-objective Optuna (default direction, minimize), params `x`, no user attrs,
  except one trial whose `config` attr is another tool's string, not lorasweep's config;
- `plain2`: plain two-objective (maximize, minimize), no metric names;
- `old`: as an older lorasweep wrote it: metric names, but no objective, space, sampler or
  base_metrics study attrs; trials without learn curves, fingerprints, threads or cost, one
  completed trial without a config, one failed trial with one;
- `unfinished`: a constrained lorasweep study whose trials failed, were pruned or still run;
- `empty`: no trials at all.

Reading commands (best, report) show what they can and name each missing record with what they
did instead; commands that train a trial again (reproduce, export) exit 2 with one line naming
the record they need.
"""

from __future__ import annotations

import copy
import json
import types

import optuna
import pytest
from conftest import invoke
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from lorasweep.analysis import gaps
from lorasweep.report import default_out, write_report
from lorasweep.reproduce import changed_inputs, recorded_trial, trial_config
from lorasweep.validation import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names

# a config as an older lorasweep recorded it: fewer fields than today's, alpha not resolved
OLD_FULL = {"method": "full", "rank": 16, "target_modules": "all-linear", "learning_rate": 1e-3, "seed": 0}
OLD_LORA = {**OLD_FULL, "method": "lora", "rank": 4, "alpha": None, "learning_rate": 1e-2}
METHOD = {"method": CategoricalDistribution(["full", "lora"])}


def trial(params: dict, distributions: dict, values: list[float], **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(params=params, distributions=distributions, values=values, user_attrs=attrs)


def build(url: str) -> None:
    x = {"x": FloatDistribution(-2, 2)}
    plain = optuna.create_study(study_name="plain", storage=url)
    plain.add_trial(trial({"x": 1.5}, x, [2.25], config="adam, from another tool"))
    plain.add_trial(trial({"x": -0.5}, x, [0.25]))
    plain.add_trial(trial({"x": 1.0}, x, [1.0]))

    xy = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    plain2 = optuna.create_study(study_name="plain2", storage=url, directions=["maximize", "minimize"])
    for v in ([0.2, 0.1], [0.8, 0.5], [0.5, 0.6]):  # the third is dominated by the second
        plain2.add_trial(trial({"x": v[0], "y": v[1]}, xy, v))

    old = optuna.create_study(study_name="old", storage=url, directions=["maximize", "minimize"])
    old.set_metric_names(["learn", "forget"])
    old.set_user_attr("lorasweep_version", "0.0.9")
    lr = {"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)}
    for config, (learn, forget), attrs in (
        (OLD_FULL, (0.5, 0.3), {"config": OLD_FULL, "trainable_params": 2000}),
        (OLD_LORA, (0.6, 0.2), {"config": OLD_LORA, "trainable_params": 300}),
        ({**OLD_LORA, "learning_rate": 1e-4}, (0.1, 0.9), {}),  # no config; dominated
    ):
        params = {"method": config["method"], "learning_rate": config["learning_rate"]}
        old.add_trial(trial(params, METHOD | lr, [learn, forget], learn=learn, forget=forget, **attrs))
    failed = old.ask()
    failed.set_user_attr("config", OLD_LORA)
    failed.set_user_attr("fail_reason", "NonFiniteLoss: loss is nan at step 3")
    old.tell(failed, state=TrialState.FAIL)

    unfinished = optuna.create_study(study_name="unfinished", storage=url, direction="maximize")
    unfinished.set_metric_names(["learn"])
    unfinished.set_user_attr("objective", "constrained")
    unfinished.set_user_attr("forget_tolerance", 0.5)
    unfinished.set_user_attr("base_metrics", {"learn": 0.0, "general_loss": 3.0, "general_qa_acc": 0.5})
    failed = unfinished.ask()
    failed.set_user_attr("config", OLD_FULL)
    unfinished.tell(failed, state=TrialState.FAIL)
    unfinished.tell(unfinished.ask(), state=TrialState.PRUNED)
    unfinished.ask()  # still running, or its worker died

    optuna.create_study(study_name="empty", storage=url)

    remote = optuna.create_study(study_name="remote", storage=url, directions=["maximize", "minimize"])
    config = {**OLD_LORA, "model": "someone/model-with-code", "trust_remote_code": True}
    remote.add_trial(trial({}, {}, [0.5, 0.1], config=config, learn=0.5, forget=0.1))


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("old")
    url = f"sqlite:///{path}/old.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    build(url)
    return path, url


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def run(db, cache_dir, *args: str):
    """The real command on the module's database; never a traceback, whatever the exit code."""
    path, url = db
    result = invoke(*args, "--storage", url, cwd=path)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr


# best: what it can, and each missing record named


def test_best_of_a_plain_study_shows_params_and_values_and_names_what_is_missing(db, cache_dir):
    result = run(db, cache_dir, "best", "--study", "plain")
    assert result.returncode == 0, result.stderr
    assert "Best trial of 'plain' (min value)" in result.stdout
    assert "x=-0.5" in result.stdout and "0.25" in result.stdout  # the minimum
    assert (
        "note: study attr 'objective' not recorded: read as constrained from its 1 direction" in result.stdout
    )
    # another tool's `config` attr is not taken for lorasweep's
    assert "note: trial attr 'config' on trial " in result.stdout


def test_best_json_of_a_plain_two_objective_study(db, cache_dir):
    result = run(db, cache_dir, "best", "--study", "plain2", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["objective"] == "pareto" and [t["trial"] for t in out["trials"]] == [1, 0]
    assert out["trials"][0]["values"] == {"value 0": 0.8, "value 1": 0.5}
    assert out["trials"][0]["params"] == {"x": 0.8, "y": 0.5} and out["trials"][0]["config"] is None
    assert [(m["attr"], m["trials"]) for m in out["missing"]] == [("objective", None), ("config", [0, 1])]


def test_best_of_an_older_lorasweep_study_is_the_usual_table(db, cache_dir):
    result = run(db, cache_dir, "best", "--study", "old")
    assert result.returncode == 0, result.stderr
    assert "Pareto front of 'old' (learn up, forget down)" in result.stdout
    assert "lora" in result.stdout and "1.00e-02" in result.stdout and "0.600" in result.stdout
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert notes == ["note: study attr 'objective' not recorded: read as pareto from its 2 directions"]


def test_best_of_studies_without_a_completed_trial(db, capsys):
    from lorasweep.display import print_best

    _, url = db
    print_best(load(url, "unfinished"))
    print_best(load(url, "empty"))
    out = capsys.readouterr().out
    assert (
        "Best feasible trial of 'unfinished' (max learn, forget <= 0.5): no completed feasible trial yet"
        in out
    )
    assert "Best trial of 'empty' (min value): no completed feasible trial yet" in out
    assert out.count("note: ") == 1  # the empty plain study's objective; unfinished has its attrs


# report: the sections it has data for, and a list of what is missing


def test_report_of_an_older_lorasweep_study_names_what_it_left_out(db, cache_dir):
    path, _ = db
    out = path / "report-old"
    result = run(
        db, cache_dir, "report", "--study", "old", "--out", str(out), "--artifact-dir", str(path / "a")
    )
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert "Trials: 3 complete, 1 fail." in text
    missing = text.split("## Missing records")[1].split("##")[0]
    for line in (
        "- study attr 'objective' not recorded: read as pareto",
        "- study attr 'base_metrics' not recorded: the base model's own metrics are left out",
        "- study attr 'forget_tolerance' not recorded: best LRs are taken over all trials",
        "- trial attr 'config' on trial 2 not recorded: left out of the comparison",
        "- trial attr 'peak_mem_bytes' on 2 trials (0, 1) not recorded: left out of the cost medians",
    ):
        assert line in missing, missing
    assert "trainable_params" not in missing  # both compared trials recorded it
    for section in ("## Findings", "## Pareto front", "## Learning rate", "## Cost"):
        assert section in text
    assert "| full | 2,000 | not recorded | not recorded | 1 |" in text
    assert (out / "pareto.png").exists() and (out / "pareto.html").exists()
    assert "note: trial attr 'config' on trial 2 not recorded" in result.stdout


def test_report_of_a_study_without_completed_trials(db, cache_dir):
    path, _ = db
    out = path / "report-unfinished"
    result = run(
        db, cache_dir, "report", "--study", "unfinished", "--out", str(out), "--artifact-dir", str(path / "a")
    )
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert "Trials: 1 fail, 1 pruned, 1 running." in text
    assert "No completed trial with lorasweep's records" in text and "## Missing records" not in text
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_report_of_plain_and_empty_studies(db, tmp_path):
    _, url = db
    files = write_report(load(url, "plain2"), tmp_path / "plain2")
    assert sorted(f.name for f in files) == ["history.html", "pareto.html", "report.md"]
    text = (tmp_path / "plain2" / "report.md").read_text()
    assert "- trial attr 'config' on 3 trials (0, 1, 2) not recorded" in text
    assert "Optuna's plots of the values: [history.html](history.html), [pareto.html](pareto.html)" in text
    assert "importances need 8 or more" in text

    # a constrained-looking plain study: forget is asked of no trial without a config
    plain = load(url, "plain")
    assert [(g.attr, g.trials) for g in gaps(plain, tolerance=0.1)] == [
        ("objective", None),
        ("base_metrics", None),
        ("config", [0, 1, 2]),
    ]
    assert [f.name for f in write_report(plain, tmp_path / "plain")] == ["report.md", "history.html"]

    files = write_report(load(url, "empty"), tmp_path / "empty")
    text = (tmp_path / "empty" / "report.md").read_text()
    assert files == [tmp_path / "empty" / "report.md"] and "Trials: none." in text


# reproduce and export: one line naming the record they need, exit 2, nothing written


def test_reproduce_needs_a_recorded_config(db, cache_dir):
    error = one_line_error(run(db, cache_dir, "reproduce", "--study", "plain", "--best"))
    assert error == (
        "error: trial 1 of study 'plain' has no recorded config (user attr 'config'): the trial was not "
        "written by lorasweep optimize (plain Optuna or another tool), cannot reproduce\n"
    )


def test_reproduce_needs_recorded_metrics(db, cache_dir):
    error = one_line_error(run(db, cache_dir, "reproduce", "--study", "unfinished", "--trial", "0"))
    assert error == (
        "error: trial 0 of study 'unfinished' has no recorded metrics (user attr 'learn'): "
        "the trial failed, cannot reproduce\n"
    )


def test_export_needs_a_recorded_config_and_writes_nothing(db, cache_dir):
    path, _ = db
    out = path / "exported"
    error = one_line_error(run(db, cache_dir, "export", "--study", "old", "--trial", "2", "--out", str(out)))
    assert error.startswith("error: trial 2 of study 'old' has no recorded config (user attr 'config')")
    assert error.rstrip().endswith("cannot export") and not out.exists()
    error = one_line_error(
        run(db, cache_dir, "export", "--study", "empty", "--trial", "0", "--out", str(out))
    )
    assert error == "error: --trial 0: study 'empty' has no trials yet\n" and not out.exists()


@pytest.mark.parametrize(
    ("name", "number", "best", "message"),
    [
        ("unfinished", 1, False, "trial 1 of study 'unfinished' has no recorded config (user attr"),
        ("unfinished", 1, False, "'config'): the trial was pruned, cannot export"),
        ("unfinished", 2, False, "the trial is still running (or its worker died), cannot export"),
        ("unfinished", None, True, "study 'unfinished' has no completed (feasible) trial yet"),
        ("old", 3, False, "trial 3 of study 'old' has no recorded metrics (user attr 'learn'): the trial failed"),
        ("old", 4, False, "--trial 4: study 'old' has trials 0..3"),
        ("empty", None, True, "study 'empty' has no completed (feasible) trial yet"),
    ],
)  # fmt: skip
def test_recorded_trial_names_what_is_missing(db, name, number, best, message):
    _, url = db
    with pytest.raises(ConfigError) as info:
        recorded_trial(load(url, name), number, best, "export")
    assert message in str(info.value)


def test_an_older_lorasweep_trial_runs_again_with_warnings(db):
    _, url = db
    frozen = recorded_trial(load(url, "old"), 1, False)
    config = trial_config(frozen)
    assert (config.method, config.rank, config.learning_rate, config.threads) == ("lora", 4, 1e-2, 0)
    prepared = types.SimpleNamespace(corpus=types.SimpleNamespace(fingerprint="d"), base_fingerprint="b")
    changed, unknown = changed_inputs(frozen, prepared)
    assert changed == []
    assert [line.split(": ", 1) for line in unknown] == [
        ["trial attr 'data_fingerprint' on trial 1 not recorded", "cannot check whether the data changed (older lorasweep)"],
        ["trial attr 'base_fingerprint' on trial 1 not recorded", "cannot check whether the base model weights changed (older lorasweep)"],
        ["trial attr 'threads' on trial 1 not recorded", "the re-run uses this machine's thread count; on CPU the last digits may differ"],
    ]  # fmt: skip


def test_a_config_this_lorasweep_cannot_read_is_one_line(db):
    _, url = db
    frozen = copy.deepcopy(recorded_trial(load(url, "old"), 1, False))
    frozen.user_attrs["config"] = {**OLD_LORA, "dropped_knob": 3}
    with pytest.raises(ConfigError) as info:
        trial_config(frozen)
    message = str(info.value)
    assert message.startswith("trial 1's recorded config: unknown field 'dropped_knob'")
    assert message.endswith("(recorded by another lorasweep version)") and "\n" not in message


# safe defaults: a study from elsewhere runs no model code unasked, nor writes outside results/


def test_a_recorded_trust_remote_code_needs_the_flag(db):
    from lorasweep.reproduce import rerun_target

    _, url = db
    with pytest.raises(ConfigError) as info:
        rerun_target(url, "remote", 0, False, "export", trust_remote_code=False)
    assert str(info.value) == (
        "trial 0 recorded trust_remote_code: true (its model ships Python code); "
        "pass --trust-remote-code to export it"
    )
    assert rerun_target(url, "remote", 0, False, "export", trust_remote_code=True)[1].trust_remote_code


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/x", "..", "", "a\\b"])
def test_a_report_goes_under_results_or_to_the_given_out(name):
    with pytest.raises(ConfigError, match="is not a plain directory name: give --out DIR"):
        default_out(name)
    assert str(default_out("my study")) == "results/my study"
