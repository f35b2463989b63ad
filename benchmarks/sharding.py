"""A trial sharded over two CPU processes with FSDP2 (gloo) against the same trial unsharded.

    python benchmarks/sharding.py               # full FT and LoRA on the embedded default, ~2 min on 2 cores
    python benchmarks/sharding.py --steps 146   # the default budget

Both trials of a pair run the same steps on the same batches (each shard trains half the rows of
each batch); they should record the same learn and forget (forget within 1e-3), each shard holding
half of the gradients and optimizer states. On a CPU, sharding buys no speed (the two shards share
the cores and pay gloo's collectives) and the wall time shows what it costs: the spawned processes'
imports and loading. Printed as a markdown table (BENCHMARKS.md, "Sharded trials").
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorasweep.config import TrialConfig
from lorasweep.display import quiet_libraries
from lorasweep.prepare import prepare
from lorasweep.trial import run_trial

METHODS = {
    "full": {"method": "full", "learning_rate": 1e-3},
    "lora r16": {"method": "lora", "learning_rate": 1e-2},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    quiet_libraries()
    print(
        "| trial | shards | learn | forget | train loss | optimizer state MiB (all shards) | estimate MiB per device | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, fields in METHODS.items():
        config = TrialConfig(**fields, max_steps=args.steps, eval_points=2)
        prepare(config)  # the base and data once, as a worker has them, outside the timing
        for shards in (1, 2):
            started = time.perf_counter()
            r = run_trial(dataclasses.replace(config, fsdp_shards=shards))
            print(
                f"| {name} | {shards} | {r.learn:.3f} | {r.forget:+.6f} | {r.train_loss:.6f} "
                f"| {r.optimizer_state_bytes / 2**20:.2f} | {r.memory_estimate_bytes / 2**20:.1f} "
                f"| {time.perf_counter() - started:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
