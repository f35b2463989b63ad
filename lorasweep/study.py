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
METRICS = ["learn", "forget"]
DIRECTIONS = ["maximize", "minimize"]
SQLITE_TIMEOUT_S = 60  # busy timeout, so several local workers wait for the lock instead of failing


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for `url`; a bad URL is a one-line ConfigError, not a traceback."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(
            f"--storage '{storage_label(url)}': not a storage URL (allowed: sqlite:///PATH, postgresql://..., mysql://...)"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
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


def open_study(name: str, url: str, space: SearchSpace, seed: int) -> optuna.Study:
    """Create the study, or load it to add trials; a study keeps the space it was created with."""
    store = storage(url)
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
        study = optuna.create_study(study_name=name, storage=store, directions=DIRECTIONS)
        study.set_metric_names(METRICS)
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
    runs = list(study.user_attrs.get("sampler_runs", []))
    runs.append({**space.sampler, "seed": sampler_seed, "first_trial": started})
    study.set_user_attr("sampler", space.sampler)
    study.set_user_attr("sampler_runs", runs)
    return study


def _searched(raw: dict[str, Any]) -> tuple:
    """What makes two spaces the same study: fixed config and searched params."""
    return (raw.get("config"), raw.get("params"))
