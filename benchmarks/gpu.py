"""LoRA, QLoRA and full-FT trials in bf16 on a random-initialised ~0.9B Llama, on one GPU.

    python benchmarks/gpu.py                  # builds the model, runs every row 3 times (~5 min on an H100)
    python benchmarks/gpu.py --steps 10 --runs 1   # a quick look
    python benchmarks/gpu.py --compile        # every row with `compile: true`

Each row is a real lorasweep trial (`run_trial` with `model:` set to a directory built here, the
embedded world's text packed into 1024-token rows), so the figures include everything a sweep pays
per trial except loading the base, which a worker does once. Printed as a markdown table (the GPU
rows of BENCHMARKS.md); `--json PATH` also writes every run.

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
import statistics
import time
from pathlib import Path

import torch

from lorasweep.config import TrialConfig
from lorasweep.trial import run_trial
from lorasweep.world import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "results" / "bench" / "llama-0.9b"
SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16}
BASE = TrialConfig(
    model=str(MODEL_DIR),
    dtype="bf16",
    device="cuda",
    batch_size=16,
    max_length=1024,
    max_steps=30,
    eval_points=0,
    warmup_ratio=0.0,
    schedule="constant",
)
ROWS = {
    "lora r16 all-linear": {"method": "lora", "rank": 16, "learning_rate": 1e-3},
    "qlora nf4 r16 all-linear": {"method": "qlora", "quantization": "nf4", "rank": 16, "learning_rate": 1e-3},
    "full": {"method": "full", "learning_rate": 1e-5},
    "lora r16, checkpointing": {
        "method": "lora",
        "rank": 16,
        "learning_rate": 1e-3,
        "gradient_checkpointing": True,
    },
    "qlora nf4 r16, checkpointing": {
        "method": "qlora",
        "quantization": "nf4",
        "rank": 16,
        "learning_rate": 1e-3,
        "gradient_checkpointing": True,
    },
    "full, checkpointing": {"method": "full", "learning_rate": 1e-5, "gradient_checkpointing": True},
}


def build_model() -> dict[str, int]:
    """A random-initialised Llama of the SHAPE above with the world's tokenizer, saved in bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPE,
    )
    if not (MODEL_DIR / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(MODEL_DIR, safe_serialization=True)
        tokenizer.save_pretrained(MODEL_DIR)
        del model
    with torch.device("meta"):
        total = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return {
        "total": total,
        "matmul": total - config.vocab_size * config.hidden_size,
    }  # all but the input embedding


def matmul_peak() -> float:
    """bf16 dense matmul FLOP/s of this GPU: median of 10 timed 8192^3 products after warm-up."""
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / statistics.median(times)


def flops_per_token(method: str, matmul_params: int, adapter_params: int) -> float:
    attention = 12 * SHAPE["num_hidden_layers"] * SHAPE["hidden_size"] * BASE.max_length
    if method == "full":
        return 6 * matmul_params + attention
    return 4 * matmul_params + attention + 6 * adapter_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=BASE.max_steps)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile", action="store_true", help="torch.compile every trial (compile: true)")
    args = parser.parse_args()
    params = build_model()
    peak = matmul_peak()
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}: bf16 matmul peak {peak / 1e12:.0f} TFLOP/s"
    )
    print(f"model: {params['total'] / 1e9:.2f}B parameters, {params['matmul'] / 1e9:.2f}B in matmuls\n")
    print("| trial | trainable params | tokens/s | MFU | peak GPU memory GiB | train s | trial s |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for name, fields in ROWS.items():
        config = dataclasses.replace(BASE, **fields, max_steps=args.steps, compile=args.compile)
        # warm-up: kernels, allocator, caches, and with --compile the compile (later trials reuse it)
        run_trial(dataclasses.replace(config, max_steps=2))
        runs = []
        for _ in range(args.runs):
            torch.cuda.empty_cache()
            started = time.perf_counter()
            r = run_trial(config).attrs()
            r["trial_s"] = time.perf_counter() - started
            adapter = r["trainable_params"] if config.method != "full" else 0
            r["mfu"] = r["tokens_per_s"] * flops_per_token(config.method, params["matmul"], adapter) / peak
            runs.append(r)
        best = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]  # the median run
        results[name] = runs
        print(
            f"| {name}{', compiled' if args.compile else ''} | {best['trainable_params']:,} | {best['tokens_per_s']:,.0f} | {100 * best['mfu']:.1f}% "
            f"| {best['peak_mem_bytes'] / 2**30:.1f} | {best['train_s']:.1f} | {best['trial_s']:.1f} |",
            flush=True,
        )
    if args.json:
        keep = (
            "tokens_per_s",
            "mfu",
            "peak_mem_bytes",
            "train_s",
            "trial_s",
            "trainable_params",
            "learn",
            "forget",
        )
        summary = {name: [{k: r[k] for k in keep} for r in runs] for name, runs in results.items()}
        args.json.write_text(json.dumps({"peak_flops": peak, "params": params, "rows": summary}, indent=2))


if __name__ == "__main__":
    main()
