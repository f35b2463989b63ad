"""Each adapter method of search_spaces/peft_methods.yaml at its best of five LRs, with its seed
spread there, on the embedded default.

    python benchmarks/peft_methods.py          # 14 methods x 5 LRs + 2 more seeds at each best, ~35 min on 2 cores
    python benchmarks/peft_methods.py --json results/peft_methods.json
    python benchmarks/peft_methods.py --from-json results/peft_methods.json   # the table again

Settings: those of search_spaces/peft_methods.yaml (150k training tokens, batch 16 x 64, cosine,
LoRA rank 16 alpha 32 all-linear). Each method runs at five LRs with seed 0; the LR with the
highest learn (ties: the lower forget) is its best, and runs again with seeds 1 and 2. Reported:
the best LR, learn and forget as the mean and standard deviation over the three seeds, trainable
parameters, peak memory (lorasweep's estimate: on a CPU the process's resident memory measures
the libraries, not the method), tokens/s, learn at each LR, and learn at 3e-3, the one LR every
grid shares (how much a method's standing depends on the LR it is given), and the best learn of
the grid with forget <= 0.4 (the methods at equal forgetting, seed 0). Printed as a markdown
table (BENCHMARKS.md, "Adapter methods at their best LR").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorasweep.config import TrialConfig
from lorasweep.display import quiet_libraries
from lorasweep.trial import run_trial

SHARED_LR = 3e-3  # in every grid below
FORGET_BAR = 0.4  # learn compared at equal forgetting: each method's best grid point within it
ADAPTER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
LOW_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # LoRA+ trains B at 16x the LR
SEEDS = (1, 2)  # run again at each method's best LR
METHODS = {
    "LoRA": ({"method": "lora"}, ADAPTER_LRS),
    "LoRA gaussian": ({"method": "lora", "init_lora_weights": "gaussian"}, ADAPTER_LRS),
    "LoRA orthogonal": ({"method": "lora", "init_lora_weights": "orthogonal"}, ADAPTER_LRS),
    "LoRA PiSSA (niter 4)": ({"method": "lora", "init_lora_weights": "pissa_niter_4"}, ADAPTER_LRS),
    "LoRA OLoRA": ({"method": "lora", "init_lora_weights": "olora"}, ADAPTER_LRS),
    "LoRA EVA": ({"method": "lora", "init_lora_weights": "eva"}, ADAPTER_LRS),
    "LoRA CorDA": ({"method": "lora", "init_lora_weights": "corda"}, LOW_LRS),
    "LoRA-GA": ({"method": "lora", "init_lora_weights": "lora_ga"}, ADAPTER_LRS),
    "LoRA+ (ratio 16)": ({"method": "lora", "loraplus_lr_ratio": 16.0}, LOW_LRS),
    "DoRA": ({"method": "dora"}, ADAPTER_LRS),
    "OFT (block 32)": (
        {"method": "peft", "peft_config": {"peft_type": "OFT", "oft_block_size": 32}},
        ADAPTER_LRS,
    ),
    "VeRA (r 256)": (
        {"method": "peft", "peft_config": {"peft_type": "VERA", "r": 256}},
        (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    ),
    "MiSS (r 16)": ({"method": "peft", "peft_config": {"peft_type": "MISS", "r": 16}}, ADAPTER_LRS),
    "full FT": ({"method": "full"}, (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
}


def spread(values: list[float], sign: str = "") -> str:
    return f"{statistics.mean(values):{sign}.3f} ± {statistics.stdev(values):.3f}"


def run(name: str, base: TrialConfig) -> dict[str, list[dict]]:
    """A method's grid (seed 0) and its best LR's seeds, as each trial's recorded attrs."""
    fields, lrs = METHODS[name]
    grid = [run_trial(dataclasses.replace(base, **fields, learning_rate=lr)).attrs() for lr in lrs]
    best = max(range(len(lrs)), key=lambda i: (grid[i]["learn"], -grid[i]["forget"]))
    seeds = [grid[best]] + [
        run_trial(dataclasses.replace(base, **fields, learning_rate=lrs[best], seed=s)).attrs() for s in SEEDS
    ]
    return {"grid": grid, "seeds": seeds}


def row(name: str, grid: list[dict], seeds: list[dict]) -> str:
    """The method's line of the table."""
    best = seeds[0]
    lrs = [t["config"]["learning_rate"] for t in grid]
    within = [t["learn"] for t in grid if t["forget"] <= FORGET_BAR]
    return (
        f"| {name} | {best['config']['learning_rate']:.0e} | {spread([t['learn'] for t in seeds])} "
        f"| {spread([t['forget'] for t in seeds], '+')} | {best['trainable_params']:,} "
        f"| {best['peak_memory_gb'] * 1024:.1f} | {best['tokens_per_s']:,.0f} "
        f"| {' / '.join(format(t['learn'], '.2f') for t in grid)} "
        f"| {grid[lrs.index(SHARED_LR)]['learn']:.3f} "
        f"| {max(within):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="keep every trial's attrs here")
    parser.add_argument("--from-json", type=Path, help="print the table of a run kept with --json")
    args = parser.parse_args()
    print(
        "| method | best LR | learn (3 seeds) | forget (3 seeds) | trainable params | memory MiB (est.) "
        f"| tokens/s | learn at each LR | learn at {SHARED_LR:.0e} | best learn, forget <= {FORGET_BAR:+g} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    if args.from_json:
        for name, runs in json.loads(args.from_json.read_text()).items():
            print(row(name, runs["grid"], runs["seeds"]))
        return
    quiet_libraries()
    base = TrialConfig(rank=16, alpha_ratio=2.0, target_modules="all-linear")
    runs = {}
    for name in METHODS:
        runs[name] = run(name, base)
        print(row(name, runs[name]["grid"], runs[name]["seeds"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
