"""The lock a process holds while it claims a study's next trial.

    with claim_lock(study) as release:
        ...count the run's trials, queue the next arm, create the trial and tag it...
        release()  # the trial counts now: the next process may claim

Counting and creating must not interleave between processes, or two of them both see a free slot
(one trial too many) or the same arm behind (the balance drifts). Every process on the study takes
the same lock, whichever command or machine it runs on:

- PostgreSQL: a session-level advisory lock keyed by the study name, on its own connection (every
  machine on the database; released by the server if the process dies).
- SQLite and journal files: an fcntl lock on `<file>.lock` beside the database (every process on
  the machine; these storages are not shared between machines).
- MySQL: an fcntl lock in the system temp directory, keyed by storage and study: processes on one
  machine only (balance across machines needs PostgreSQL).
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

from lorasweep.optuna_private import journal_path, rdb_engine


@contextmanager
def claim_lock(study: optuna.Study) -> Iterator[Callable[[], None]]:
    """Hold the study's claim lock; yields a function that releases it early (idempotent)."""
    engine = rdb_engine(study)
    if engine is not None and engine.dialect.name == "postgresql":
        with _advisory_lock(engine, _key(study.study_name)) as release:
            yield release
        return
    if engine is not None and engine.dialect.name == "sqlite":
        path = f"{engine.url.database}.lock"
    elif engine is None:
        path = f"{journal_path(study)}.lock"
    else:
        digest = hashlib.sha256(f"{engine.url.render_as_string()}\0{study.study_name}".encode()).hexdigest()
        path = str(Path(tempfile.gettempdir()) / f"lorasweep-{digest[:16]}.lock")
    with _file_lock(path) as release:
        yield release


def _key(name: str) -> int:
    """A signed 64-bit advisory lock key for the study."""
    return int.from_bytes(hashlib.sha256(f"lorasweep claim {name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _advisory_lock(engine, key: int) -> Iterator[Callable[[], None]]:
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        held = True

        def release() -> None:
            nonlocal held
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                held = False

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
