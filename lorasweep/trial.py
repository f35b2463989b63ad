"""One trial, start to finish: config -> data -> model -> train -> evaluate.

`lorasweep run --config trial.yaml` calls `run_trial` directly; the Optuna objective calls it with
a config sampled from the search space. Everything a trial only reads (base model, tokenised data,
evaluation batches, the base model's own metrics) is prepared once per process (prepare.py).
"""

from __future__ import annotations

import copy
import itertools
import os
import platform
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from lorasweep.config import DATA_INITS, TrialConfig
from lorasweep.data import pack_epochs
from lorasweep.evaluate import forget, mean_loss
from lorasweep.memory import GiB, MemoryEstimate, check_fits, estimate, model_config
from lorasweep.modeling import model_bytes, parameter_counts, resolve_device, resolve_dtype, trial_model
from lorasweep.optimizers import make_optimizer, state_bytes
from lorasweep.prepare import Prepared, consumed, evaluate_model, prepare
from lorasweep.records import TrialResult
from lorasweep.sharding import Shard
from lorasweep.train import WeightAverager, make_scheduler, train_loop
from lorasweep.world import default_cache_dir

INIT_BATCHES = 8  # of the trial's training stream, read by a data-driven LoRA initialisation (eva)


def training_batches(prepared: Prepared, config: TrialConfig) -> Iterator[torch.Tensor]:
    """The trial's stream of packed training rows (a resolved config), the same on every call."""
    return pack_epochs(
        prepared.train_docs,
        config.batch_size,
        config.max_length,
        config.steps * config.grad_accum,
        config.seed,
        replay=prepared.replay_docs,
        replay_ratio=config.replay_ratio,
    )


def init_batches(prepared: Prepared, config: TrialConfig) -> list[torch.Tensor] | None:
    """What a data-driven LoRA initialisation reads: the first INIT_BATCHES of the training stream."""
    if config.init_lora_weights not in DATA_INITS:
        return None
    return list(itertools.islice(training_batches(prepared, config), INIT_BATCHES))


def checkpoint_steps(steps: int, eval_points: int) -> list[int]:
    """Evenly spaced intermediate evaluation steps, the last one being the final step."""
    return sorted({max(1, round(steps * k / eval_points)) for k in range(1, eval_points + 1)})


def run_trial(
    config: TrialConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    cache_dir: Path | None = None,
    on_trained: Callable[[torch.nn.Module, Prepared], None] | None = None,
) -> TrialResult:
    """Train and evaluate one configuration: learn, forget and everything a trial records.

    `on_step(step, total)` follows training; `on_eval(step, learn, forget)` receives each
    intermediate evaluation before the final step (and may raise, e.g. `optuna.TrialPruned`);
    `on_trained(model, prepared)` gets the trained model after the final evaluation (export).
    With `fsdp_shards` > 1 the trial runs as that many processes (sharding.py), called back here.
    """
    if config.fsdp_shards > 1:
        from lorasweep.sharding import run_sharded

        return run_sharded(config, on_step, on_eval, cache_dir, on_trained)
    return train_trial(config, on_step, on_eval, cache_dir, on_trained)


