"""LoRA, QLoRA and full-FT trials in bf16 on a random-initialised ~0.9B Llama, on one GPU.

    python benchmarks/gpu.py                  # builds the model, runs every row 3 times (~8 min on an H100)
    python benchmarks/gpu.py --steps 20 --runs 1   # a quick look (~3 min)
    python benchmarks/gpu.py --compile        # every row with `compile: true`
    python benchmarks/gpu.py --smoke          # every row and the reproduce check on a CPU, tiny model (~1 min)

Each row is a real lorasweep trial (`run_trial` with `model:` set to a directory built here, the
embedded world's text packed into 1024-token rows), so the figures include everything a sweep pays
per trial except loading the base, which a worker does once: LoRA, QLoRA and full FT with `adamw`
and `adamw_8bit`, each with and without gradient checkpointing. Printed as a markdown table (the GPU
rows of BENCHMARKS.md) with the memory estimated before loading (memory.py) beside the measured
peak; `--json PATH` also writes every run. Then a one-trial study on the same model is recorded
by `lorasweep optimize` and checked by `lorasweep reproduce --tolerance 0.02` (0 on a CPU).

`--smoke` runs all of it on the CPU with a tiny model, so the script is known to work before a GPU
is lent (tests/test_gpu_benchmark.py runs it). On a GPU machine without a package index, see
benchmarks/gpu_wheels.sh for the wheels it needs and the command that runs it there.

MFU = model FLOPs per second / the bf16 dense matmul peak measured on the same GPU in the same run
(8192^3 products). Model FLOPs per token, N = parameters in matmuls (embeddings excluded), L layers,
h hidden size, T tokens per row:
- full FT: 6N + 12·L·h·T (forward, input gradients, weight gradients; attention scores);
- LoRA and QLoRA: 4N + 12·L·h·T + 6·N_adapter (frozen weights get no weight gradient);
- recomputation under gradient checkpointing is not counted (it is overhead, not model work).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lorasweep from this tree, installed or not

from lorasweep.config import TrialConfig
from lorasweep.display import quiet_libraries
from lorasweep.trial import run_trial
from lorasweep.world import make_tokenizer

GPU = {
    "dir": ROOT / "results" / "bench" / "llama-0.9b",
    "shape": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
    },
    "base": {"dtype": "bf16", "device": "cuda", "batch_size": 16, "max_length": 1024, "max_steps": 30},
    "tolerance": 0.02,
}
SMOKE = {
    "dir": None,  # a temporary directory
    "shape": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "base": {"dtype": "fp32", "device": "cpu", "batch_size": 4, "max_length": 64, "max_steps": 3},
    "tolerance": 0.0,
}
COMMON = {"eval_points": 0, "warmup_ratio": 0.0, "schedule": "constant"}
LORA = {"method": "lora", "rank": 16, "learning_rate": 1e-3}
QLORA = {"method": "qlora", "quantization": "nf4", "rank": 16, "learning_rate": 1e-3}
FULL = {"method": "full", "learning_rate": 1e-5}
ROWS = {
    "lora r16 all-linear": LORA,
    "qlora nf4 r16 all-linear": QLORA,
    "full, adamw": FULL,
    "full, adamw_8bit": FULL | {"optimizer": "adamw_8bit"},
}
ROWS |= {
    f"{name}, checkpointing": fields | {"gradient_checkpointing": True} for name, fields in list(ROWS.items())
}


def build_model(where: Path, shape: dict, device: str) -> dict[str, int]:
    """A random-initialised Llama of `shape` with the world's tokenizer, saved in bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    if not (where / "config.json").exists():
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(where, safe_serialization=True)
        tokenizer.save_pretrained(where)
        del model
    with torch.device("meta"):
        total = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return {
        "total": total,
        "matmul": total - config.vocab_size * config.hidden_size,
    }  # all but the input embedding


def matmul_peak(device: str) -> float:
    """bf16 dense matmul FLOP/s: median of 10 timed products after warm-up (8192^3 on a GPU)."""
    n = 8192 if device == "cuda" else 512
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times)


def flops_per_token(method: str, shape: dict, length: int, matmul_params: int, adapter_params: int) -> float:
    attention = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * length
    if method == "full":
        return 6 * matmul_params + attention
    return 4 * matmul_params + attention + 6 * adapter_params


