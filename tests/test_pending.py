"""Results kept on disk until the study has them (pending.py), as a later process recovers them."""

import json
import socket
import subprocess

import optuna

from lorasweep.pending import Kept, keep, record_kept


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def constrained_study(tmp_path) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    study.set_metric_names(["learn"])
    return study


def test_a_kept_result_is_recorded_whole_with_each_constraint(tmp_path):
    study = constrained_study(tmp_path)
    trial = study.ask()
    pid = gone_pid()
    kept = Kept(
        trial.number, 4, 0.5, {"learn": 0.5}, [0.5], {"forget": -0.1, "memory": 0.2}, pid=pid, started="x"
    )
    keep(tmp_path / "kept", kept)
    lines = record_kept(study, tmp_path / "kept")
    frozen = study.trials[0]
    assert len(lines) == 1 and "is recorded" in lines[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.values == [0.5]
    assert frozen.constraints == {"forget": -0.1, "memory": 0.2}
    assert not list((tmp_path / "kept").glob("*"))


def test_a_result_kept_by_an_older_lorasweep_with_one_constraint_is_still_recorded(tmp_path):
    study = constrained_study(tmp_path)
    trial = study.ask()
    (tmp_path / "kept").mkdir()
    old = {  # the file lorasweep wrote when a study had one constraint, forget's
        "number": trial.number,
        "step": 4,
        "learn": 0.5,
        "attrs": {"learn": 0.5},
        "values": [0.5],
        "constraint": 0.25,
        "host": socket.gethostname(),
        "pid": gone_pid(),
        "started": "x",
    }
    (tmp_path / "kept" / f"trial-{trial.number}.json").write_text(json.dumps(old))
    record_kept(study, tmp_path / "kept")
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.constraints == {"forget": 0.25}
