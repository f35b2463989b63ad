"""The places lorasweep reaches past Optuna's public API, kept here so an Optuna upgrade that
moves them breaks one small module, with the reason each is needed beside it.
"""

from __future__ import annotations

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState


def write_intermediate_value(trial: optuna.Trial, step: int, value: float) -> None:
    """Record an intermediate value on a trial of any study, multi-objective ones included.

    Optuna 5's `Trial.report` raises for multi-objective studies (they cannot prune), but the
    storage keeps intermediate values for any trial and optuna-dashboard plots them as the trial's
    learning curve, so lorasweep writes there directly.
    """
    trial.study._storage.set_trial_intermediate_value(trial._trial_id, step, value)


def report(trial: optuna.Trial, step: int, value: float) -> None:
    """Record an intermediate learn value: for the pruner (one objective), for the dashboard's
    learning curve (any study; Optuna cannot report on multi-objective ones)."""
    if len(trial.study.directions) == 1:
        trial.report(value, step)
    else:
        write_intermediate_value(trial, step, value)


def set_waiting_attrs(study: optuna.Study, trial: optuna.trial.FrozenTrial, attrs: dict) -> None:
    """Set user attrs on a trial waiting in the queue: Optuna's public API sets them only on a
    trial that runs (`Trial.set_user_attr`) or when it is queued (`enqueue_trial`), and
    workers.tag_next must tag a queued trial before `ask` takes it."""
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)


def heartbeats_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (an RDB storage given a heartbeat interval).

    `study.optimize` asks the same private function before it starts the heartbeat thread; a
    worker asks it to know whether a dead worker's trial will be failed and queued again.
    """
    return is_heartbeat_enabled(study._storage)


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDB storage under a study (None for another storage).

    Optuna wraps an RDBStorage in a private cache; claim_lock.py needs the storage's engine to
    take a database lock (PostgreSQL) or to find the SQLite file, and its retries to weather an
    outage while it does.
    """
    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def journal_path(study: optuna.Study) -> str | None:
    """The file of a journal storage on a file (claim_lock.py locks one beside it); None for a
    storage without one (in memory)."""
    return getattr(getattr(study._storage, "_backend", None), "_file_path", None)


def beat_on_start(storage: optuna.storages.RDBStorage) -> None:
    """Record a trial's heartbeat in the same transaction that makes it RUNNING.

    Optuna records a trial's first heartbeat from a thread it starts only after `study.ask` has
    created the trial (or taken a queued one) and the sampler has run, and its stale-trial check
    skips a RUNNING trial that has no heartbeat row: a worker killed in that window (seconds on a
    loaded machine) left a trial RUNNING forever. With this, a RUNNING trial always has a
    heartbeat, and the grace period fails it whenever its worker dies. The row is Optuna's own
    (`trial_heartbeats`), written through its ORM models before the session flushes; the heartbeat
    thread then updates it as usual.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    def beat(session, _context, _instances) -> None:
        for trial in [*session.new, *session.dirty]:
            if not isinstance(trial, models.TrialModel) or trial.state != TrialState.RUNNING:
                continue
            if trial in session.new or sqlalchemy.inspect(trial).attrs.state.history.has_changes():
                if trial.heartbeats:  # a queued trial (its row made when it was queued) starts now
                    trial.heartbeats[0].heartbeat = sqlalchemy.func.now()
                else:
                    trial.heartbeats.append(models.TrialHeartbeatModel())

    sqlalchemy.event.listen(storage.scoped_session, "before_flush", beat)
