"""The lock a process holds while it claims a study's next trial.

    with claim_lock(study) as release:
        ...count the run's trials, queue the next arm, create the trial and tag it...
        release()  # the trial counts now: the next process may claim

Counting and creating must not interleave between processes, or two of them both see a free slot
(one trial too many) or the same arm behind (the balance drifts). Every process on the study takes
the same lock, whichever command or machine it runs on:

- PostgreSQL: a session-level advisory lock keyed by the study name, on its own connection (every
  machine on the database; released by the server if the process dies).
- SQLite and journal files: an fcntl lock on `<file>.claim-lock` beside the database file (every
  process on the machine; these storages are not shared between machines). Not `<file>.lock`:
  Optuna's journal storage takes that name for its own lock.
- MySQL: an fcntl lock in the system temp directory, keyed by storage and study: processes on one
  machine only (balance across machines needs PostgreSQL).
- A storage in memory: no lock (it lives in one process).
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from sqlalchemy import text

from lorasweep.optuna_private import journal_path, rdb_storage
from lorasweep.storages import WeatheredStorage, transient


@contextmanager
def claim_lock(study: optuna.Study) -> Iterator[Callable[[], None]]:
    """Hold the study's claim lock; yields a function that releases it early (idempotent)."""
    storage = rdb_storage(study)
    engine = storage.engine if storage is not None else None
    if engine is not None and engine.dialect.name == "postgresql":
        with _advisory_lock(storage, _key(study.study_name)) as release:
            yield release
        return
    if engine is not None and engine.dialect.name == "sqlite":
        path = f"{engine.url.database}.claim-lock"
    elif engine is None:
        journal = journal_path(study)
        if journal is None:
            yield lambda: None
            return
        path = f"{journal}.claim-lock"
    else:
        digest = hashlib.sha256(f"{engine.url.render_as_string()}\0{study.study_name}".encode()).hexdigest()
        path = str(Path(tempfile.gettempdir()) / f"lorasweep-{digest[:16]}.lock")
    with _file_lock(path) as release:
        yield release


def _key(name: str) -> int:
    """A signed 64-bit advisory lock key for the study."""
    return int.from_bytes(hashlib.sha256(f"lorasweep claim {name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _advisory_lock(storage, key: int) -> Iterator[Callable[[], None]]:
    """The lock on a connection of its own, in autocommit (no transaction left open while the trial
    runs); released, and the connection given back, as soon as the trial is claimed. Taking it
    waits out a database outage as the storage's own calls do; a connection lost while it is held
    takes the lock with it, so releasing it then has nothing left to do."""

    def lock():
        connection = storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        except BaseException:
            connection.close()
            raise
        return connection

    connection = storage.weather(lock) if isinstance(storage, WeatheredStorage) else lock()

    def release() -> None:
        if connection.closed:
            return
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        except Exception as err:  # the server dropped the connection, and the lock with it
            if not transient(err):
                raise
        finally:
            connection.close()

    try:
        yield release
    finally:
        release()


@contextmanager
def _file_lock(path: str) -> Iterator[Callable[[], None]]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield lambda: fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
