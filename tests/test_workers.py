"""Several workers on one study: `lorasweep optimize --workers N`."""

import math
import os
import sys

import optuna
import typer.main
import yaml
from conftest import TINY_SPACE, cli, invoke

from lorasweep.cli import app
from lorasweep.search_space import load_space
from lorasweep.workers import PER_WORKER, check_run, cpu_sets, shards_of, worker_command


def test_cores_are_shared_out():
    assert cpu_sets(2, [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert cpu_sets(4, [0, 1]) == [[0], [1], [0], [1]]  # more workers than cores: shared in turn


def test_each_worker_gets_the_gpus_of_its_sharded_trials(tmp_path):
    assert check_run(4, None, 2, "0,1") == ["0", "1"]
    assert check_run(4, None, 2, "0,1,2,3", shards=2) == ["0,1", "2,3"]
    space = dict(TINY_SPACE, params=dict(TINY_SPACE["params"], fsdp_shards={"choices": [1, 2]}), baselines=[])
    path = tmp_path / "shards.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    assert shards_of(load_space(path)) == 2
    result = invoke("optimize", "--space", str(path), "--workers", "2", "--devices", "0,1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --devices '0,1': allowed: 4 GPU indices, 2 per worker (fsdp_shards 2), e.g. 0,1,2,3"
    )
    assert not (tmp_path / "results").exists()  # no study was created


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
    method's leaders once more, with seed 1, by the same workers."""
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
    assert [t.state.name for t in trials] == ["COMPLETE"] * len(trials)  # none lost
    trials, replicas = trials[:8], trials[8:]
    # one more seed for each method's leader and top learner (the same trial or two)
    methods = [trials[t.user_attrs["replicate_of"]].params["method"] for t in replicas]
    assert {"full", "lora"} == set(methods) and len(methods) <= 4
    assert len({t.user_attrs["replicate_of"] for t in replicas}) == len(replicas)  # none extra
    assert {t.user_attrs["seed"] for t in replicas} == {1}
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