def size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def reproduce_check(base: TrialConfig, tolerance: float, work: Path) -> dict:
    """A one-trial LoRA study recorded by `lorasweep optimize`, then `lorasweep reproduce` on it."""
    fields = {k: v for k, v in (dataclasses.asdict(base) | LORA).items() if k not in ("world", "method")}
    space = {"config": fields, "params": {"method": {"choices": ["lora"]}}, "baselines": []}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{work / 'gpu.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    commands = [
        ["optimize", "--space", "space.yaml", "--study", "gpu", "--n-trials", "1", "--replicates", "0"],
        ["reproduce", "--study", "gpu", "--trial", "0", "--tolerance", str(tolerance)],
    ]
    outputs = []
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "lorasweep", *args, "--storage", storage],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        outputs.append(done.stdout + done.stderr)
        if done.returncode != 0:
            return {"ok": False, "tolerance": tolerance, "output": "\n".join(outputs)}
    return {"ok": True, "tolerance": tolerance, "output": outputs[-1].strip()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile", action="store_true", help="torch.compile every trial (compile: true)")
    parser.add_argument("--smoke", action="store_true", help="every row on the CPU with a tiny model")
    args = parser.parse_args()
    quiet_libraries()
    setup = SMOKE if args.smoke else GPU
    runs = 1 if args.smoke else args.runs
    with tempfile.TemporaryDirectory(prefix="lorasweep-gpu-") as tmp:
        model_dir = setup["dir"] or Path(tmp, "model")
        base = TrialConfig(model=str(model_dir), **setup["base"], **COMMON)
        if args.steps:
            base = dataclasses.replace(base, max_steps=args.steps)
        device = base.device
        params = build_model(model_dir, setup["shape"], device)
        peak = matmul_peak(device)
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run)"
        print(f"{name}, torch {torch.__version__}: bf16 matmul peak {peak / 1e12:.1f} TFLOP/s")
        print(f"model: {params['total'] / 1e9:.3f}B parameters, {params['matmul'] / 1e9:.3f}B in matmuls\n")
        print(
            "| trial | trainable params | tokens/s | MFU | peak memory GiB | estimate GiB | train s | trial s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        results = {}
        for row, fields in ROWS.items():
            config = dataclasses.replace(base, **fields, compile=args.compile)
            # warm-up: kernels, allocator, caches, and with --compile the compile (later trials reuse it)
            run_trial(dataclasses.replace(config, max_steps=2))
            measured = []
            for _ in range(runs):
                if device == "cuda":
                    torch.cuda.empty_cache()
                started = time.perf_counter()
                r = run_trial(config).attrs()
                r["trial_s"] = time.perf_counter() - started
                adapter = r["trainable_params"] if config.method != "full" else 0
                per_token = flops_per_token(
                    config.method, setup["shape"], config.max_length, params["matmul"], adapter
                )
                r["mfu"] = r["tokens_per_s"] * per_token / peak
                measured.append(r)
            best = sorted(measured, key=lambda r: r["tokens_per_s"])[len(measured) // 2]  # the median run
            results[row] = measured
            print(
                f"| {row}{', compiled' if args.compile else ''} | {best['trainable_params']:,} "
                f"| {best['tokens_per_s']:,.0f} | {100 * best['mfu']:.1f}% "
                f"| {size(best['peak_mem_bytes'])} | {size(best['memory_estimate_bytes'])} "
                f"| {best['train_s']:.1f} | {best['trial_s']:.1f} |",
                flush=True,
            )
        check = reproduce_check(base, setup["tolerance"], Path(tmp))
        print(f"\nreproduce --tolerance {check['tolerance']:g}: {'ok' if check['ok'] else 'FAILED'}")
        print(check["output"])
    if args.json:
        keep = (
            "tokens_per_s",
            "mfu",
            "peak_mem_bytes",
            "memory_estimate_bytes",
            "memory_estimate",
            "optimizer_state_bytes",
            "train_s",
            "trial_s",
            "trainable_params",
            "learn",
            "forget",
        )
        summary = {row: [{k: r[k] for k in keep} for r in runs] for row, runs in results.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"peak_flops": peak, "params": params, "rows": summary, "reproduce": check}, indent=2)
        )
    sys.exit(0 if check["ok"] else 1)


if __name__ == "__main__":
    main()
