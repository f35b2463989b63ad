"""Corpora at scale: the token store's build, and a trial's memory against corpus size (BENCHMARKS.md).

    python benchmarks/corpus_scale.py build --tokens 1e6 1e7 1e8   # store build: tokens/s, peak memory
    python benchmarks/corpus_scale.py trial --tokens 1e6 5e6       # a trial's peak memory; a second run
    python benchmarks/corpus_scale.py optimize --tokens 1e8        # `lorasweep optimize --workers 2` on it

Data, generated under results/bench/corpus/ (kept between commands): a domain corpus of random
words from a 5,000-word vocabulary (20-200 words a document) of about the given number of tokens
(the tables give the exact count), 200 general documents and 20 probes; a byte-level BPE of 4,096
tokens trained on the first 2,000 documents and a tiny Llama (hidden 64, 2 layers) for it. Each
measurement is a process of its own: `build` maps the corpus (`datasets`' Arrow copy, made once)
and builds the store, reporting the build's tokens/s and the peak resident memory (VmHWM) of the
build alone; `trial` runs a trial (`run_trial`, 5 steps) twice, the first building the store,
and reports each run's wall time (data loading included), peak memory and, at its end, the
anonymous and the file-backed (shared, reclaimable) resident memory; `optimize` runs 4 short trials on 2 workers and
reports each trial's peak memory (its worker's).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench" / "corpus"
WORDS = 5_000
TOKENS_PER_WORD = 2.6  # of the byte-level BPE below on these words, measured; sizes the corpus


def corpus(tokens: float) -> Path:
    """The directory of a generated corpus of about `tokens` tokens, with its model and files."""
    where = OUT / f"{tokens:.0e}"
    if (where / "done").exists():
        return where
    where.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(WORDS)
    ]
    words_left = int(tokens / TOKENS_PER_WORD)
    with (where / "domain.jsonl").open("w") as f:
        while words_left > 0:
            n = min(words_left, rng.randint(20, 200))
            f.write(json.dumps({"text": " ".join(rng.choices(vocab, k=n))}) + "\n")
            words_left -= n
    general = [" ".join(rng.choices(vocab, k=80)) for _ in range(200)]
    (where / "general.txt").write_text("\n\n".join(general) + "\n")
    probes = [{"question": f"what follows {w}?", "answer": rng.choice(vocab)} for w in vocab[:20]]
    (where / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    model(where, general)
    (where / "done").touch()
    return where


def model(where: Path, texts: list[str]) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    with (where / "domain.jsonl").open() as f:
        sample = [json.loads(next(f))["text"] for _ in range(2000)] + texts
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sample, vocab_size=4096, special_tokens=["<s>", "</s>", "<pad>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(where / "model")
    tokenizer.save_pretrained(where / "model")


def fields(where: Path) -> dict:
    return {
        "model": str(where / "model"),
        "domain": str(where / "domain.jsonl"),
        "general": str(where / "general.txt"),
        "probes": str(where / "probes.jsonl"),
        "batch_size": 8,
        "max_length": 64,
        "eval_points": 0,
    }


BUILD = """
import sys, time, json
from pathlib import Path
from lorasweep.config import TrialConfig
from lorasweep.corpus import load_corpus
from lorasweep.modeling import load_base
from lorasweep.token_store import token_store
import torch

config = TrialConfig(**json.loads(sys.argv[1]))
cache = Path(sys.argv[2])
_, tokenizer = load_base(config.model, torch.float32, False, None)
start = time.monotonic()
corpus = load_corpus(config, cache)  # datasets' Arrow copy (the first time) and the fingerprint pass
read = time.monotonic() - start
status = lambda key: next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak below is the build's alone
start = time.monotonic()
store = token_store(lambda: corpus.domain_train, tokenizer, cache, corpus.parts["domain_train"])
built = time.monotonic() - start
peak = status("VmHWM")
print(json.dumps({"tokens": store.n_tokens, "docs": len(store), "read_s": read, "build_s": built, "before_kib": before, "peak_kib": peak}))
"""


def measure(script: str, *args: str) -> dict:
    """Run `script` in a process of its own (its memory is its own); the JSON line it ends with."""
    out = subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build(sizes: list[float]) -> None:
    print(
        "| corpus tokens | documents | read (Arrow copy + fingerprint) | store build | tokens/s | "
        "memory before the build, peak during it |"
    )
    print("|---|---|---|---|---|---|")
    for tokens in sizes:
        where = corpus(tokens)
        shutil.rmtree(where / "cache" / "tokens", ignore_errors=True)
        r = measure(BUILD, json.dumps(fields(where)), str(where / "cache"))
        print(
            f"| {r['tokens']:,} | {r['docs']:,} | {r['read_s']:.1f} s | {r['build_s']:.1f} s | "
            f"{r['tokens'] / r['build_s']:,.0f} | {r['before_kib'] / 1024:.0f} MiB, {r['peak_kib'] / 1024:.0f} MiB |",
            flush=True,
        )


TRIAL = """
import json, sys, time
from pathlib import Path
from lorasweep.config import TrialConfig
from lorasweep.trial import run_trial

