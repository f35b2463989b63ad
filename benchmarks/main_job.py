"""Does the main job give the same answer whatever its sampler seed? `lorasweep optimize` x seeds.

Runs the main job (search_spaces/default.yaml, 12 trials, each arm's leaders replicated with 2
more seeds) once per sampler seed, each into its own study, and prints per seed: the wall time
(of the optimize command), the trials per method, the best LoRA configuration (mean
± over its seeds), each arm's replicated leader at equal forgetting (mean ± sd of learn and
forget) and the verdict's winner; then how often the best LoRA configuration's replicated mean
learn reaches 0.60 and how often the verdict names its most common winner (the figures in
BENCHMARKS.md, "The main job over sampler seeds"):

    python benchmarks/main_job.py                  # seeds 0..4, about 30 minutes on 2 cores
    python benchmarks/main_job.py --seeds 3 --out results/bench/main_job.db
    python benchmarks/main_job.py --read           # the table of the studies already run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna

from lorasweep.analysis import describe, rows_of
from lorasweep.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
LORA_GOAL = 0.60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds 0..S-1")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "main_job.db")
    parser.add_argument("--read", action="store_true", help="only print the table of the studies in --out")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{args.out.resolve()}"
    print(
        "| seed | wall | trials (full/LoRA) | best LoRA configuration: learn, forget | verdict's LoRA: "
        "learn, forget | verdict's full FT: learn, forget | winner |"
    )
    print("|---|---|---|---|---|---|---|")
    best_lora, winners = [], []
    for seed in range(args.seeds):
        name = f"main-seed{seed}"
        wall = None if args.read else run(name, seed, url)
        study = optuna.load_study(study_name=name, storage=url)
        searched = [t for t in study.trials if "replicate_of" not in t.user_attrs]
        methods = Counter(t.params.get("method") for t in searched)
        found = verdict(study)
        arms = {a.name: a for a in found.arms}
        cells = []
        for arm in ("LoRA", "full FT"):
            a = arms.get(arm)
            cells.append(
                "-"
                if a is None
                else f"{a.label} ({a.learn.n} seeds): {a.learn.text()}, {a.forget.text(signed=True)}"
            )
        lora = [r for r in rows_of(study) if r.arm == "lora"]
        best = max(lora, key=lambda r: r.learn)
        best_lora.append(best.learn if best.seeds > 1 else float("nan"))
        winners.append(found.winner or "none")
        print(
            f"| {seed} | {'-' if wall is None else f'{wall / 60:.1f} min'} | {methods['full']}/{methods['lora']} | "
            f"{describe(best.config)} ({best.seeds} seeds): {best.learn:.3f}, {best.forget:+.3f} | "
            f"{cells[0]} | {cells[1]} | {found.winner or 'none'} |",
            flush=True,
        )
    reached = sum(m >= LORA_GOAL for m in best_lora)
    common, times = Counter(winners).most_common(1)[0]
    print(f"\nbest LoRA configuration's replicated mean learn >= {LORA_GOAL}: {reached} of {args.seeds}")
    print(f"verdict's winner: {common} in {times} of {args.seeds} ({dict(Counter(winners))})")


def run(name: str, seed: int, url: str) -> float:
    """The main job with sampler seed `seed` into a fresh study `name` (a rerun is comparable);
    returns its wall time in seconds."""
    if name in optuna.get_all_study_names(url):
        optuna.delete_study(study_name=name, storage=url)
    command = [sys.executable, "-m", "lorasweep", "optimize", "--seed", str(seed), "--study", name]
    start = time.monotonic()
    subprocess.run([*command, "--storage", url], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


if __name__ == "__main__":
    main()
