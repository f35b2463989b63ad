"""The places lorasweep reaches past Optuna's public API, kept here so an Optuna upgrade that
moves them breaks one small module, with the reason each is needed beside it.
"""

from __future__ import annotations

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled


def write_intermediate_value(trial: optuna.Trial, step: int, value: float) -> None:
    """Record an intermediate value on a trial of any study, multi-objective ones included.

    Optuna 5's `Trial.report` raises for multi-objective studies (they cannot prune), but the
    storage keeps intermediate values for any trial and optuna-dashboard plots them as the trial's
    learning curve, so lorasweep writes there directly.
    """
    trial.study._storage.set_trial_intermediate_value(trial._trial_id, step, value)


def heartbeats_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (an RDB storage given a heartbeat interval).

    `study.optimize` asks the same private function before it starts the heartbeat thread; a
    worker asks it to know whether a dead worker's trial will be failed and queued again.
    """
    return is_heartbeat_enabled(study._storage)


def rdb_engine(study: optuna.Study):
    """The SQLAlchemy engine of an RDB storage (None for another storage).

    Optuna wraps an RDBStorage in a private cache; claim_lock.py needs the engine to take a
    database lock (PostgreSQL) or to find the SQLite file.
    """
    backend = getattr(study._storage, "_backend", study._storage)
    return backend.engine if isinstance(backend, optuna.storages.RDBStorage) else None


def journal_path(study: optuna.Study) -> str | None:
    """The file of a journal storage on a file (claim_lock.py locks one beside it); None for a
    storage without one (in memory)."""
    return getattr(getattr(study._storage, "_backend", None), "_file_path", None)
