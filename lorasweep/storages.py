"""Where studies live: opening a storage URL, and weathering its faults.

    open_storage("sqlite:///results/lorasweep.db", heartbeat=(30, 120))
    open_storage("postgresql://user:pw@db/lorasweep", heartbeat=(30, 120), wait=300)

A sweep runs for hours against one database, often from several machines, and must outlive what
happens to a database in that time: a restart, a failover, a network blip, SQLite held locked by
another process. The RDB storages lorasweep opens (`WeatheredStorage`):

- check each pooled connection before use and reconnect (SQLAlchemy's `pool_pre_ping`);
- retry a call that failed on a lost connection or a locked database, with backoff, for up to
  `wait` seconds from the start of the outage (`--storage-wait`, default 300): a database restart
  costs a pause, not a trial. One line says when the outage starts and one when it ends;
- past that bound, raise `StorageUnavailable`: the command prints one line naming the storage
  (password masked) and exits with EXIT_UNAVAILABLE (75, EX_TEMPFAIL). Its running trials are
  failed by the heartbeat after the grace period, and the same command run again resumes;
- record a trial's first heartbeat in the transaction that makes it RUNNING (see
  optuna_private.beat_on_start), so a worker killed at any instant, even before its heartbeat
  thread starts, leaves a trial the grace period fails and queues again.

A retried write whose first attempt did commit (the connection died before the answer came back)
is taken as done: a trial's state, once the storage has it, is not written twice.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError

from lorasweep.optuna_private import beat_on_start
from lorasweep.validation import ConfigError

CONNECT_TIMEOUT_S = 5  # an unreachable database server is an error within seconds, not a hang
SQLITE_TIMEOUT_S = 60  # busy timeout, so several local workers wait for the lock instead of failing
STORAGE_WAIT_S = 300  # how long a sweep waits out an unreachable storage before it stops
HEARTBEAT_S = 30  # a running trial writes a heartbeat this often
GRACE_S = 120  # without one for this long, its worker is taken for dead
MAX_RETRY = 2  # a dead worker's trial is run again, with the same params, at most this often
EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: the storage stayed unreachable; run the command again later
BACKOFF_S = (0.5, 10.0)  # first and longest pause between two tries of a failed storage call

T = TypeVar("T")


class StorageUnavailable(BaseException):
    """The storage stayed unreachable for longer than the command's --storage-wait.

    A BaseException, like KeyboardInterrupt, because it stops the command rather than the trial:
    Optuna's optimize loop lets it through without telling the trial failed (it could not anyway),
    so the trial stays RUNNING for the heartbeat and its kept result (pending.py) stays valid.
    """


def open_storage(
    url: str,
    create: bool = True,
    heartbeat: tuple[int, int] | None = None,
    wait: float | None = STORAGE_WAIT_S,
) -> optuna.storages.BaseStorage:
    """Optuna's storage for `url`; a bad URL is a one-line ConfigError, not a traceback.

    SQLite, PostgreSQL and MySQL URLs open Optuna's RDB storage (as a WeatheredStorage that waits
    up to `wait` seconds for an unreachable database); `journal:///PATH` its journal file storage
    (one machine, no database server); with `wait=None`, Optuna's plain RDBStorage, whose errors
    are the caller's to handle (the dashboard's server). With `create=False` (commands that only read) a missing
    file is an error rather than an empty study store created on the spot. With
    `heartbeat=(interval, grace)` (commands that run trials; RDB storages only), a trial whose
    worker died (SIGKILL, a lost machine) is marked failed once its heartbeat is older than
    `grace` seconds, and queued to run again (Optuna's RetryHeartbeatStaleTrialCallback; the
    retry records `failed_trial` and `retry_history`).
    """
    if heartbeat is not None and not 0 < heartbeat[0] < heartbeat[1]:
        raise ConfigError(
            f"--heartbeat-interval {heartbeat[0]} and --grace-period {heartbeat[1]}: "
            "allowed: 0 < interval < grace period"
        )
    if wait is not None and not wait >= 0:  # nan too
        raise ConfigError(f"--storage-wait is {wait:g}; allowed: a number of seconds >= 0")
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if "://" not in url or scheme not in ("sqlite", "postgresql", "mysql", "journal"):
        raise ConfigError(
            f"--storage '{storage_label(url)}': not a storage URL (allowed: sqlite:///PATH, "
            "journal:///PATH, postgresql://..., mysql://...)"
        )
    if scheme in ("sqlite", "journal"):
        path = storage_path(url)
        if not path or path == ":memory:":  # gone when the command ends
            raise ConfigError(f"--storage '{url}': needs a file path, e.g. {scheme}:///results/lorasweep.db")
        if not create and not Path(path).exists():
            raise ConfigError(f"--storage '{url}': no such file ({path})")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if scheme == "journal":
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(storage_path(url)))
        except (OSError, ValueError) as err:  # a directory, no permission, not a journal
            raise ConfigError(f"--storage '{url}': cannot open ({err.__class__.__name__}: {err})") from None
    if scheme == "sqlite":
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:  # a server: a pooled connection it dropped (a restart) is replaced before use
        connect: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if scheme == "postgresql":  # a server lost without a word (a partition): noticed in ~1 min
            connect |= {
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            }
        engine_kwargs = {"connect_args": connect, "pool_pre_ping": True}
    beats: dict[str, Any] = {}
    if heartbeat is not None:
        beats = {
            "heartbeat_interval": heartbeat[0],
            "grace_period": heartbeat[1],
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY),
        }
    try:
        if wait is None:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
        return WeatheredStorage(url, wait, engine_kwargs=engine_kwargs, **beats)
    except (SQLAlchemyError, ImportError, ValueError) as err:  # bad URL, missing driver, refused
        raise ConfigError(f"--storage '{storage_label(url)}': cannot open ({_reason(err)})") from None


class WeatheredStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, its calls retried through an outage of up to `wait` seconds.

    Every call Optuna makes on it (through its cache, `_CachedStorage`, and the heartbeat thread)
    goes through `weather`; the calls are wrapped below the class, by name.
    """

    def __init__(self, url: str, wait: float, **kwargs: Any) -> None:
        self.label = storage_label(url)
        self.wait = wait
        self._outage_since: float | None = None
        self._recovered_at: float | None = None  # when this process's last outage ended
        self._outage_lock = threading.Lock()
        super().__init__(url, **kwargs)
        if self.heartbeat_interval is not None:
            beat_on_start(self)

    def weather(self, call: Callable[[], T]) -> T:
        """`call()`, tried again through an outage; StorageUnavailable once it lasted `wait` s."""
        delay = BACKOFF_S[0]
        while True:
            try:
                result = call()
            except Exception as err:  # only transient storage faults are retried
                if not transient(err):
                    raise
                elapsed = self._outage(err)
                if elapsed >= self.wait:
                    raise StorageUnavailable(
                        f"storage '{self.label}' unreachable for {elapsed:.0f} s ({_reason(err)}): "
                        f"stopped; run again once it is back, the study resumes (--storage-wait {self.wait:g})"
                    ) from None
                time.sleep(min(delay, self.wait - elapsed))
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            self._recovered()
            return result

    def _outage(self, err: Exception) -> float:
        """Seconds since this outage began; its first failure prints one line."""
        with self._outage_lock:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                _tell(
                    f"storage '{self.label}' unreachable ({_reason(err)}); "
                    f"retrying for up to {self.wait:g} s (--storage-wait)"
                )
            return time.monotonic() - self._outage_since

    def _recovered(self) -> None:
        if self._outage_since is None:  # the common case, without taking the lock
            return
        with self._outage_lock:
            if self._outage_since is not None:
                _tell(
                    f"storage '{self.label}' reachable again after {time.monotonic() - self._outage_since:.0f} s"
                )
                self._outage_since = None
                self._recovered_at = time.monotonic()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        """Optuna's, weathered; a finished state whose first try committed (the connection died
        before the answer came back) is taken as written when the trial holds it, rather than
        refused as an update of a finished trial."""
        tries = 0

        def write() -> bool:
            nonlocal tries
            tries += 1
            try:
                return super(WeatheredStorage, self).set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries > 1 and state.is_finished():  # our first try's, or another process's?
                    stored = super(WeatheredStorage, self).get_trial(trial_id)
                    if stored.state == state and (values is None or stored.values == list(values)):
                        return True
                raise

        return self.weather(write)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, but none within a grace period after this process's own outage
        ended: no worker could write a heartbeat during it, and theirs resume within seconds
        after it (their retries back off for at most BACKOFF_S[1]). Without this, an outage longer
        than the grace period would fail every trial still training."""
        stale = self.weather(lambda: super(WeatheredStorage, self)._get_stale_trial_ids(study_id))
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if self._recovered_at is not None and time.monotonic() - self._recovered_at < grace:
            return []
        return stale

    def record_heartbeat(self, trial_id: int) -> None:
        """A heartbeat that outlasts the wait is skipped quietly: it runs in Optuna's heartbeat
        thread, where an exception would print a traceback and end the thread. The thread tries
        again at its next interval, so heartbeats resume when the storage does; the trial's own
        next write stops the command if the storage stays away."""
        try:
            self.weather(lambda: super(WeatheredStorage, self).record_heartbeat(trial_id))
        except StorageUnavailable:
            pass


def _weathered(name: str) -> Callable:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: WeatheredStorage, *args: Any, **kwargs: Any) -> Any:
        return self.weather(lambda: method(self, *args, **kwargs))

    return call


# what Optuna's _CachedStorage and Study call on the storage, and the reads lorasweep makes
for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "_create_new_trial",
    "_set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "_get_trials",
    "get_all_trials",
    "get_n_trials",
    "_get_best_trial_id",
):
    setattr(WeatheredStorage, _name, _weathered(_name))


def transient(err: BaseException) -> bool:
    """Whether a storage call failed on something that passes: a lost or refused connection, a
    server shutting down, a deadlock, SQLite locked past its busy timeout. The error's causes and
    contexts count: Optuna wraps SQLAlchemy's errors (StorageInternalError), and after a lost
    connection it sometimes queries again on the same session, which then fails as "Can't
    reconnect until invalid transaction is rolled back" while handling the real fault."""
    chain, seen = [err], set()
    while chain:
        link = chain.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        if _transient_fault(link):
            return True
        chain.append(link.__cause__)
        if isinstance(link, (SQLAlchemyError, optuna.exceptions.StorageInternalError)):
            chain.append(link.__context__)  # not a bug's: an error in our own handling is not an outage
    return False


