"""Host memory of a sharded trial's shards on a ~100M-parameter model.

    python benchmarks/shard_memory.py       # LoRA and full FT, 2 shards, ~5 min on 2 cores

Builds (once, under results/shard_memory_llama) a random 8-layer Llama (hidden 1024, MLP 4096,
the world's tokenizer: 513 MiB of fp32 weights) and runs a 2-step trial of each method on it
with `fsdp_shards: 2` over the embedded world's data. Prints the fullest shard's peak resident
memory (`peak_mem_bytes` of a sharded trial on a CPU: VmHWM, the largest over the shards).
Each shard makes the trial's model of the base it loaded itself, not of a copy
(modeling.trial_model's own_base), so a shard holds one model in host memory, not two.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = Path("results/shard_memory_llama")


def build(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorasweep.world import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main() -> None:
    from lorasweep.config import TrialConfig
    from lorasweep.display import quiet_libraries
    from lorasweep.trial import run_trial

    quiet_libraries()
    if not (MODEL / "config.json").exists():
        build(MODEL)
    print("| method | shards | peak RSS of the fullest shard MiB | wall s |")
    print("|---|---|---|---|")
    for method in ("lora", "full"):
        config = TrialConfig(
            model=str(MODEL),
            method=method,
            learning_rate=1e-4,
            max_steps=2,
            eval_points=1,
            batch_size=4,
            fsdp_shards=2,
            threads=1,
        )
        started = time.perf_counter()
        result = run_trial(config)
        print(
            f"| {method} | 2 | {result.peak_mem_bytes / 2**20:,.0f} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":  # the shards are spawned: they import this file
    main()