def train_trial(
    config: TrialConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    cache_dir: Path | None = None,
    on_trained: Callable[[torch.nn.Module, Prepared], None] | None = None,
    shard: Shard | None = None,
    measured: tuple | None = None,
) -> TrialResult:
    """`run_trial` in this process: the whole trial, or with `shard` this process's shard of it
    (`measured`: the base model's measures, taken by the calling process; see prepare)."""
    started = time.perf_counter()
    shards = shard.shards if shard else 1
    reduce = shard.reduce if shard else lambda value, _op: value
    torch.set_num_threads(config.threads or max(1, len(os.sched_getaffinity(0)) // shards))
    device = shard.device if shard else resolve_device(config.device)
    estimated = expected_memory(config, device)
    if estimated is not None:
        check_fits(estimated, config, device)
    prepared = prepare(config, cache_dir, device=device, measured=measured)
    config = config.resolved(prepared.train_docs.n_tokens)
    if estimated is None:  # the config file could not be read before loading: from the loaded model
        estimated = _estimate(config, lambda: copy.deepcopy(prepared.base.config), prepared.base.dtype)

    torch.manual_seed(config.seed)
    _reset_peak_memory(prepared.device)
    init_started = time.perf_counter()
    first = init_batches(prepared, config)
    base_total = sum(p.numel() for p in prepared.base.parameters())
    if shard:  # sharded from the CPU: no device ever holds the whole model, nor the host two copies
        model, modules = trial_model(
            prepared.base, config, prepared.base_dir, init_batches=first, own_base=True
        )
        consumed(prepared)
        model = shard.wrap(model)
    else:
        model, modules = trial_model(prepared.base, config, prepared.base_dir, prepared.device, first)
    init_s = time.perf_counter() - init_started
    trainable, total = parameter_counts(model, base_total)
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

    probes, heldout, base_loss = prepared.checkpoint_sets(config.eval_fraction)

    def checkpoint(step: int, _loss: float) -> None:
        learn_curve[step] = prepared.learn(model, probes)
        forget_curve[step] = forget(mean_loss(model, heldout), base_loss)
        if on_eval is not None:
            on_eval(step, learn_curve[step], forget_curve[step])

    batches = training_batches(prepared, config)
    if shard:
        batches = map(shard.rows, batches)
    stats = train_loop(
        compiled(model, cache_dir or default_cache_dir()) if config.compile else model,
        batches,
        optimizer,
        scheduler,
        grad_accum=config.grad_accum,
        max_grad_norm=config.max_grad_norm,
        # fp16 activations underflow without loss scaling (fp16 is for adapters, kept in fp32)
        scaler=torch.amp.GradScaler(prepared.device.type) if prepared.base.dtype == torch.float16 else None,
        on_step=step_done,
        checkpoints=checkpoints[:-1],
        on_checkpoint=checkpoint,
        average=shard.average if shard else None,
    )
    eval_start = time.perf_counter()
    final = evaluate_model(model, prepared)
    base = prepared.base_metrics
    lawa = None
    if averager.snapshots:
        with averager.averaged():
            lawa = evaluate_model(model, prepared)
    eval_s = stats.eval_s + time.perf_counter() - eval_start
    if on_trained is not None:
        on_trained(model, prepared)
    if checkpoints:
        learn_curve[steps] = final["learn"]
        forget_curve[steps] = forget(final["general_loss"], base["general_loss"])
    qa = final.get("general_qa_acc")
    peak = int(reduce(_peak_memory(prepared.device), "max"))  # of the fullest device
    return TrialResult(
        learn=final["learn"],
        forget=forget(final["general_loss"], base["general_loss"]),
        method=config.method,
        general_loss=final["general_loss"],
        domain_loss=final.get("domain_loss"),
        general_qa_acc=qa,
        general_qa_delta=None if qa is None else qa - base["general_qa_acc"],
        lawa_learn=None if lawa is None else lawa["learn"],
        lawa_forget=None if lawa is None else forget(lawa["general_loss"], base["general_loss"]),
        lawa_snapshots=None if lawa is None else len(averager.snapshots),
        lawa_snapshot_bytes=None if lawa is None else averager.nbytes,
        base_metrics=base,
        learn_curve={str(k): v for k, v in sorted(learn_curve.items())},
        forget_curve={str(k): v for k, v in sorted(forget_curve.items())},
        target_modules_resolved=modules,
        quantization=config.quantization if config.method == "qlora" else "none",
        trainable_params=trainable,
        total_params=total,
        trainable_pct=100.0 * trainable / total,
        peak_mem_bytes=peak,
        **_peak_memory_gb(prepared.device, peak, estimated),
        memory_estimate_bytes=None if estimated is None else estimated.total,
        memory_estimate=None if estimated is None else estimated.parts(),
        optimizer_state_bytes=int(reduce(state_bytes(optimizer), "sum")),  # of every shard
        model_bytes=model_bytes(model),
        peak_lr=config.peak_lr,
        train_steps=stats.steps,
        train_tokens=stats.tokens * shards,
        train_loss=stats.train_loss,
        tokens_per_s=stats.tokens * shards / stats.train_s if stats.train_s > 0 else 0.0,
        train_s=stats.train_s,
        init_s=init_s,
        eval_s=eval_s,
        wall_s=time.perf_counter() - started,
        seed=config.seed,
        threads=torch.get_num_threads(),
        base_model=str(prepared.base_dir),
        base_fingerprint=prepared.base_fingerprint,
        data_fingerprint=prepared.corpus.fingerprint,
        corpus_tokens=prepared.train_docs.n_tokens,
        token_store=prepared.train_docs.fingerprint,
        device=str(prepared.device),
        dtype=str(prepared.base.dtype).removeprefix("torch."),
        config=config.to_dict(),
        versions=package_versions(),
    )


def expected_memory(config: TrialConfig, device: torch.device | None = None) -> MemoryEstimate | None:
    """The trial's memory per device, estimated before anything is loaded, on `device` (default:
    the config's); None where the estimate cannot be made (see _estimate)."""
    device = resolve_device(config.device) if device is None else device
    return _estimate(config, lambda: model_config(config), resolve_dtype(config.dtype, device))


def _peak_memory_gb(device: torch.device, peak: int, estimated: MemoryEstimate | None) -> dict[str, Any]:
    """The peak memory a memory objective or budget reads (GiB), and where it comes from: measured
    on a GPU; on a CPU the estimate, as the process's resident memory holds the prepared base
    model and blocks the allocator keeps, not the trial's tensors (BENCHMARKS.md, "Memory
    estimate"); resident memory only where there is no estimate."""
    if device.type != "cuda" and estimated is not None:
        return {"peak_memory_gb": estimated.total / GiB, "peak_memory_source": "estimated"}
    return {
        "peak_memory_gb": peak / GiB,
        "peak_memory_source": "measured" if device.type == "cuda" else "resident",
    }


def _estimate(
    config: TrialConfig, base_config: Callable[[], Any], dtype: torch.dtype
) -> MemoryEstimate | None:
    """The trial's memory estimate, or None where the model's config cannot be read or laid out
    (a model `prepare` then names the problem with, an architecture the estimate cannot read)."""
    try:
        return estimate(config, base_config(), dtype)
    except Exception:  # noqa: BLE001 - an estimate is advice: no trial fails for lack of one
        return None


def compiled(model: torch.nn.Module, cache_dir: Path) -> torch.nn.Module:
    """The model's forward (and so its backward) through torch.compile; `model` itself stays eager.

    Dynamo treats parameters as graph inputs, so a later trial on a fresh copy of the same
    structure reuses the compiled graph: each worker compiles once per structure (method, rank,
    alpha, targets, dropout, dtype; PEFT's LoRA scaling is a constant in the graph).
    Static shapes, because a graph made dynamic in the rank runs no faster than eager; the
    recompile limit is raised so that a sweep over more than 8 structures keeps compiling them.
    Inductor's kernel cache goes under lorasweep's cache, not /tmp, unless TORCHINDUCTOR_CACHE_DIR
    says where: lorasweep writes only under results/, and the cache then outlives a reboot.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    # importing transformers already set the variable to torch's default; a user's own choice stays
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, torch_default()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir, "inductor").resolve())
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(model, dynamic=False)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("lorasweep", "torch", "transformers", "peft", "optuna", "bitsandbytes"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA allocator stats, or the process's peak RSS (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then covers the whole process, which still bounds the trial's


def _peak_memory(device: torch.device) -> int:
    """Peak bytes since the reset: CUDA memory allocated, or peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
