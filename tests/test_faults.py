"""Faults a sweep must survive: Ctrl-C or SIGTERM mid-trial, a worker killed at any point of a
trial's life, a trial out of memory."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import TINY_SPACE, optimize

from lorasweep.objective import TRIAL_FAILURES, make_objective
from lorasweep.pending import folder
from lorasweep.search_space import load_space
from lorasweep.study import open_study
from lorasweep.workers import tally

HEARTBEAT = ("--heartbeat-interval", "1", "--grace-period", "3")
KILL_POINTS_DIR = Path(__file__).parent / "kill_points"  # its sitecustomize.py kills at a point
# a trial's life, in order (tests/kill_points/sitecustomize.py says where each is)
KILL_POINTS = [
    "queued",  # tagged with its run, still waiting in Optuna's queue
    "created",  # RUNNING, before the sampler
    "sampled",  # the objective started
    "preparing",  # building the trial's model
    "training",  # at an intermediate evaluation
    "evaluating",  # the final evaluation
    "kept",  # the result kept on disk (pending.py), nothing written yet
    "writing",  # the result half written
    "uploading",  # the trial.yaml artifact
    "told",  # the result recorded, its kept copy not yet removed
]


def running_trial(url: str, training: bool = False) -> bool:
    """Whether a trial is running; with `training`, one inside its training loop (it has reported
    its first intermediate evaluation, half-way through)."""
    try:
        study = optuna.load_study(study_name="default", storage=url)
    except KeyError:
        return False
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    return any(t.intermediate_values for t in running) if training else bool(running)


def heartbeat_age_s(url: str) -> float:
    """Seconds since the study's latest trial heartbeat, as Optuna reads it: the database's clock, in
    whole seconds (SQLite's CURRENT_TIMESTAMP)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        (age,) = db.execute(
            "SELECT (julianday(CURRENT_TIMESTAMP) - julianday(MAX(heartbeat))) * 86400 FROM trial_heartbeats"
        ).fetchone()
    return age


def worker_in_a_trial(tmp_path: Path, space: dict, *args: str) -> tuple[subprocess.Popen, str]:
    """`lorasweep optimize` on `space` (trials ~8x the tiny default), once it is training a trial."""
    space = {**space, "config": {**space["config"], "train_tokens": 8192 * 8}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    url = f"sqlite:///{tmp_path}/s.db"
    command = [
        sys.executable,
        "-m",
        "lorasweep",
        "optimize",
        "--space",
        "space.yaml",
        "--storage",
        url,
        *args,
    ]
    worker = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not running_trial(url, training=True):
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
        time.sleep(0.1)
    return worker, url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_fails_the_running_trial_and_the_study_resumes(sig, tmp_path, cache_dir, prepared):
    worker, url = worker_in_a_trial(tmp_path, TINY_SPACE, "--n-trials", "2")
    worker.send_signal(sig)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == (143 if sig == signal.SIGTERM else 130), stderr
    assert "interrupted: the running trial is marked failed; run again to resume" in stderr
    assert "Traceback" not in stderr
    (failed,) = optuna.load_study(study_name="default", storage=url).get_trials(
        states=(optuna.trial.TrialState.FAIL,)
    )
    assert failed.user_attrs["fail_reason"] == f"interrupted by {sig.name}"
    assert not running_trial(url)
    optimize(tmp_path, "space.yaml", "--n-trials", "1")  # resumes
    states = [t.state.name for t in optuna.load_study(study_name="default", storage=url).trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 1 and "RUNNING" not in states


def test_a_killed_workers_trial_is_failed_by_heartbeat_and_run_again(tmp_path, cache_dir, prepared):
    no_baselines = {k: v for k, v in TINY_SPACE.items() if k != "baselines"}
    worker, url = worker_in_a_trial(tmp_path, no_baselines, *HEARTBEAT, "--n-trials", "1")
    worker.kill()  # SIGKILL: no handler runs, the trial stays RUNNING in the storage
    worker.communicate()
    assert running_trial(url)
    while heartbeat_age_s(url) <= 3.5:  # past the grace period (3 s): its worker counts as dead
        time.sleep(0.1)
    optimize(tmp_path, "space.yaml", *HEARTBEAT, "--n-trials", "1")
    dead, retry = optuna.load_study(study_name="default", storage=url).trials
    assert dead.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == dead.params
    assert retry.user_attrs["retry_of"] == dead.number and retry.user_attrs["retry_history"] == [dead.number]


def test_a_trial_out_of_memory_is_failed_with_the_reason_and_the_sweep_goes_on(
    tmp_path, prepared, monkeypatch
):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    space = load_space(tmp_path / "space.yaml")
    study = open_study("oom", f"sqlite:///{tmp_path}/s.db", space, seed=0)
    real_step, injected = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):  # the first optimizer step of the sweep runs out of memory
        if not injected:
            injected.append(True)
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    study.optimize(make_objective(space), n_trials=2, catch=TRIAL_FAILURES)
    first, second = study.trials[:2]
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("OutOfMemoryError: injected: CUDA out of memory")
    assert second.state == optuna.trial.TrialState.COMPLETE


def test_a_worker_killed_at_any_point_of_a_trial_leaves_nothing_running(tmp_path, cache_dir, prepared):
    """Two workers, SIGKILLed at each of KILL_POINTS in turn (once each, in a trial that is not a
    retry; each killed worker is replaced): the run reaches its 12 trials, nothing is left RUNNING
    or queued, and each killed trial was run again (its retry recorded) or, once its result was
    kept, recorded from the kept copy instead of being trained again."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    url = f"sqlite:///{tmp_path}/s.db"
    (tmp_path / "killed").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(KILL_POINTS_DIR), os.environ.get("PYTHONPATH")])),
        "LORASWEEP_KILL_AT": ",".join(KILL_POINTS),
        "LORASWEEP_KILL_DIR": str(tmp_path / "killed"),
        "LORASWEEP_CACHE_DIR": str(cache_dir),
    }
    command = [sys.executable, "-m", "lorasweep", "optimize", "--space", "space.yaml", "--storage", url]
    # a grace period with room for a loaded machine: a live worker's heartbeat is never late by 5 s
    command += ["--workers", "2", "--n-trials", "12", "--replicates", "0"]
    command += ["--heartbeat-interval", "1", "--grace-period", "5"]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "killed by SIGKILL; replaced" in result.stderr
    killed = {p.name: int(p.read_text()) for p in (tmp_path / "killed").iterdir()}
    assert sorted(killed) == sorted(KILL_POINTS), "a point no worker reached"
    study = optuna.load_study(study_name="default", storage=url)
    trials = study.trials
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert tally(study, trials[0].user_attrs["run"]) == (12, 0)
    by_id = {t._trial_id: t for t in trials}
    for point, trial_id in killed.items():
        dead = by_id[trial_id]
        retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
        if point in ("queued", "told"):  # waiting still / the study had the result: run once
            assert dead.state.name == "COMPLETE" and not retries, point
        elif point in ("kept", "writing", "uploading"):  # recorded from the kept result
            assert dead.state.name == "COMPLETE" and not retries, point
            assert "result_recovered_by" in dead.user_attrs and "learn" in dead.user_attrs, point
        else:  # failed by its heartbeat and run again: the same configuration once it was sampled
            (retry,) = retries
            assert dead.state.name == "FAIL" and retry.state.name == "COMPLETE", point
            assert retry.params == dead.params or not dead.params, point
    assert states.count("FAIL") == 5  # the five points with nothing kept yet, and no other
    assert not list(folder(cache_dir, study).glob("*"))  # no kept result left behind
