"""Is the embedded default a real benchmark? A fixed LR grid per method on the default world.

Runs full FT, LoRA all-linear and LoRA q,v (rank 16, alpha 32) at four learning rates each, with
the token budget and schedule of search_spaces/default.yaml, each with seeds 0..S-1, and prints a
markdown table (mean ± sd over seeds) plus the best LR of each group by mean learn, with the LRs
whose mean is within two standard errors of the best (the figures in BENCHMARKS.md):

    python benchmarks/embedded_default.py             # one seed, about 4 minutes on 2 CPU cores
    python benchmarks/embedded_default.py --seeds 3   # about 12 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path

from lorasweep.prepare import prepare
from lorasweep.search_space import load_space
from lorasweep.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {
    "full": ({"method": "full"}, [1e-4, 3e-4, 1e-3, 3e-3]),
    "lora all-linear r16": (
        {"method": "lora", "rank": 16, "alpha": 32.0, "target_modules": "all-linear"},
        [1e-3, 3e-3, 1e-2, 3e-2],
    ),
    "lora qv r16": (
        {"method": "lora", "rank": 16, "alpha": 32.0, "target_modules": "qv"},
        [1e-3, 3e-3, 1e-2, 3e-2],
    ),
}


def spread(values: list[float], signed: bool = False) -> str:
    mean = f"{statistics.mean(values):+.3f}" if signed else f"{statistics.mean(values):.3f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 per grid point")
    args = parser.parse_args()
    space = load_space(ROOT / "search_spaces" / "default.yaml")
    base = space.trial_config(space.baselines[0])  # the space's fixed settings
    prepare(base)
    print("| group | lr | learn | forget | domain loss | general QA delta | trial s |")
    print("|---|---|---|---|---|---|---|")
    grid: dict[str, dict[float, list]] = {}
    for group, (fields, rates) in GROUPS.items():
        for lr in rates:
            runs = [
                run_trial(dataclasses.replace(base, **fields, learning_rate=lr, seed=seed))
                for seed in range(args.seeds)
            ]
            grid.setdefault(group, {})[lr] = runs
            print(
                f"| {group} | {lr:.0e} | {spread([r.learn for r in runs])} | "
                f"{spread([r.forget for r in runs], signed=True)} | {spread([r.domain_loss for r in runs])} "
                f"| {spread([r.general_qa_delta for r in runs], signed=True)} "
                f"| {statistics.mean(r.wall_s for r in runs):.1f} |",
                flush=True,
            )
    print("\n| group | best lr (by mean learn) | learn | forget | LRs within 2 standard errors |")
    print("|---|---|---|---|---|")
    best = {}
    for group, rates in grid.items():
        learn = {lr: [r.learn for r in runs] for lr, runs in rates.items()}
        lr = max(learn, key=lambda k: statistics.mean(learn[k]))
        best[group] = lr
        tied = [
            k
            for k in learn
            if statistics.mean(learn[lr]) - statistics.mean(learn[k]) <= _two_se(learn, lr, k)
        ]
        forget = [r.forget for r in rates[lr]]
        print(
            f"| {group} | {lr:.0e} | {spread(learn[lr])} | {spread(forget, signed=True)} "
            f"| {', '.join(f'{k:.0e}' for k in sorted(tied))} |"
        )
    ratio = best["lora all-linear r16"] / best["full"]
    print(f"\nbest LoRA all-linear LR / best full-FT LR (by mean learn): {ratio:g}")
    sys.stdout.flush()


def _two_se(learn: dict[float, list[float]], a: float, b: float) -> float:
    """Two standard errors of the difference of two LRs' mean learn (0 with one seed)."""
    if len(learn[a]) < 2:
        return 0.0
    return 2 * math.sqrt(sum(statistics.variance(learn[k]) / len(learn[k]) for k in (a, b)))


if __name__ == "__main__":
    main()
