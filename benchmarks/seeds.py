"""How much does the seed move a trial? learn and forget of fixed configurations over seeds.

Each configuration of the default world (search_spaces/default.yaml's fixed settings) is trained
with seeds 0..S-1 (the seed orders the training data, initialises the adapter and draws dropout);
prints every run and, per configuration, the mean, the sample standard deviation and the range
(the figures in BENCHMARKS.md, "Seed-to-seed spread"):

    python benchmarks/seeds.py                 # 3 configurations x 5 seeds, about 7 minutes on 2 cores
    python benchmarks/seeds.py --seeds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from lorasweep.prepare import prepare
from lorasweep.search_space import load_space
from lorasweep.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]
LORA = {"method": "lora", "rank": 16, "alpha": 32.0, "target_modules": "all-linear"}
CONFIGS = {
    "full lr 1e-3": {"method": "full", "learning_rate": 1e-3},
    "lora r16 a32 all-linear lr 3e-3": {**LORA, "learning_rate": 3e-3},
    "lora r16 a32 all-linear lr 1e-2": {**LORA, "learning_rate": 1e-2},
}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}..{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 per configuration")
    args = parser.parse_args()
    space = load_space(ROOT / "search_spaces" / "default.yaml")
    base = space.trial_config(space.baselines[0])  # the space's fixed settings
    prepare(base)
    print("| configuration | seed | learn | forget | trial s |\n|---|---|---|---|---|")
    runs: dict[str, list] = {}
    for name, fields in CONFIGS.items():
        for seed in range(args.seeds):
            r = run_trial(dataclasses.replace(base, **fields, seed=seed))
            runs.setdefault(name, []).append(r)
            print(f"| {name} | {seed} | {r.learn:.3f} | {r.forget:+.3f} | {r.wall_s:.1f} |", flush=True)
    print(f"\n| configuration | learn, mean ± sd (range), {args.seeds} seeds | forget |\n|---|---|---|")
    for name, results in runs.items():
        print(f"| {name} | {spread([r.learn for r in results])} | {spread([r.forget for r in results])} |")


if __name__ == "__main__":
    main()
