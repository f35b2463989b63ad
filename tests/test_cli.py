"""The CLI on a real SQLite file, read back with optuna.load_study: the main job once in a real
subprocess, the rest in-process."""

import json
import math
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_SPACE, cli, invoke

RECORDED = {
    "method",
    "domain_loss",
    "general_qa_acc",
    "general_qa_delta",
    "trainable_params",
    "trainable_pct",
    "peak_mem_bytes",
    "train_tokens",
    "tokens_per_s",
    "wall_s",
    "seed",
    "config",
    "versions",
    "learn_curve",
    "target_modules_resolved",
}


def tiny_args(space, storage, n_trials) -> list[str]:
    return [
        "optimize",
        "--space",
        str(space),
        "--n-trials",
        str(n_trials),
        "--storage",
        storage,
        "--study",
        "tiny",
    ]


@pytest.fixture(scope="module")
def two_trial_study(tmp_path_factory, cache_dir, prepared):
    """The main job, `lorasweep optimize`, in a real subprocess: a study of its two baselines."""
    path = tmp_path_factory.mktemp("two_trials")
    (path / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    storage = f"sqlite:///{path}/study.db"
    result = cli(*tiny_args(path / "tiny.yaml", storage, 2), cwd=path, env_cache=cache_dir)
    assert result.returncode == 0, result.stderr
    return storage, result


def copy_of(two_trial_study, tmp_path) -> str:
    """A copy of the shared study for a test that adds to it."""
    storage, _ = two_trial_study
    shutil.copy(storage.removeprefix("sqlite:///"), tmp_path / "study.db")
    return f"sqlite:///{tmp_path}/study.db"


def test_optimize_records_a_complete_study(two_trial_study):
    storage, result = two_trial_study
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert study.metric_names == ["learn", "forget"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 6
    trials, replicas = complete[:2], complete[2:]
    # then each method's leader (here: its one trial) again with seeds 1 and 2, and the verdict
    assert sorted((t.user_attrs["replicate_of"], t.user_attrs["seed"]) for t in replicas) == [
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 2),
    ]
    assert "Verdict on method" in result.stdout and "3 seeds" in result.stdout
    # the two baselines run first: full FT, then LoRA rank 4 all-linear
    assert [t.user_attrs["method"] for t in trials] == ["full", "lora"]
    assert trials[1].user_attrs["target_modules_resolved"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    for t in trials:
        assert RECORDED <= set(t.user_attrs)
        learn, forget = t.values
        assert 0.0 <= learn <= 1.0 and math.isfinite(forget)
        assert t.user_attrs["config"]["learning_rate"] == t.params.get(
            "full_learning_rate", t.params.get("lora_learning_rate")
        )
        # intermediate learn values are stored (learning curves in the dashboard); the last is learn
        assert len(t.intermediate_values) == 2
        assert t.intermediate_values[max(t.intermediate_values)] == learn
    full, lora = trials
    assert full.user_attrs["trainable_pct"] == 100.0 and lora.user_attrs["trainable_pct"] < 100.0
    assert study.user_attrs["sampler"]["name"] == "tpe"
    assert study.user_attrs["sampler"]["multivariate"] is True
    assert "base_metrics" in study.user_attrs
    assert "Pareto front" in result.stdout and f"optuna-dashboard {storage}" in result.stdout


def test_optimize_resumes_an_existing_study(two_trial_study, tmp_path, tiny_space):
    storage = copy_of(two_trial_study, tmp_path)
    result = invoke(*tiny_args(tiny_space, storage, 1), "--replicates", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6 trials so far" in result.stdout
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 7
    assert [r["first_trial"] for r in study.user_attrs["sampler_runs"]] == [0, 6]


def test_recorded_config_runs_again_with_the_same_result(two_trial_study, tmp_path):
    storage, _ = two_trial_study
    trial = optuna.load_study(study_name="tiny", storage=storage).trials[1]
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(trial.user_attrs["config"]))
    result = invoke("run", "--config", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rerun = json.loads(result.stdout)
    # on CPU, with fixed seeds and threads, a trial is exactly reproducible
    assert (rerun["learn"], rerun["forget"]) == tuple(trial.values)


def test_run_prints_learn_and_forget(tmp_path, tiny_world, prepared):
    path = tmp_path / "trial.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "full",
                "learning_rate": 1e-3,
                "batch_size": 8,
                "max_length": 32,
                "train_tokens": 2048,
                "world": vars(tiny_world),
            }
        )
    )
    result = invoke("run", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "learn" in result.stdout and "forget" in result.stdout and "trainable_pct" in result.stdout


def space_with(tiny_space, path, value):
    space = yaml.safe_load(tiny_space.read_text())
    *parents, last = path.split(".")
    node = space
    for key in parents:
        node = node[key]
    node[last] = value
    tiny_space.write_text(yaml.safe_dump(space, sort_keys=False))
    return tiny_space


@pytest.mark.parametrize(
    ("edit", "args", "message"),
    [
        (("bogus", 1), (), "unknown key 'bogus'"),
        (("config.batch_size", "big"), (), "field 'batch_size' is 'big'; expected an integer"),
        (("params.rank.low", 20), (), "param 'rank': low 20 is greater than high 8"),
        (
            ("params.method.choices", ["lora", "adapter"]),
            (),
            "'adapter'; allowed: full, lora, rslora, dora, qlora",
        ),
        (("params.target_modules.choices", ["qkv"]), (), "'qkv'; allowed: all-linear, attention, qv, mlp"),
        (None, ("--space", "missing.yaml"), "missing.yaml: file not found"),
        (None, ("--storage", "sqlite:/nope.db"), "--storage 'sqlite:/nope.db': not a storage URL"),
        (None, ("--storage", "redis://localhost/0"), "not a storage URL"),
        (None, ("--n-trials", "0"), "--n-trials is 0"),
        (
            None,
            ("--storage", "postgresql://me:secret@127.0.0.1:1/db"),
            "'postgresql://me:***@127.0.0.1:1/db'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2_without_a_study(tmp_path, tiny_space, edit, args, message):
    if edit is not None:
        space_with(tiny_space, *edit)
    storage = f"sqlite:///{tmp_path}/study.db"
    result = invoke("optimize", "--space", str(tiny_space), "--storage", storage, *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "secret" not in result.stderr  # storage passwords are masked
    assert not (tmp_path / "study.db").exists()


def test_bad_input_leaves_an_existing_study_unchanged(two_trial_study, tmp_path, tiny_space):
    storage = copy_of(two_trial_study, tmp_path)
    before = optuna.load_study(study_name="tiny", storage=storage)
    space_with(tiny_space, "params.rank.high", 16)  # a different space for the same study
    result = invoke(
        "optimize", "--space", str(tiny_space), "--storage", storage, "--study", "tiny", cwd=tmp_path
    )
    assert result.returncode == 2 and "created with a different search space" in result.stderr
    after = optuna.load_study(study_name="tiny", storage=storage)
    assert len(after.trials) == len(before.trials) and after.user_attrs == before.user_attrs


def test_run_with_a_bad_config_is_one_line(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("method: adapter\n")
    result = invoke("run", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}: field 'method' is 'adapter'; allowed: full, lora, rslora, dora, qlora, peft"
    )


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("**/*.yaml"))


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_runs_on_the_test_world(shipped, tmp_path, tiny_world, prepared):
    space = yaml.safe_load(shipped.read_text())
    assert (
        shipped.read_text().startswith("# Question:") and "# Run:  lorasweep optimize" in shipped.read_text()
    )
    tiny = {
        "world": vars(tiny_world),
        "batch_size": 8,
        "max_length": 32,
        "train_tokens": 4096,
        "eval_points": 2,
    }
    space["config"].update({k: v for k, v in tiny.items() if k not in space["params"]})
    path = tmp_path / shipped.name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    storage = f"sqlite:///{tmp_path}/study.db"
    args = ("--space", str(path), "--n-trials", "2", "--storage", storage, "--replicates", "0")
    result = invoke("optimize", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="default", storage=storage).trials
    ran = [t for t in trials if t.state != optuna.trial.TrialState.WAITING]  # baselines may wait their turn
    assert [t.state.name for t in ran] == ["COMPLETE", "COMPLETE"], [
        t.user_attrs.get("fail_reason") for t in ran
    ]
