"""A finished trial's result, kept on local disk until the study has it.

    where = folder(cache_dir, study)      # this study's, on this machine
    keep(where, Kept(...))                # the objective, before its first write of a result
    write_result(trial, kept)             # ...its writes; then Optuna's tell
    discard(where, trial.number)          # after the tell (sweep.Session.told)
    record_kept(study, where)             # a later process: the results left by one now gone

A trial's result reaches the study in several writes: the last point of its learning curve, its
records (user attrs), its constraint, then its values and state (Optuna's tell). Training may have
taken hours; if the process stops between the first of those writes and the last (killed, or the
storage unreachable for longer than --storage-wait), the result would be lost and the trial,
failed by its heartbeat, trained again. So the objective keeps the whole result in a file under
`<cache>/pending/<storage and study>/` before it writes, and the file goes once Optuna has told
the study. A file left behind by a process that is gone is written to its trial, if the trial is
still RUNNING, by the next process on this machine that runs the study: before each trial it
claims and while it waits for other workers' trials, ahead of failing stale trials
(workers.run_trials).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lorasweep.optuna_private import journal_path, rdb_storage, report


@dataclass
class Kept:
    number: int  # the trial's
    step: int  # the last evaluation's, with its learn: the learning curve's last point
    learn: float
    attrs: dict[str, Any]  # the trial's records, as user attrs
    values: list[float]  # what Optuna's tell records
    constraints: dict[str, float] = field(default_factory=dict)  # Optuna's, by name (objective.constraints)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=lambda: _started(os.getpid()))  # the pid's, to tell reuse


def folder(cache_dir: Path, study: optuna.Study) -> Path | None:
    """Where the study's kept results go on this machine; None for a storage in memory."""
    storage = rdb_storage(study)
    if storage is not None:
        url = storage.engine.url
        where = (
            str(Path(url.database).resolve())
            if url.get_backend_name() == "sqlite"
            else url.render_as_string()
        )
    else:
        where = journal_path(study)
        if where is None:
            return None
        where = str(Path(where).resolve())
    digest = hashlib.sha256(f"{where}\0{study.study_name}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "pending" / digest


def keep(where: Path, kept: Kept) -> None:
    """Write `kept` to `where`, whole or not at all (a file renamed into place)."""
    where.mkdir(parents=True, exist_ok=True)
    path = _path(where, kept.number)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(asdict(kept)))
    partial.replace(path)


def discard(where: Path, number: int) -> None:
    """Remove trial `number`'s kept result, if there is one: the study has it."""
    _path(where, number).unlink(missing_ok=True)


def _path(where: Path, number: int) -> Path:
    return where / f"trial-{number}.json"


def write_result(trial: optuna.Trial, kept: Kept) -> None:
    """The writes of a finished trial's result before Optuna's tell (the objective's, and
    `record_kept`'s for a result left behind)."""
    report(trial, kept.step, kept.learn)
    for key, value in kept.attrs.items():
        trial.set_user_attr(key, value)
    for name, value in kept.constraints.items():
        trial.set_constraint(name, value)


def record_kept(study: optuna.Study, where: Path | None) -> list[str]:
    """Write the results that processes now gone left in `where` to their trials; a line for each.

    Call it under the study's claim lock, so that two processes do not write the same result.
    A result whose trial is finished already (its heartbeat failed it, or the tell was done and
    only the file was left) is dropped.
    """
    if where is None or not where.is_dir():
        return []
    lines, trials = [], None
    for path in sorted(where.glob("trial-*.json")):
        try:
            kept = _read(path)
        except (ValueError, TypeError) as err:  # not a file keep() wrote whole: nothing to recover
            lines.append(f"{path}: not a kept trial result ({err.__class__.__name__}); removed")
            path.unlink()
            continue
        if kept.host != socket.gethostname() or _started(kept.pid) == kept.started:
            continue  # its process is still writing it (or runs on a machine sharing the folder)
        trials = trials or study.get_trials(deepcopy=False)
        frozen = trials[kept.number] if kept.number < len(trials) else None
        if frozen is not None and frozen.state == TrialState.RUNNING:
            trial = optuna.Trial(study, frozen._trial_id)
            with warnings.catch_warnings():  # the parts its writer wrote already: written again
                warnings.simplefilter("ignore")
                write_result(trial, kept)
            trial.set_user_attr("result_recovered_by", f"{socket.gethostname()}:{os.getpid()}")
            study.tell(trial, kept.values)
            lines.append(
                f"trial {kept.number}: its result, kept in {path} when its process stopped, is recorded"
            )
        elif frozen is None or frozen.state != TrialState.COMPLETE:
            state = "missing" if frozen is None else frozen.state.name
            lines.append(f"trial {kept.number} is {state} in the study: its result kept in {path} is dropped")
        path.unlink()
    return lines


def _read(path: Path) -> Kept:
    """A kept result; one kept by lorasweep before memory budgets held a single constraint, forget's."""
    fields = json.loads(path.read_text())
    if "constraint" in fields:
        forget = fields.pop("constraint")
        fields["constraints"] = {} if forget is None else {"forget": forget}
    return Kept(**fields)


def _started(pid: int) -> str:
    """When process `pid` started (its start time in clock ticks since boot, and the boot), or ""
    if it is gone or a zombie: with the pid, it names one process even when pids are reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    return "" if fields[0] == "Z" else f"{boot}:{fields[19]}"
