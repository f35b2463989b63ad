"""The memory estimate (lorasweep/memory.py) against what trials take, on a CPU.

    python benchmarks/memory_estimate.py            # 10 trials on a 25M-parameter Llama, ~5 min on 2 cores
    python benchmarks/memory_estimate.py --steps 2  # quicker

Each trial runs in a fresh process on the embedded world's text with a random-initialised Llama
(hidden 512, 8 layers, built here) and 8 rows of 256 tokens a step. Measured: the peak of the
memory held by tensors allocated during the trial (torch's profiler, `profile_memory`: the trial's
model copy, gradients, optimizer states, activations, evaluation), next to the estimate the trial
recorded. Not the process's resident memory: the C allocator keeps freed blocks resident, which on
a CPU inflates it by up to 3x. On a GPU the same comparison, against CUDA's allocated peak, is a column of
benchmarks/gpu.py. Printed as a markdown table (BENCHMARKS.md, "Memory estimate").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8}
BASE = {"dtype": "fp32", "device": "cpu", "batch_size": 8, "max_length": 256, "eval_points": 0}
ROWS = {
    "full, adamw": {"method": "full", "learning_rate": 1e-5},
    "full, adamw, checkpointing": {"method": "full", "learning_rate": 1e-5, "gradient_checkpointing": True},
    "full, adamw_8bit": {"method": "full", "learning_rate": 1e-5, "optimizer": "adamw_8bit"},
    "full, adafactor": {"method": "full", "learning_rate": 1e-5, "optimizer": "adafactor"},
    "full, batch 16": {"method": "full", "learning_rate": 1e-5, "batch_size": 16},
    "lora r16": {"method": "lora", "rank": 16},
    "lora r16, checkpointing": {"method": "lora", "rank": 16, "gradient_checkpointing": True},
    "lora r64": {"method": "lora", "rank": 64},
    "dora r16": {"method": "dora", "rank": 16},
    "qlora nf4 r16": {"method": "qlora", "rank": 16},
}

# run in a fresh process: the peak of live tensor memory during one trial, from torch's profiler
MEASURE = """
import json, sys, tempfile, warnings
from pathlib import Path
from torch.profiler import ProfilerActivity, profile
from lorasweep.config import TrialConfig
from lorasweep.prepare import prepare
from lorasweep.trial import run_trial

warnings.filterwarnings("ignore")
config = TrialConfig.from_dict(json.loads(sys.argv[1]), "benchmark")
prepare(config)
with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
    result = run_trial(config)
with tempfile.TemporaryDirectory() as tmp:
    p.export_memory_timeline(f"{tmp}/t.raw.json", device="cpu")
    _, sizes = json.loads(Path(f"{tmp}/t.raw.json").read_text())
print(json.dumps({"peak": max(map(sum, sizes)), "estimate": result.memory_estimate_bytes,
                  "parts": result.memory_estimate}))
"""


def build_model(where: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from lorasweep.world import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **SHAPE)
    LlamaForCausalLM(config).save_pretrained(where, safe_serialization=True)
    tokenizer.save_pretrained(where)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="rows to run, by name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lorasweep-memory-") as tmp:
        model = Path(tmp, "model")
        build_model(model)
        print(
            "| trial | estimated MiB (weights, gradients, optimizer, activations) | measured MiB | measured / estimated |"
        )
        print("|---|---|---|---|")
        for name, fields in ROWS.items():
            if args.only and name not in args.only:
                continue
            config = BASE | {"model": str(model), "max_steps": args.steps, "learning_rate": 1e-3} | fields
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, json.dumps(config)],
                capture_output=True,
                text=True,
                check=True,
                cwd=tmp,
                env={
                    "PYTHONPATH": str(ROOT),
                    "PATH": "/usr/bin:/bin",
                    "LORASWEEP_CACHE_DIR": str(Path(tmp, "cache")),
                },
            )
            got = json.loads(done.stdout.strip().splitlines()[-1])
            measured = got["peak"]
            parts = ", ".join(f"{v / 2**20:.0f}" for v in got["parts"].values())
            print(
                f"| {name} | {got['estimate'] / 2**20:.0f} ({parts}) | {measured / 2**20:.0f} "
                f"| {measured / got['estimate']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
