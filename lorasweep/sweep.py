"""The trials of one command, shown as they run: `lorasweep optimize` and `lorasweep confirm`.

Both load the base model and data before the study is touched (a bad model or data path leaves no
study behind), open the study, and run trials of one objective under progress bars, printing a line
per finished trial; both end with the study's verdict, printed and saved as its dashboard note.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from rich.progress import Progress, TaskID

from lorasweep.analysis import plural
from lorasweep.claim_lock import claim_lock
from lorasweep.config import TrialConfig
from lorasweep.confirm import leaders, queue_replicates
from lorasweep.display import err_console, progress, say, trial_line
from lorasweep.objective import TRIAL_FAILURES, make_objective
from lorasweep.pending import discard, folder, record_kept
from lorasweep.prepare import prepare
from lorasweep.records import value_names
from lorasweep.search_space import SearchSpace
from lorasweep.study import open_study
from lorasweep.verdict import save_note, verdict
from lorasweep.workers import run_sweep
from lorasweep.world import default_cache_dir


@dataclass
class Session:
    study: optuna.Study
    objective: Callable[[optuna.Trial], Any]
    bars: Progress
    task: TaskID  # the trials this command runs
    kept: Path | None  # where finished trials' results wait for the study (pending.py)

    def on_trial(self, frozen: optuna.trial.FrozenTrial) -> None:
        self.bars.advance(self.task)
        say(trial_line(frozen, value_names(self.study)), self.bars.console)

    def recover(self, study: optuna.Study) -> None:
        """Record the results that stopped processes left on this machine (under the claim lock)."""
        for line in record_kept(study, self.kept):
            say(line, err_console)

    def told(self, _study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """After Optuna's tell: the study has the trial's result, its kept copy goes."""
        if self.kept is not None:
            discard(self.kept, frozen.number)

    def run(
        self,
        n: int,
        before_trial: Callable[[optuna.Study], bool],
        command: Sequence[str] = (),
        seconds: float | None = None,
        seed: int = 0,
        workers: int = 1,
        devices: Sequence[str] | None = None,
    ) -> tuple[int, str]:
        """`n` trials of the study, here or in `workers` processes (workers.run_sweep)."""
        return run_sweep(
            self.study,
            self.objective,
            command,
            n,
            seconds,
            seed,
            workers,
            devices,
            self.on_trial,
            before_trial=before_trial,
            recover=self.recover,
            callbacks=[self.told],
            catch=TRIAL_FAILURES,
        )


@contextmanager
def session(
    space: SearchSpace,
    name: str,
    store: optuna.storages.BaseStorage,
    seed: int,
    cache_dir: Path | None,
    artifact_dir: Path | None,
    steps_shown: bool = True,
) -> Iterator[Session]:
    """Base model and data prepared, the study opened, progress bars for trials and steps."""
    with progress() as bars:
        build = bars.add_task("base model", total=None)

        def on_build_step(step: int, total: int) -> None:
            bars.update(build, completed=step, total=total, description="building base model")

        started = time.monotonic()

        def on_tokens(_docs: int, tokens: int) -> None:
            rate = tokens / max(time.monotonic() - started, 1e-6)
            bars.update(build, description=f"tokenising the corpus: {tokens:,} tokens ({rate:,.0f}/s)")

        config = TrialConfig.from_dict(space.config, str(space.path))
        prepared = prepare(config, cache_dir, on_build_step, on_tokens)
        study = open_study(name, store, space, seed, base_metrics=prepared.base_metrics)
        kept = folder(cache_dir or default_cache_dir(), study)
        bars.update(build, visible=False)
        task = bars.add_task("trials", total=None, visible=False)
        steps = bars.add_task("steps", total=None, visible=steps_shown)
        on_step = lambda s, n: bars.update(steps, completed=s, total=n)
        objective = make_objective(space, on_step, cache_dir, artifact_dir, kept)
        yield Session(study, objective, bars, task, kept)


def replicate(s: Session, tolerance: float | None, top: int, seeds: int, run: Callable[[int], Any]) -> None:
    """Queue the replicates of each arm's `top` leaders (confirm.py) and run them with `run(n)`."""
    chosen = leaders(s.study, tolerance, top)
    if not chosen:
        within = "" if tolerance is None else f" within forget <= {tolerance:g}"
        say(f"no configuration to replicate yet (no completed trial{within})", s.bars.console)
        return
    with claim_lock(s.study):
        pending = queue_replicates(s.study, chosen, seeds)
    if not pending:
        say(f"no replicate to add: each leader has {seeds} already", s.bars.console)
        return
    of = sorted({q.of for q in pending})
    # Optuna starts the oldest queued trial first: any queued before the replicates run too
    queued = len(s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    ahead = queued - len(pending)
    say(
        f"replicating trial{'s' * (len(of) > 1)} {', '.join(map(str, of))} "
        f"(each arm's leader{'s' * (top > 1)} and top learner): {plural(len(pending), 'more seed')}"
        + (f", after {plural(ahead, 'trial')} queued before them" if ahead else ""),
        s.bars.console,
    )
    s.bars.reset(s.task, description="replicates", total=queued, visible=True)
    run(queued)


def conclude(study: optuna.Study, tolerance: float | None = None) -> None:
    """Print the study's verdict and save it as the study's note in optuna-dashboard."""
    found = verdict(study, tolerance)
    say("\n" + "\n".join(found.lines))
    save_note(study, found)
