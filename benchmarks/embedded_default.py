"""Is the embedded default a real benchmark? A fixed LR grid per method on the default world.

Runs full FT, LoRA all-linear and LoRA q,v (rank 16, alpha 32) at four learning rates each, with
the token budget and schedule of search_spaces/default.yaml, and prints a markdown table plus the
best LR of each group (the figures in BENCHMARKS.md):

    python benchmarks/embedded_default.py            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import dataclasses
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


def main() -> None:
    space = load_space(ROOT / "search_spaces" / "default.yaml")
    base = space.trial_config(space.baselines[0])  # the space's fixed settings
    prepare(base)
    print("| group | lr | learn | forget | domain loss | general QA delta | trial s |")
    print("|---|---|---|---|---|---|---|")
    best = {}
    for group, (fields, rates) in GROUPS.items():
        for lr in rates:
            config = dataclasses.replace(base, **fields, learning_rate=lr)
            r = run_trial(config)
            print(
                f"| {group} | {lr:.0e} | {r.learn:.3f} | {r.forget:+.3f} | {r.domain_loss:.3f} "
                f"| {r.general_qa_delta:+.3f} | {r.wall_s:.1f} |",
                flush=True,
            )
            if group not in best or r.learn > best[group][1]:
                best[group] = (lr, r.learn, r.forget)
    print("\n| group | best lr | learn | forget |\n|---|---|---|---|")
    for group, (lr, learn, forget) in best.items():
        print(f"| {group} | {lr:.0e} | {learn:.3f} | {forget:+.3f} |")
    ratio = best["lora all-linear r16"][0] / best["full"][0]
    print(f"\nbest LoRA all-linear LR / best full-FT LR: {ratio:g}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
