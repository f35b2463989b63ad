"""Several workers on one study: `lorasweep optimize --workers N`."""

import math
import os

import optuna
import yaml
from conftest import TINY_SPACE, optimize

from lorasweep.workers import cpu_sets, shares


def test_trials_and_cores_are_shared_out():
    assert shares(12, 4) == [3, 3, 3, 3] and shares(5, 3) == [2, 2, 1] and shares(1, 2) == [1, 0]
    assert cpu_sets(2, [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert cpu_sets(4, [0, 1]) == [[0], [1], [0], [1]]  # more workers than cores: shared in turn


def test_four_workers_share_one_sqlite_study(tmp_path, cache_dir, prepared):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    url = optimize(tmp_path, cache_dir, "space.yaml", "--workers", "4", "--n-trials", "12")
    trials = optuna.load_study(study_name="default", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 12  # none lost, none extra
    assert sorted(t.number for t in trials) == list(range(12))
    for baseline in TINY_SPACE["baselines"]:  # each enqueued baseline ran exactly once
        ran = [t for t in trials if all(t.user_attrs["config"][k] == v for k, v in baseline.items())]
        assert len(ran) == 1
    sampled = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(sampled)) == 12  # workers draw with their own seeds: no duplicate configs
    for t in trials:
        assert {"learn", "forget", "config", "data_fingerprint", "threads"} <= set(t.user_attrs)
        assert t.user_attrs["threads"] <= math.ceil(len(os.sched_getaffinity(0)) / 4)  # a share of the cores
