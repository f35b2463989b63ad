"""The storages besides SQLite: a real PostgreSQL server and Optuna's journal file.

Files of their own so that pytest-xdist runs them beside the other worker tests.
"""

import optuna
import yaml
from conftest import TINY_SPACE, invoke
from test_workers import four_workers_share_one_study

from lorasweep.study import storage


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
        study_name="default", storage=storage(f"journal:///{tmp_path}/results/s.journal")
    ).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    best = invoke("best", "--storage", url, "--json", cwd=tmp_path)
    assert best.returncode == 0 and '"study": "default"' in best.stdout, best.stderr
