"""A storage that goes away: a PostgreSQL restart mid-sweep, a server down for longer than
--storage-wait, SQLite locked past its busy timeout. The sweep pauses and goes on, or stops with
one line and exit code 75 and resumes when run again; never a traceback."""

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import TINY_SPACE
from sqlalchemy.exc import IntegrityError, OperationalError, PendingRollbackError

from lorasweep import storages
from lorasweep.storages import EXIT_UNAVAILABLE, StorageUnavailable, open_storage, transient
from lorasweep.workers import tally

HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "10"]


def lorasweep(tmp_path: Path, cache_dir: Path, *args: str) -> subprocess.Popen:
    """The real `lorasweep optimize` on the tiny space (trials ~4x the tiny default)."""
    space = {**TINY_SPACE, "config": {**TINY_SPACE["config"], "train_tokens": 8192 * 4}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    command = [sys.executable, "-m", "lorasweep", "optimize", "--space", "space.yaml", "--replicates", "0"]
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen(
        [*command, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def until(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)


def completed(url: str, study: str) -> int:
    try:
        trials = optuna.load_study(study_name=study, storage=url).trials
    except KeyError:
        return 0
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_a_postgresql_restart_mid_sweep_is_a_pause(postgres, tmp_path, cache_dir, prepared):
    args = ["--storage", postgres.url, "--study", "restart", "--workers", "2", "--n-trials", "8", *HEARTBEAT]
    sweep = lorasweep(tmp_path, cache_dir, *args)
    until(lambda: completed(postgres.url, "restart") >= 2, sweep)
    postgres.ctl("-m", "fast", "restart")  # every connection dropped; refused until it is back
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr
    assert "Traceback" not in stderr and "s3cret" not in stderr
    study = optuna.load_study(study_name="restart", storage=postgres.url)
    assert [t.state.name for t in study.trials].count("RUNNING") == 0
    assert tally(study, study.trials[-1].user_attrs["run"]) == (8, 0)


def test_a_storage_down_past_the_wait_stops_with_exit_75_and_the_next_run_resumes(
    postgres, tmp_path, cache_dir, prepared
):
    args = [
        "--storage",
        postgres.url,
        "--study",
        "down",
        "--n-trials",
        "3",
        "--storage-wait",
        "3",
        *HEARTBEAT,
    ]
    sweep = lorasweep(tmp_path, cache_dir, *args)
    until(lambda: completed(postgres.url, "down") >= 1, sweep)
    postgres.ctl("-m", "fast", "stop")
    try:
        _, stderr = sweep.communicate(timeout=120)
    finally:
        postgres.ctl("start")
    assert sweep.returncode == EXIT_UNAVAILABLE, stderr
    assert "Traceback" not in stderr and "s3cret" not in stderr
    label = postgres.url.replace("s3cret", "***")
    assert f"storage '{label}' unreachable (" in stderr  # when the outage began
    (last,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (
        last.startswith(f"error: storage '{label}' unreachable for ") and "run again once it is back" in last
    )
    deadline = time.monotonic() + 60
    while not heartbeats_older_than(postgres.url, 10):  # the stopped run's trials look dead now
        assert time.monotonic() < deadline
        time.sleep(0.5)
    resumed = lorasweep(tmp_path, cache_dir, *args)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    states = [t.state.name for t in optuna.load_study(study_name="down", storage=postgres.url).trials]
    assert "RUNNING" not in states and "WAITING" not in states, states


def heartbeats_older_than(url: str, seconds: float) -> bool:
    """Whether every RUNNING trial's heartbeat is older than `seconds`, by the database's clock
    (as Optuna's stale-trial check reads it)."""
    engine = sqlalchemy.create_engine(url)
    query = (
        "SELECT EXTRACT(EPOCH FROM MIN(now()::timestamp - h.heartbeat)) FROM trial_heartbeats h "
        "JOIN trials t ON t.trial_id = h.trial_id WHERE t.state = 'RUNNING'"
    )
    try:
        with engine.connect() as connection:
            age = connection.execute(sqlalchemy.text(query)).scalar()
    finally:
        engine.dispose()
    return age is None or age > seconds


@pytest.fixture
def locked_sqlite(tmp_path, monkeypatch) -> tuple[optuna.Study, sqlite3.Connection, str]:
    """A study on SQLite with a 0.1 s busy timeout, a connection that can lock its file, its URL."""
    monkeypatch.setattr(storages, "SQLITE_TIMEOUT_S", 0.1)
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, wait=1.5))
    return study, sqlite3.connect(f"{tmp_path}/s.db", isolation_level=None, check_same_thread=False), url


def test_sqlite_locked_for_a_moment_is_waited_out(locked_sqlite, capfd):
    study, other, url = locked_sqlite
    other.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
    study.set_user_attr("written", True)  # waits for the lock, then writes
    assert optuna.load_study(study_name="s", storage=url).user_attrs["written"] is True
    began, ended = capfd.readouterr().err.splitlines()
    assert began == (
        f"storage '{url}' unreachable (OperationalError: database is locked); "
        "retrying for up to 1.5 s (--storage-wait)"
    )
    assert ended.startswith(f"storage '{url}' reachable again after ")


def test_sqlite_locked_past_the_wait_is_storage_unavailable(locked_sqlite):
    study, other, url = locked_sqlite
    other.execute("BEGIN EXCLUSIVE")
    start = time.monotonic()
    with pytest.raises(StorageUnavailable) as stopped:
        study.set_user_attr("written", True)
    assert re.fullmatch(
        rf"storage '{re.escape(url)}' unreachable for \d+ s \(OperationalError: database is locked\): "
        r"stopped; run again once it is back, the study resumes \(--storage-wait 1.5\)",
        str(stopped.value),
    )
    assert 1.5 <= time.monotonic() - start < 5
    other.execute("COMMIT")


def test_a_fault_met_again_while_handling_a_lost_connection_is_transient():
    """Optuna queries again on the session a lost connection broke, which fails as "Can't reconnect
    until invalid transaction is rolled back" (seen in CI after a PostgreSQL stop): retried too."""
    lost = OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command"))
    try:
        try:
            raise lost
        except OperationalError:
            raise PendingRollbackError("Can't reconnect until invalid transaction is rolled back") from None
    except PendingRollbackError as err:
        again = err
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = again
    assert again.__context__ is lost and transient(wrapped)
    assert not transient(IntegrityError("INSERT", {}, Exception("duplicate key value")))
    assert not transient(optuna.exceptions.StorageInternalError("invalid data"))
