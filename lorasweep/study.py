"""The Optuna study: storage, sampler, metric names, baselines, and running trials.

A study is multi-objective: learn (maximize) and forget (minimize). Everything needed to read it
later is recorded on it: the search space as read, the sampler with all its options, the base
model's own metrics. Running `optimize` again on the same study adds trials to it (resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from lorasweep import __version__
from lorasweep.config import ConfigError
from lorasweep.search_space import SearchSpace

DEFAULT_STORAGE = "sqlite:///results/lorasweep.db"
# objective mode -> (metric names, directions)
OBJECTIVES = {
    "pareto": (["learn", "forget"], ["maximize", "minimize"]),
    "constrained": (["learn"], ["maximize"]),  # forget <= tolerance as an Optuna constraint
}
SQLITE_TIMEOUT_S = 60  # busy timeout, so several local workers wait for the lock instead of failing
HEARTBEAT_S = 30  # a running trial writes a heartbeat this often
GRACE_S = 120  # without one for this long, its worker is taken for dead
MAX_RETRY = 2  # a dead worker's trial is run again, with the same params, at most this often


def storage(
    url: str, create: bool = True, heartbeat: tuple[int, int] | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for `url`; a bad URL is a one-line ConfigError, not a traceback.

    With `create=False` (commands that only read) a missing SQLite file is an error rather than
    an empty database created on the spot. With `heartbeat=(interval, grace)` (commands that run
    trials), a trial whose worker died (SIGKILL, a lost machine) is marked failed once its
    heartbeat is older than `grace` seconds, when any worker starts its next trial, and run again
    (Optuna's RetryFailedTrialCallback; the retry records `failed_trial` and `retry_history`).
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(
            f"--storage '{storage_label(url)}': not a storage URL (allowed: sqlite:///PATH, postgresql://..., mysql://...)"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            if not create and not Path(path).exists():
                raise ConfigError(f"--storage '{url}': no such database file ({path})")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        if heartbeat is None:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat[0],
            grace_period=heartbeat[1],
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY),
        )
    except (SQLAlchemyError, ImportError, ValueError) as err:  # bad URL, missing driver, refused
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"--storage '{storage_label(url)}': cannot open ({err.__class__.__name__}: {reason})"
        ) from None


def storage_label(url: str) -> str:
    """The storage URL as it may be printed or logged: any password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def open_study(
    name: str,
    url: str | optuna.storages.BaseStorage,
    space: SearchSpace,
    seed: int,
    heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
) -> optuna.Study:
    """Create the study, or load it to add trials; a study keeps the space it was created with.

    `url` may also be a storage already opened (with its heartbeat settings).
    """
    store = url if isinstance(url, optuna.storages.BaseStorage) else storage(url, heartbeat=heartbeat)
    exists = name in optuna.get_all_study_names(store)
    if exists:
        study = optuna.load_study(study_name=name, storage=store)
        recorded = study.user_attrs.get("space")
        if recorded is not None and _searched(recorded) != _searched(space.raw):
            raise ConfigError(
                f"--space {space.path}: study '{name}' was created with a different search space "
                f"({study.user_attrs.get('space_path')}); use another --study name"
            )
    else:
        metrics, directions = OBJECTIVES[space.objective]
        study = optuna.create_study(study_name=name, storage=store, directions=directions)
        study.set_metric_names(metrics)
        study.set_user_attr("objective", space.objective)
        study.set_user_attr("forget_tolerance", space.forget_tolerance)
        study.set_user_attr("space", space.raw)
        study.set_user_attr("space_path", str(space.path))
        study.set_user_attr("lorasweep_version", __version__)
        for params in space.baselines:
            study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)
    # Offset the seed by the trials already run, so a resumed study does not redraw its first
    # random points; the seed actually used is recorded per run.
    started = sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)
    sampler_seed = seed + started
    study.sampler = space.make_sampler(sampler_seed)
    study.pruner = space.make_pruner()
    runs = list(study.user_attrs.get("sampler_runs", []))
    runs.append({**space.sampler, "seed": sampler_seed, "first_trial": started})
    study.set_user_attr("sampler", space.sampler)
    study.set_user_attr("pruner", space.pruner)
    study.set_user_attr("sampler_runs", runs)
    return study


def _searched(raw: dict[str, Any]) -> tuple:
    """What makes two spaces the same study: the question asked, fixed config, searched params."""
    keys = ("objective", "forget_tolerance", "config", "params")
    return tuple(raw.get(k) for k in keys)


def load_study(url: str, name: str | None) -> optuna.Study:
    """An existing study, for commands that read one; the name may be omitted if it is the only one."""
    store = storage(url, create=False)
    names = optuna.get_all_study_names(store)
    label = storage_label(url)
    if not names:
        raise ConfigError(f"--storage '{label}': holds no study yet (run lorasweep optimize first)")
    if name is None:
        if len(names) > 1:
            raise ConfigError(f"--study is needed: '{label}' holds {len(names)} studies: {', '.join(names)}")
        name = names[0]
    if name not in names:
        raise ConfigError(f"--study '{name}': not in '{label}' (studies there: {', '.join(names)})")
    return optuna.load_study(study_name=name, storage=store)


def objective_of(study: optuna.Study) -> str:
    """The study's objective mode; a study without lorasweep's attrs is read by its directions."""
    return study.user_attrs.get("objective", "pareto" if len(study.directions) == 2 else "constrained")


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front, by learn (pareto), or the best feasible trial (constrained)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    if objective_of(study) == "constrained":
        feasible = [t for t in complete if all(c <= 0 for c in t.constraints.values())]
        return [max(feasible, key=lambda t: t.values[0])] if feasible else []
    return sorted(study.best_trials, key=lambda t: -t.values[0])
