"""Several workers on one study: `lorasweep optimize --workers N`."""

import math
import os
import signal
import subprocess
import sys
import time

import optuna
import typer.main
import yaml
from conftest import TINY_SPACE, cli

from lorasweep.cli import app
from lorasweep.workers import PER_WORKER, cpu_sets, worker_command


def test_cores_are_shared_out():
    assert cpu_sets(2, [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert cpu_sets(4, [0, 1]) == [[0], [1], [0], [1]]  # more workers than cores: shared in turn


def test_every_optimize_option_reaches_the_workers():
    """A worker runs the parent's optimize command: every option the user gave, but those the
    parent sets per worker. Built from the command's own options, so a new one is never dropped."""
    command = typer.main.get_command(app).commands["optimize"]
    given = []
    for param in command.params:
        given += [param.opts[0]] if param.is_flag else [param.opts[0], "7"]
    parent = command.make_context("optimize", given)
    argv = worker_command(parent)
    assert argv[:4] == [sys.executable, "-m", "lorasweep", "optimize"]
    worker = command.make_context("optimize", argv[4:])
    for param in command.params:
        if param.name in PER_WORKER:
            assert worker.params[param.name] == param.default, param.name
        else:
            assert parent.params[param.name] != param.default, param.name  # the test sets every option
            assert worker.params[param.name] == parent.params[param.name], param.name


def test_four_workers_share_one_sqlite_study(tmp_path, cache_dir, prepared):
    four_workers_share_one_study(f"sqlite:///{tmp_path}/s.db", tmp_path, cache_dir)


def four_workers_share_one_study(url: str, tmp_path, cache_dir) -> None:
    """`optimize --workers 4 --n-trials 8 --replicates 1` on `url`: 8 complete trials, none lost or
    repeated, the methods (`compare: method`) 4 each, as the workers take turns; then each
    method's leader once more, with seed 1, by the same workers."""
    space = {**TINY_SPACE, "compare": "method"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    args = [
        "--space",
        "space.yaml",
        "--storage",
        url,
        "--workers",
        "4",
        "--n-trials",
        "8",
        "--replicates",
        "1",
    ]
    result = cli("optimize", *args, cwd=tmp_path, env_cache=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr  # the password is masked wherever printed
    assert "adding 8 from space.yaml with 4 workers" in " ".join(result.stdout.split())  # rich wraps
    trials = optuna.load_study(study_name="default", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 10  # none lost, none extra
    trials, replicas = trials[:8], trials[8:]
    assert sorted(trials[t.user_attrs["replicate_of"]].params["method"] for t in replicas) == ["full", "lora"]
    assert [t.user_attrs["seed"] for t in replicas] == [1, 1]
    assert "Verdict on method" in result.stdout
    assert sorted(t.number for t in trials) == list(range(8))
    for baseline in TINY_SPACE["baselines"]:  # each enqueued baseline ran exactly once
        ran = [t for t in trials if all(t.user_attrs["config"][k] == v for k, v in baseline.items())]
        assert len(ran) == 1
    assert len({t.user_attrs["run"] for t in trials}) == 1
    assert sorted(t.params["method"] for t in trials) == ["full"] * 4 + ["lora"] * 4
    sampled = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(sampled)) == 8  # workers draw with their own seeds: no duplicate configs
    for t in trials:
        assert {"learn", "forget", "config", "data_fingerprint", "threads", "run", "worker"} <= set(
            t.user_attrs
        )
        assert t.user_attrs["threads"] <= math.ceil(len(os.sched_getaffinity(0)) / 4)  # a share of the cores


def test_a_worker_killed_mid_trial_is_taken_over_and_the_run_reaches_its_total(tmp_path, cache_dir, prepared):
    space = {**TINY_SPACE, "config": {**TINY_SPACE["config"], "train_tokens": 8192 * 4}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    url = f"sqlite:///{tmp_path}/s.db"
    parent = subprocess.Popen(
        [sys.executable, "-m", "lorasweep", "optimize", "--space", "space.yaml", "--storage", url]
        + ["--workers", "2", "--n-trials", "4", "--heartbeat-interval", "1", "--grace-period", "3"]
        + ["--replicates", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = None
    deadline = time.monotonic() + 180
    while victim is None:  # a claimed trial whose objective has its config: inside its training
        assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
        time.sleep(0.1)
        victim = next((t for t in claimed_trials(url) if "config" in t.user_attrs), None)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    _, stderr = parent.communicate(timeout=300)
    assert parent.returncode == 0, stderr
    assert "stopped (killed by SIGKILL); the other workers took over its trials" in stderr
    trials = optuna.load_study(study_name="default", storage=url).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1 and len(trials) == 5
    (dead,) = [t for t in trials if t.state.name == "FAIL"]
    assert dead.number == victim.number
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state.name == "COMPLETE" and retry.params == dead.params
    assert retry.user_attrs["retry_history"] == [dead.number]


def claimed_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's running trials that a worker has claimed (they name their worker's pid)."""
    try:
        study = optuna.load_study(study_name="default", storage=url)
    except KeyError:
        return []
    return [
        t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if "worker" in t.user_attrs
    ]
