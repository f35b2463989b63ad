"""Evaluation memory on a large vocabulary: one 128-row batch scored whole vs a few rows at a time.

    python benchmarks/eval_memory.py                     # chunked (lorasweep's EVAL_LOGITS_BYTES)
    python benchmarks/eval_memory.py --unchunked         # the whole batch in one forward

A one-layer Llama (hidden 64) with Llama 3's vocabulary (128,256) scores 128 rows of 64 random
tokens with evaluate.row_losses, as a trial scores its general held-out text; prints the peak
resident memory of the process (VmHWM) and the seconds taken. A batch's fp32 logits take rows x
length x vocabulary x 4 bytes (4.2 GB here; 128 rows of 1,024 tokens would take 67 GB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorasweep import evaluate
from lorasweep.data import Batch

ROWS, LENGTH, VOCAB = 128, 64, 128_256


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unchunked", action="store_true", help="score the batch in one forward")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, VOCAB, (ROWS, LENGTH))
    batch = Batch(ids, torch.ones_like(ids), ids.clone())
    if args.unchunked:
        evaluate.EVAL_LOGITS_BYTES = 2**62
    before = peak_rss_mib()
    start = time.perf_counter()
    nll, tokens = evaluate.row_losses(model, [batch])
    seconds = time.perf_counter() - start
    print(
        f"{'unchunked' if args.unchunked else 'chunked'}: loss {float(nll.sum() / tokens.sum()):.6f}  "
        f"peak RSS {peak_rss_mib():,.0f} MiB (model loaded: {before:,.0f})  {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
