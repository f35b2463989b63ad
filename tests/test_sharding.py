"""Trials sharded with FSDP2 over two CPU processes (gloo): the unsharded trial's result, pruning,
export, a shard that dies, and no process left behind."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_SPACE, invoke

from lorasweep.config import TrialConfig
from lorasweep.prepare import evaluate_model
from lorasweep.sharding import ShardFailed
from lorasweep.trial import run_trial


def config(tiny_world, **fields) -> TrialConfig:
    small = {"batch_size": 8, "max_length": 32, "train_tokens": 8192, "eval_points": 2, "rank": 4}
    return TrialConfig(world=tiny_world, **(small | fields))


def test_sharded_full_ft_measures_what_the_unsharded_trial_does(tiny_world, cache_dir):
    plain_config = config(tiny_world, method="full", learning_rate=1e-3)
    plain = run_trial(plain_config, cache_dir=cache_dir)
    steps, evals = [], []
    sharded = run_trial(
        dataclasses.replace(plain_config, fsdp_shards=2),
        on_step=lambda step, total: steps.append((step, total)),
        on_eval=lambda *point: evals.append(point),
        cache_dir=cache_dir,
    )
    assert sharded.learn == plain.learn
    assert sharded.forget == pytest.approx(plain.forget, abs=1e-3)
    assert sharded.train_loss == pytest.approx(plain.train_loss, rel=1e-4)
    assert sharded.learn_curve.keys() == plain.learn_curve.keys()
    # each shard makes its model of the base itself (no copy): counted before, as the plain trial does
    assert (sharded.train_tokens, sharded.trainable_params, sharded.total_params) == (
        plain.train_tokens,
        plain.trainable_params,
        plain.total_params,
    )
    assert steps == [(s, plain.train_steps) for s in range(1, plain.train_steps + 1)]
    assert [step for step, *_ in evals] == [int(k) for k in plain.learn_curve][:-1]
    # each shard holds half of the states; together they hold what the plain trial's optimizer did
    assert sharded.memory_estimate["optimizer"] == plain.memory_estimate["optimizer"] // 2
    assert sharded.optimizer_state_bytes == pytest.approx(plain.optimizer_state_bytes, rel=0.01)
    assert multiprocessing.active_children() == []


def test_run_command_runs_a_sharded_lora_trial_as_the_unsharded_one(tiny_world, cache_dir, tmp_path):
    plain_config = config(tiny_world, method="lora", learning_rate=1e-2)
    plain = run_trial(plain_config, cache_dir=cache_dir)
    path = tmp_path / "trial.yaml"
    dataclasses.replace(plain_config, fsdp_shards=2).to_yaml(path)
    result = invoke("run", "--config", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sharded = json.loads(result.stdout)
    assert sharded["learn"] == plain.learn
    assert sharded["forget"] == pytest.approx(plain.forget, abs=1e-3)
    assert sharded["config"]["fsdp_shards"] == 2
    assert (sharded["trainable_params"], sharded["total_params"]) == (
        plain.trainable_params,
        plain.total_params,
    )


def test_pruning_a_sharded_trial_stops_every_shard(tiny_world, cache_dir):
    def prune(step, learn, forget):
        raise optuna.TrialPruned(f"at step {step}")

    started = time.monotonic()
    with pytest.raises(optuna.TrialPruned, match="at step"):
        run_trial(config(tiny_world, fsdp_shards=2, eval_points=4), on_eval=prune, cache_dir=cache_dir)
    assert multiprocessing.active_children() == []
    assert time.monotonic() - started < 120


def test_a_dead_shard_fails_the_trial_with_the_reason(tiny_world, cache_dir):
    def kill_a_shard(step, total):
        if step == 3:
            shards = sorted(multiprocessing.active_children(), key=lambda p: p.name)
            os.kill(shards[1].pid, signal.SIGKILL)

    with pytest.raises(ShardFailed, match="shard 1 of 2 was killed by SIGKILL during the trial"):
        run_trial(config(tiny_world, fsdp_shards=2), on_step=kill_a_shard, cache_dir=cache_dir)
    assert multiprocessing.active_children() == []


def test_trained_sharded_model_comes_back_whole(tiny_world, cache_dir):
    """What export saves: the shards' weights gathered into one model that scores the recorded learn."""
    got = {}

    def trained(model, prepared):
        got["metrics"] = evaluate_model(model, prepared)

    result = run_trial(
        config(tiny_world, method="lora", learning_rate=1e-2, fsdp_shards=2),
        on_trained=trained,
        cache_dir=cache_dir,
    )
    assert got["metrics"]["learn"] == result.learn
    assert got["metrics"]["general_loss"] == pytest.approx(result.general_loss, abs=1e-5)


def _tagged_processes(tag: str) -> list[int]:
    """Processes whose environment carries `tag`: a test's CLI and everything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _shard_pids(tag: str, parent: int) -> list[int]:
    """The shard processes `parent` started (multiprocessing's resource tracker is not one)."""
    pids = []
    for pid in _tagged_processes(tag):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"PPid:\t{parent}\n" in status and b"spawn_main" in command:
            pids.append(pid)
    return sorted(pids)


def _wait_for(condition, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_optimize_fails_a_trial_whose_shard_dies_and_goes_on(tmp_path, cache_dir):
    """The real CLI: a shard SIGKILLed mid-trial fails that trial with the reason, the next trial
    runs, and when the worker itself is killed its shards die with it."""
    space = dict(TINY_SPACE, params={"method": {"choices": ["lora"]}}, baselines=[])
    space["config"] = dict(space["config"], fsdp_shards=2, train_tokens=40_000, eval_points=1)
    path = tmp_path / "shards.yaml"
    path.write_text(yaml.safe_dump(space))
    tag = f"LORASWEEP_TEST_TAG={os.getpid()}-{time.time_ns()}"
    name, value = tag.split("=")
    url = f"sqlite:///{tmp_path}/s.db"
    os.environ[name] = value
    try:
        args = ["optimize", "--space", str(path), "--storage", url, "--n-trials", "2", "--replicates", "0"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "lorasweep", *args],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        shards = _wait_for(lambda: len(_shard_pids(tag, worker.pid)) == 2 and _shard_pids(tag, worker.pid))
        time.sleep(1)
        os.kill(shards[1], signal.SIGKILL)
        # the second trial's shards: then kill the worker itself, and its shards must go too
        second = _wait_for(lambda: [p for p in _shard_pids(tag, worker.pid) if p not in shards])
        _wait_for(lambda: len(_shard_pids(tag, worker.pid)) == 2)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=60)
        _wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in second), timeout=30)
    finally:
        del os.environ[name]
    trials = optuna.load_study(study_name="default", storage=url).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert "ShardFailed: shard" in trials[0].user_attrs["fail_reason"]
    assert "killed by SIGKILL" in trials[0].user_attrs["fail_reason"]
    assert trials[1].state == optuna.trial.TrialState.RUNNING  # its worker was killed: stale later
    assert _tagged_processes(tag) == []
