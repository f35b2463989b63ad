"""Faults a sweep must survive: Ctrl-C or SIGTERM mid-trial, a killed worker, a trial out of memory."""

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
from lorasweep.search_space import load_space
from lorasweep.study import open_study

HEARTBEAT = ("--heartbeat-interval", "1", "--grace-period", "3")


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
