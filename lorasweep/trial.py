"""One trial, start to finish: config -> data -> model -> train -> evaluate.

`lorasweep run --config trial.yaml` calls `run_trial` directly; the Optuna objective calls it with
a config sampled from the search space. Everything a trial only reads (base model, tokenised data,
evaluation batches, the base model's own metrics) is prepared once per process and cached.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from lorasweep.config import TrialConfig, WorldConfig
from lorasweep.data import Batch, loss_batches, pack_epochs, probe_batches, tokenize_documents
from lorasweep.evaluate import exact_match, mean_loss
from lorasweep.modeling import load_base, model_bytes, parameter_counts, trial_model
from lorasweep.train import WeightAverager, make_optimizer, make_scheduler, train_loop
from lorasweep.world import build_world, default_cache_dir, ensure_base_model, world_fingerprint

EVAL_BATCH_SIZE = 128


@dataclass
class Prepared:
    """What every trial on one base model and data set reads and never changes."""

    base: torch.nn.Module
    tokenizer: object
    base_dir: Path
    train_docs: list[list[int]]  # domain text
    replay_docs: list[list[int]]  # general text for replay, disjoint from general_heldout
    domain_probes: list[Batch]
    domain_heldout: list[Batch]
    general_probes: list[Batch]
    general_heldout: list[Batch]
    base_metrics: dict[str, float]


_PREPARED: dict[tuple[str, str], Prepared] = {}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare(
    world: WorldConfig, cache_dir: Path | None = None, on_build_step: Callable[[int, int], None] | None = None
) -> Prepared:
    """Load (building on first use) the base model and data of `world`, once per process."""
    cache_dir = Path(cache_dir or default_cache_dir())
    key = (world_fingerprint(world), str(cache_dir.resolve()))
    if key not in _PREPARED:
        base_dir = ensure_base_model(world, cache_dir, on_build_step)
        base, tokenizer = load_base(base_dir, str(device()))
        texts = build_world(world)
        prepared = Prepared(
            base=base,
            tokenizer=tokenizer,
            base_dir=base_dir,
            train_docs=tokenize_documents(tokenizer, texts.domain_bios),
            replay_docs=tokenize_documents(tokenizer, texts.general_bios),
            domain_probes=probe_batches(tokenizer, texts.domain_probes, EVAL_BATCH_SIZE),
            domain_heldout=_loss_batches(tokenizer, texts.domain_heldout_bios),
            general_probes=probe_batches(tokenizer, texts.general_probes, EVAL_BATCH_SIZE),
            general_heldout=_loss_batches(tokenizer, texts.general_heldout_bios),
            base_metrics={},
        )
        # measured once: forget of every trial is relative to these
        prepared.base_metrics = evaluate_model(base, prepared)
        _PREPARED[key] = prepared
    return _PREPARED[key]


def _loss_batches(tokenizer, texts: list[str]) -> list[Batch]:
    return loss_batches(tokenize_documents(tokenizer, texts), EVAL_BATCH_SIZE, tokenizer.pad_token_id)


def evaluate_model(model: torch.nn.Module, prepared: Prepared) -> dict[str, float]:
    return {
        "learn": exact_match(model, prepared.domain_probes),
        "domain_loss": mean_loss(model, prepared.domain_heldout),
        "general_loss": mean_loss(model, prepared.general_heldout),
        "general_qa_acc": exact_match(model, prepared.general_probes),
    }


def checkpoint_steps(steps: int, eval_points: int) -> list[int]:
    """Evenly spaced intermediate evaluation steps, the last one being the final step."""
    return sorted({max(1, round(steps * k / eval_points)) for k in range(1, eval_points + 1)})


def run_trial(
    config: TrialConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Train and evaluate one configuration; returns learn, forget and every recorded attr.

    `on_step(step, total)` follows training; `on_eval(step, learn, forget)` receives each
    intermediate evaluation before the final step (and may raise, e.g. `optuna.TrialPruned`).
    """
    started = time.perf_counter()
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    prepared = prepare(config.world, cache_dir)
    config = config.resolved(sum(len(d) for d in prepared.train_docs))
    torch.manual_seed(config.seed)
    _reset_peak_memory()
    model, modules = trial_model(prepared.base, config, prepared.base_dir)
    trainable, total = parameter_counts(model, prepared.base)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    steps = config.steps
    checkpoints = checkpoint_steps(steps, config.eval_points)
    averager = WeightAverager(model, config.lawa_k, config.lawa_interval, steps)
    learn_curve: dict[int, float] = {}
    forget_curve: dict[int, float] = {}

    def step_done(step: int) -> None:
        averager.on_step(step)
        if on_step is not None:
            on_step(step, steps)

    def checkpoint(step: int, _loss: float) -> None:
        learn_curve[step] = exact_match(model, prepared.domain_probes)
        forget_curve[step] = (
            mean_loss(model, prepared.general_heldout) - prepared.base_metrics["general_loss"]
        )
        if on_eval is not None:
            on_eval(step, learn_curve[step], forget_curve[step])

    batches = pack_epochs(
        prepared.train_docs,
        config.batch_size,
        config.max_length,
        steps * config.grad_accum,
        config.seed,
        replay=prepared.replay_docs,
        replay_ratio=config.replay_ratio,
    )
    stats = train_loop(
        model,
        batches,
        optimizer,
        scheduler,
        grad_accum=config.grad_accum,
        max_grad_norm=config.max_grad_norm,
        on_step=step_done,
        checkpoints=checkpoints[:-1],
        on_checkpoint=checkpoint,
    )
    eval_start = time.perf_counter()
    final = evaluate_model(model, prepared)
    lawa = {}
    if averager.snapshots:
        with averager.averaged():
            averaged = evaluate_model(model, prepared)
        lawa = {
            "lawa_learn": averaged["learn"],
            "lawa_forget": averaged["general_loss"] - prepared.base_metrics["general_loss"],
            "lawa_snapshots": len(averager.snapshots),
            "lawa_snapshot_bytes": averager.nbytes,
        }
    eval_s = stats.eval_s + time.perf_counter() - eval_start
    base = prepared.base_metrics
    if checkpoints:
        learn_curve[steps] = final["learn"]
        forget_curve[steps] = final["general_loss"] - base["general_loss"]
    return {
        "learn": final["learn"],
        "forget": final["general_loss"] - base["general_loss"],
        "method": config.method,
        "domain_loss": final["domain_loss"],
        "general_loss": final["general_loss"],
        "general_qa_acc": final["general_qa_acc"],
        "general_qa_delta": final["general_qa_acc"] - base["general_qa_acc"],
        **lawa,
        "base_metrics": base,
        "learn_curve": {str(k): v for k, v in sorted(learn_curve.items())},
        "forget_curve": {str(k): v for k, v in sorted(forget_curve.items())},
        "target_modules_resolved": modules,
        "quantization": config.quantization if config.method == "qlora" else "none",
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "peak_mem_bytes": _peak_memory(),
        "model_bytes": model_bytes(model),
        "peak_lr": config.peak_lr,
        "train_steps": stats.steps,
        "train_tokens": stats.tokens,
        "train_loss": stats.train_loss,
        "tokens_per_s": stats.tokens / stats.train_s if stats.train_s > 0 else 0.0,
        "train_s": stats.train_s,
        "eval_s": eval_s,
        "wall_s": time.perf_counter() - started,
        "seed": config.seed,
        "base_model": str(prepared.base_dir),
        "device": str(device()),
        "config": config.to_dict(),
        "versions": package_versions(),
    }


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("lorasweep", "torch", "transformers", "peft", "optuna", "bitsandbytes"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _reset_peak_memory() -> None:
    """Start a fresh peak: CUDA allocator stats, or the process's peak RSS (Linux clear_refs)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then covers the whole process, which still bounds the trial's


def _peak_memory() -> int:
    """Peak bytes since the reset: CUDA memory allocated, or peak resident memory on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
