"""The storages besides SQLite: a real PostgreSQL server and Optuna's journal file.

Files of their own so that pytest-xdist runs them beside the other worker tests.
"""

import os
import subprocess
import sys
from collections import Counter

import optuna
import yaml
from conftest import TINY_SPACE, invoke
from test_workers import four_workers_share_one_study

from lorasweep.storages import open_storage


def test_four_workers_share_one_postgresql_study(postgres_url, tmp_path, cache_dir, prepared):
    four_workers_share_one_study(postgres_url, tmp_path, cache_dir)


def test_a_journal_file_holds_a_study_that_the_reading_commands_open(tmp_path, cache_dir, prepared):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    url = "journal:///results/s.journal"  # relative to the working directory, like sqlite:///
    args = ["--space", "space.yaml", "--storage", url, "--workers", "2", "--n-trials", "2"]
    result = invoke("optimize", *args, "--replicates", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "optuna-dashboard results/s.journal" in result.stdout  # what optuna-dashboard opens
    trials = optuna.load_study(
        study_name="default", storage=open_storage(f"journal:///{tmp_path}/results/s.journal")
    ).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    best = invoke("best", "--storage", url, "--json", cwd=tmp_path)
    assert best.returncode == 0 and '"study": "default"' in best.stdout, best.stderr


def test_separate_commands_on_one_postgresql_study_keep_the_arms_balanced(
    postgres_url, tmp_path, cache_dir, prepared
):
    """Three `optimize` commands at once, as on three machines (no shared run, no shared files):
    every claim sees the one before it (claim_lock), so the methods stay within one trial."""
    space = {**TINY_SPACE, "compare": "method"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    args = ["optimize", "--space", "space.yaml", "--storage", postgres_url, "--study", "separate"]
    first = invoke(*args, "--n-trials", "1", "--replicates", "0", cwd=tmp_path)  # creates the study
    assert first.returncode == 0, first.stderr
    command = [sys.executable, "-m", "lorasweep", *args, "--n-trials", "3", "--replicates", "0"]
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(cache_dir)}
    machines = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL) for _ in range(3)]
    assert [m.wait(timeout=600) for m in machines] == [0, 0, 0]
    trials = optuna.load_study(study_name="separate", storage=postgres_url).trials
    assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
    methods = Counter(t.params["method"] for t in trials)
    assert abs(methods["lora"] - methods["full"]) <= 1, methods