def _transient_fault(err: BaseException) -> bool:
    if isinstance(err, DisconnectionError):
        return True
    if not isinstance(err, DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    if type(err.orig).__module__ == "sqlite3":
        return bool(re.search(r"locked|busy", str(err.orig)))
    return isinstance(err, (OperationalError, InterfaceError))


def _reason(err: BaseException) -> str:
    """The error's class and first line: what a user needs to tell a typo from an outage."""
    if isinstance(err, optuna.exceptions.StorageInternalError) and err.__cause__ is not None:
        err = err.__cause__
    shown = getattr(err, "orig", None) or err
    lines = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {lines[0]}" if lines else type(shown).__name__


def _tell(line: str) -> None:
    """One line on stderr (a worker's goes to its log; the parent's above its progress bars)."""
    print(line, file=sys.stderr, flush=True)


def storage_path(url: str) -> str:
    """The file of a sqlite:/// or journal:/// URL (relative after three slashes, like SQLAlchemy)."""
    return url.split(":///", 1)[-1]


def dashboard_target(url: str) -> str:
    """What `optuna-dashboard` takes for this storage: the URL, or a journal's file path."""
    return storage_path(url) if url.startswith("journal:") else storage_label(url)


def storage_label(url: str) -> str:
    """The storage URL as it may be printed or logged: any password masked, however malformed.

    Read from the text, not SQLAlchemy's make_url, which raises on a port like 'notaport' and
    reads an unescaped '@' in a password differently from the driver, printing part of it.
    """
    url = re.sub(r"([?&][a-z_]*password=).*", r"\1***", url)  # libpq also takes ?password=...
    head, at, location = url.rpartition("@")
    scheme, slashes, userinfo = head.partition("://")
    if not at or not slashes or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{location}"
