"""Kills `lorasweep optimize` workers at named points of a trial's life (tests/test_faults.py).

Python imports `sitecustomize` at start-up from PYTHONPATH, so a test that puts this folder there
reaches the worker processes that `--workers` starts (and their replacements). In a worker
(LORASWEEP_RUN is set), with LORASWEEP_KILL_AT=POINT,POINT,..., the first process to reach each
POINT in a trial it runs (or, for `queued`, tags) that is not a retry wins that point's token, a file LORASWEEP_KILL_DIR/POINT in
which it writes the trial's id, and SIGKILLs itself there: no handler, no `finally`, as a lost
machine would. A trial is killed at one point at most, and retries are spared, so that each
point's outcome is its own.
"""

import os
from pathlib import Path

POINTS = set(os.environ.get("LORASWEEP_KILL_AT", "").split(",")) - {""}
current = {"storage": None, "trial_id": None}  # the trial this process runs


def _die(point: str, storage=None, trial_id=None) -> None:
    if point not in POINTS:
        return
    storage = storage or current["storage"]
    trial_id = current["trial_id"] if trial_id is None else trial_id
    if point != "queued" and trial_id != current["trial_id"]:  # another's trial (a kept result)
        return
    tokens = Path(os.environ["LORASWEEP_KILL_DIR"])
    token = tokens / point
    if trial_id is None or token.exists() or "failed_trial" in storage.get_trial(trial_id).system_attrs:
        return
    if str(trial_id) in {t.read_text() for t in tokens.iterdir()}:  # one kill per trial
        return
    try:
        fd = os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another worker was killed there already
        return
    os.write(fd, str(trial_id).encode())
    os.close(fd)
    os.kill(os.getpid(), 9)


def _install() -> None:
    import optuna

    import lorasweep.objective
    import lorasweep.trial
    from lorasweep.storages import WeatheredStorage

    def around(owner, name: str, before=None, after=None) -> None:
        method = getattr(owner, name)

        def call(*args, **kwargs):
            if before:
                before(*args, **kwargs)
            result = method(*args, **kwargs)
            if after:
                after(result, *args, **kwargs)
            return result

        setattr(owner, name, call)

    running = optuna.trial.TrialState.RUNNING
    complete = optuna.trial.TrialState.COMPLETE

    def state_set(result, storage, trial_id, state, values=None) -> None:
        if state == running and result:  # a queued trial taken: RUNNING, not yet sampled
            current.update(storage=storage, trial_id=trial_id)
            _die("created", storage, trial_id)
        if state == complete:
            _die("told", storage, trial_id)  # the result recorded, its kept copy not yet removed

    def attr_set(storage, trial_id, key, value) -> None:
        # the objective's first attr, a result's
        _die({"method": "sampled", "forget": "writing"}.get(key, ""), storage, trial_id)

    def attr_done(_result, storage, trial_id, key, value) -> None:
        # a queued trial tagged with this worker's run, still WAITING
        _die({"worker": "queued"}.get(key, ""), storage, trial_id)

    around(WeatheredStorage, "set_trial_state_values", after=state_set)
    around(WeatheredStorage, "set_trial_user_attr", before=attr_set, after=attr_done)
    around(WeatheredStorage, "set_trial_intermediate_value", before=lambda s, t, *a: _die("training", s, t))
    around(lorasweep.trial, "trial_model", before=lambda *a, **k: _die("preparing"))
    around(lorasweep.trial, "evaluate_model", before=lambda *a, **k: _die("evaluating"))
    around(lorasweep.objective, "keep", after=lambda *a: _die("kept"))
    around(lorasweep.objective, "attach", before=lambda *a: _die("uploading"))


if POINTS and "LORASWEEP_RUN" in os.environ:
    _install()
