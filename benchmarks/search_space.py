"""Replay, LAWA and adapter methods on the embedded default (the figures in BENCHMARKS.md).

    python benchmarks/search_space.py replay     # forget/learn at replay 0, 0.1, 0.3, 0.5 (8 trials)
    python benchmarks/search_space.py lawa       # LAWA average vs final weights (4 trials)
    python benchmarks/search_space.py methods    # LoRA, DoRA, rsLoRA, QLoRA nf4/int8: memory, speed

Each prints a markdown table. Settings: those of search_spaces/default.yaml, LoRA rank 16 alpha 32
all-linear at lr 1e-2 and full FT at lr 1e-3 (the best LRs of benchmarks/embedded_default.py).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from lorasweep.config import TrialConfig
from lorasweep.prepare import prepare
from lorasweep.search_space import load_space
from lorasweep.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]


def base_config() -> TrialConfig:
    space = load_space(ROOT / "search_spaces" / "default.yaml")
    return space.trial_config(space.baselines[1])  # LoRA r16, alpha 32, all-linear


LORA = {"method": "lora", "rank": 16, "alpha": 32.0, "target_modules": "all-linear", "learning_rate": 1e-2}
FULL = {"method": "full", "learning_rate": 1e-3}


def replay(base: TrialConfig) -> None:
    print("| method | replay | learn | forget | general QA delta | domain loss |\n|---|---|---|---|---|---|")
    for name, fields in (("lora", LORA), ("full", FULL)):
        for ratio in (0.0, 0.1, 0.3, 0.5):
            r = run_trial(dataclasses.replace(base, **fields, replay_ratio=ratio))
            print(
                f"| {name} | {ratio} | {r.learn:.3f} | {r.forget:+.3f} | {r.general_qa_delta:+.3f} "
                f"| {r.domain_loss:.3f} |",
                flush=True,
            )


def lawa(base: TrialConfig) -> None:
    print(
        "| method | lr | learn | lawa_learn | forget | lawa_forget | snapshot MB |\n|---|---|---|---|---|---|---|"
    )
    runs = (("lora", LORA, 1e-2), ("lora", LORA, 3e-2), ("full", FULL, 1e-3), ("full", FULL, 3e-3))
    for name, fields, lr in runs:
        config = dataclasses.replace(base, **{**fields, "learning_rate": lr}, lawa_k=4, lawa_interval=10)
        r = run_trial(config)
        print(
            f"| {name} | {lr:.0e} | {r.learn:.3f} | {r.lawa_learn:.3f} | {r.forget:+.3f} "
            f"| {r.lawa_forget:+.3f} | {r.lawa_snapshot_bytes / 2**20:.1f} |",
            flush=True,
        )


def methods(base: TrialConfig) -> None:
    print("| method | learn | forget | trainable params | model MB | peak RSS MB | tokens/s | trial s |")
    print("|---|---|---|---|---|---|---|---|")
    variants = (
        ("lora", {}),
        ("rslora", {"method": "rslora"}),
        ("dora", {"method": "dora"}),
        ("qlora nf4", {"method": "qlora", "quantization": "nf4"}),
        ("qlora int8", {"method": "qlora", "quantization": "int8"}),
    )
    for name, fields in variants:
        r = run_trial(dataclasses.replace(base, **{**LORA, **fields}))
        print(
            f"| {name} | {r.learn:.3f} | {r.forget:+.3f} | {r.trainable_params:,} "
            f"| {r.model_bytes / 2**20:.2f} | {r.peak_mem_bytes / 2**20:.0f} | {r.tokens_per_s:,.0f} "
            f"| {r.wall_s:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    which = sys.argv[1:] or ["replay", "lawa", "methods"]
    config = base_config()
    prepare(config)
    for name in which:
        print(f"\n### {name}\n")
        {"replay": replay, "lawa": lawa, "methods": methods}[name](config)
