"""Each adapter method of search_spaces/peft_methods.yaml at its best of three LRs, on the embedded default.

    python benchmarks/peft_methods.py          # 14 methods x 3 LRs, ~20 min on 2 cores
    python benchmarks/peft_methods.py --json results/peft_methods.json

Settings: those of search_spaces/peft_methods.yaml (150k training tokens, batch 16 x 64, cosine,
LoRA rank 16 alpha 32 all-linear), one seed. For each method the LR with the highest learn is
reported (ties: the lower forget), with its forget, trainable parameters, peak memory (resident,
CPU) and tokens/s. Printed as a markdown table (BENCHMARKS.md, "Adapter methods at their best LR").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorasweep.config import TrialConfig
from lorasweep.display import quiet_libraries
from lorasweep.trial import run_trial

LORA_LRS = (3e-3, 1e-2, 3e-2)
METHODS = {
    "LoRA": ({"method": "lora"}, LORA_LRS),
    "LoRA gaussian": ({"method": "lora", "init_lora_weights": "gaussian"}, LORA_LRS),
    "LoRA orthogonal": ({"method": "lora", "init_lora_weights": "orthogonal"}, LORA_LRS),
    "LoRA PiSSA (niter 4)": ({"method": "lora", "init_lora_weights": "pissa_niter_4"}, LORA_LRS),
    "LoRA OLoRA": ({"method": "lora", "init_lora_weights": "olora"}, LORA_LRS),
    "LoRA EVA": ({"method": "lora", "init_lora_weights": "eva"}, LORA_LRS),
    "LoRA CorDA": ({"method": "lora", "init_lora_weights": "corda"}, LORA_LRS),
    "LoRA-GA": ({"method": "lora", "init_lora_weights": "lora_ga"}, LORA_LRS),
    "LoRA+ (ratio 16)": ({"method": "lora", "loraplus_lr_ratio": 16.0}, (1e-3, 3e-3, 1e-2)),
    "DoRA": ({"method": "dora"}, LORA_LRS),
    "OFT (block 32)": (
        {"method": "peft", "peft_config": {"peft_type": "OFT", "oft_block_size": 32}},
        (1e-3, 3e-3, 1e-2),
    ),
    "VeRA (r 256)": ({"method": "peft", "peft_config": {"peft_type": "VERA", "r": 256}}, (1e-2, 3e-2, 1e-1)),
    "MiSS (r 16)": ({"method": "peft", "peft_config": {"peft_type": "MISS", "r": 16}}, (1e-3, 3e-3, 1e-2)),
    "full FT": ({"method": "full"}, (3e-4, 1e-3, 3e-3)),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet_libraries()
    base = TrialConfig(rank=16, alpha_ratio=2.0, target_modules="all-linear")
    print(
        "| method | best LR | learn | forget | trainable params | peak RSS MiB | tokens/s | learn at each LR |"
    )
    print("|---|---|---|---|---|---|---|---|")
    runs = {}
    for name, (fields, lrs) in METHODS.items():
        results = [run_trial(dataclasses.replace(base, **fields, learning_rate=lr)) for lr in lrs]
        runs[name] = [r.attrs() for r in results]
        best = max(range(len(lrs)), key=lambda i: (results[i].learn, -results[i].forget))
        r = results[best]
        print(
            f"| {name} | {lrs[best]:.0e} | {r.learn:.3f} | {r.forget:+.3f} | {r.trainable_params:,} "
            f"| {r.peak_mem_bytes / 2**20:.0f} | {r.tokens_per_s:,.0f} "
            f"| {' / '.join(f'{x.learn:.2f}' for x in results)} |",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
