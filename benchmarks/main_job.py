"""Does the main job give the same answer whatever its sampler seed? `lorasweep optimize` x seeds.

Runs the main job (search_spaces/default.yaml, 12 trials, each arm's leader replicated with 2 more
seeds) once per sampler seed, each into its own study, and prints per seed: the wall time, the
trials per method, each arm's replicated leader (mean ± sd of learn and forget over its seeds) and
the verdict's winner; then how often the best LoRA configuration's replicated mean learn reaches
0.60 and how often the verdict names its most common winner (the figures in BENCHMARKS.md, "The
main job over sampler seeds"):

    python benchmarks/main_job.py                  # seeds 0..4, about 30 minutes on 2 cores
    python benchmarks/main_job.py --seeds 3 --out results/bench/main_job.db
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna

from lorasweep.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
LORA_GOAL = 0.60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds 0..S-1")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "main_job.db")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{args.out.resolve()}"
    print(
        "| seed | wall | trials (full/LoRA) | LoRA leader: learn, forget | full FT leader: learn, forget | winner |"
    )
    print("|---|---|---|---|---|---|")
    lora_means, winners = [], []
    for seed in range(args.seeds):
        name = f"main-seed{seed}"
        if name in optuna.get_all_study_names(url):  # a fresh study each time: a rerun is comparable
            optuna.delete_study(study_name=name, storage=url)
        start = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lorasweep",
                "optimize",
                "--seed",
                str(seed),
                "--study",
                name,
                "--storage",
                url,
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.monotonic() - start
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
        lora_means.append(arms["LoRA"].learn.mean if "LoRA" in arms else float("nan"))
        winners.append(found.winner or "none")
        print(
            f"| {seed} | {wall / 60:.1f} min | {methods['full']}/{methods['lora']} | {cells[0]} | {cells[1]} "
            f"| {found.winner or 'none'} |",
            flush=True,
        )
    reached = sum(m >= LORA_GOAL for m in lora_means)
    common, times = Counter(winners).most_common(1)[0]
    print(f"\nbest LoRA configuration's replicated mean learn >= {LORA_GOAL}: {reached} of {args.seeds}")
    print(f"verdict's winner: {common} in {times} of {args.seeds} ({dict(Counter(winners))})")


if __name__ == "__main__":
    main()