start = time.monotonic()
result = run_trial(TrialConfig(**json.loads(sys.argv[1])), cache_dir=Path(sys.argv[2]))
status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
kib = lambda key: int(status[key].split()[0])
print(json.dumps({"tokens": result.corpus_tokens, "wall": time.monotonic() - start,
                  "peak": result.peak_mem_bytes, "anon_kib": kib("RssAnon"), "file_kib": kib("RssFile")}))
"""


def trial(sizes: list[float]) -> None:
    print(
        "| corpus tokens | run | wall | peak memory (VmHWM) | at the end: anonymous, file-backed (shared) |"
    )
    print("|---|---|---|---|---|")
    for tokens in sizes:
        where = corpus(tokens)
        config = json.dumps({**fields(where), "max_steps": 5, "method": "lora"})
        shutil.rmtree(where / "cache" / "tokens", ignore_errors=True)
        for run in ("first (builds the store)", "second"):
            r = measure(TRIAL, config, str(where / "cache"))
            print(
                f"| {r['tokens']:,} | {run} | {r['wall']:.1f} s | {r['peak'] / 2**20:.0f} MiB | "
                f"{r['anon_kib'] / 1024:.0f} MiB, {r['file_kib'] / 1024:.0f} MiB |",
                flush=True,
            )


def optimize(sizes: list[float], workers: int) -> None:
    for tokens in sizes:
        where = corpus(tokens)
        space = where / "space.yaml"
        space.write_text(
            yaml.safe_dump(
                {
                    "config": {**fields(where), "train_tokens": 8 * 64 * 20},
                    "params": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                    "sampler": {"name": "random"},
                }
            )
        )
        env = {**os.environ, "LORASWEEP_CACHE_DIR": str(where / "cache")}
        url = f"sqlite:///{where / 'studies.db'}"
        name = f"scale-{int(time.time())}"
        start, started = time.monotonic(), time.time()
        command = [sys.executable, "-m", "lorasweep", "optimize", "--space", str(space), "--storage", url]
        command += ["--study", name, "--workers", str(workers), "--n-trials", "4", "--replicates", "0"]
        subprocess.run(command, check=True, capture_output=True, env=env)
        wall = time.monotonic() - start
        import optuna

        trials = optuna.load_study(study_name=name, storage=url).trials
        # a worker's start-up: from the command's start to its first trial's
        firsts = {}
        for t in sorted(trials, key=lambda t: t.datetime_start):
            firsts.setdefault(t.user_attrs["worker"], t.datetime_start.timestamp() - started)
        peaks = {
            t.user_attrs["worker"]: max(
                u.user_attrs["peak_mem_bytes"]
                for u in trials
                if u.user_attrs["worker"] == t.user_attrs["worker"]
            )
            for t in trials
        }
        print(
            f"{trials[0].user_attrs['corpus_tokens']:,} tokens, {workers} workers, 4 trials: {wall:.0f} s; "
            f"peak memory per worker: {', '.join(f'{p / 2**20:.0f} MiB' for p in peaks.values())}; "
            f"each worker's first trial started {', '.join(f'{s:.1f} s' for s in firsts.values())} in"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["build", "trial", "optimize"])
    parser.add_argument("--tokens", type=float, nargs="+", default=[1e6])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.what == "build":
        build(args.tokens)
    elif args.what == "trial":
        trial(args.tokens)
    else:
        optimize(args.tokens, args.workers)


if __name__ == "__main__":
    main()
