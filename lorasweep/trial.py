"""One trial, start to finish: config -> data -> model -> train -> evaluate.

`lorasweep run --config trial.yaml` calls `run_trial` directly; the Optuna objective calls it with
a config sampled from the search space. Everything a trial only reads (base model, tokenised data,
evaluation batches, the base model's own metrics) is prepared once per process and cached.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from lorasweep.config import ConfigError, TrialConfig
from lorasweep.corpus import Corpus, load_corpus
from lorasweep.data import Batch, loss_batches, pack_epochs, probe_batches, tokenize_documents
from lorasweep.evaluate import answer_length, exact_match, generated_match, mean_loss, row_losses
from lorasweep.modeling import (
    load_base,
    model_bytes,
    parameter_counts,
    resolve_device,
    resolve_dtype,
    trial_model,
    weights_fingerprint,
)
from lorasweep.train import WeightAverager, make_optimizer, make_scheduler, train_loop
from lorasweep.world import Probe, default_cache_dir, ensure_base_model, world_fingerprint

EVAL_BATCH_SIZE = 128
EVAL_CONTEXT = 1024  # longest evaluation row, in tokens: longer held-out documents are cut


@dataclass
class Prepared:
    """What every trial on one base model and data set reads and never changes."""

    base: torch.nn.Module  # on the CPU; each trial copies it to `device`
    tokenizer: object
    base_dir: str | Path  # what `from_pretrained` loads the base from (QLoRA reloads it)
    device: torch.device
    corpus: Corpus
    base_fingerprint: str  # of the base model's weights
    train_docs: list[list[int]]  # domain text
    replay_docs: list[list[int]]  # general text for replay, disjoint from general_heldout
    domain_probes: list  # batches for teacher-forced scoring, or the user's probes to generate on
    domain_heldout: list[Batch]
    general_probes: list[Batch]
    general_heldout_docs: list[list[int]]  # the forgetting measure, cut to the evaluation context
    general_heldout: list[Batch]
    base_metrics: dict[str, float] = field(default_factory=dict)
    base_general_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # the base's NLL, tokens per row
    _checkpoint_sets: dict[float, tuple[list, list[Batch], float]] = field(default_factory=dict)

    def learn(self, model: torch.nn.Module, probes: list) -> float:
        if self.corpus.user_probes:
            return generated_match(model, self.tokenizer, probes, EVAL_BATCH_SIZE)
        return exact_match(model, probes)

    def checkpoint_sets(self, fraction: float) -> tuple[list, list[Batch], float]:
        """Domain probes, general held-out text and the base's loss on that text, for intermediate
        evaluations: the first `fraction` of each (the world's people come in random order, a
        user's files in file order), so evaluating during training stays cheap. The final
        evaluation always uses every probe and document.
        """
        if fraction not in self._checkpoint_sets:
            probes = self.corpus.domain_probes[: max(1, round(fraction * len(self.corpus.domain_probes)))]
            docs = max(1, round(fraction * len(self.general_heldout_docs)))
            nll, tokens = self.base_general_rows
            self._checkpoint_sets[fraction] = (
                _probe_set(self.corpus, self.tokenizer, probes),
                loss_batches(self.general_heldout_docs[:docs], EVAL_BATCH_SIZE, self.tokenizer.pad_token_id),
                float(nll[:docs].sum() / tokens[:docs].sum()),
            )
        return self._checkpoint_sets[fraction]


def _probe_set(corpus: Corpus, tokenizer, probes: list[Probe]) -> list:
    """The world's probes as batches (teacher-forced scoring); a user's as they are (generation)."""
    return probes if corpus.user_probes else probe_batches(tokenizer, probes, EVAL_BATCH_SIZE)


_PREPARED: dict[tuple, Prepared] = {}


def prepare(
    config: TrialConfig,
    cache_dir: Path | None = None,
    on_build_step: Callable[[int, int], None] | None = None,
) -> Prepared:
    """Load the base model and data of `config` (building the world's base model on first use).

    Done once per process for each base model, data, dtype and device: every trial after the
    first starts from the in-memory copy.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    data = (
        config.domain,
        config.general,
        config.probes,
        config.text_column,
        config.probe_template,
        config.general_heldout,
    )
    key = (
        config.model,
        world_fingerprint(config.world),
        data,
        str(cache_dir.resolve()),
        str(device),
        str(dtype),
        config.attn_implementation,
    )
    if key not in _PREPARED:
        corpus = load_corpus(config, cache_dir)  # before the model: a bad data file fails fast
        if config.model is None:
            base_dir: str | Path = ensure_base_model(config.world, cache_dir, on_build_step)
        else:
            base_dir = config.model
        base, tokenizer = load_base(base_dir, dtype, config.trust_remote_code, config.attn_implementation)
        context = min(getattr(base.config, "max_position_embeddings", None) or EVAL_CONTEXT, EVAL_CONTEXT)
        _check_probes_fit(corpus, tokenizer, context)
        general_docs = _chunks(tokenize_documents(tokenizer, corpus.general_heldout), context)
        prepared = Prepared(
            base=base,
            tokenizer=tokenizer,
            base_dir=base_dir,
            device=device,
            corpus=corpus,
            base_fingerprint=weights_fingerprint(base_dir),
            train_docs=tokenize_documents(tokenizer, corpus.domain_train),
            replay_docs=tokenize_documents(tokenizer, corpus.replay),
            domain_probes=_probe_set(corpus, tokenizer, corpus.domain_probes),
            domain_heldout=_loss_batches(tokenizer, corpus.domain_heldout, context),
            general_probes=probe_batches(tokenizer, corpus.general_probes, EVAL_BATCH_SIZE),
            general_heldout_docs=general_docs,
            general_heldout=loss_batches(general_docs, EVAL_BATCH_SIZE, tokenizer.pad_token_id),
        )
        # measured once: forget of every trial is relative to these
        on_device = base if device.type == "cpu" else copy.deepcopy(base).to(device)
        prepared.base_metrics = evaluate_model(on_device, prepared)
        prepared.base_general_rows = row_losses(on_device, prepared.general_heldout)
        del on_device
        _PREPARED[key] = prepared
    return _PREPARED[key]


def _chunks(docs: list[list[int]], length: int) -> list[list[int]]:
    """Documents longer than the evaluation context, cut into pieces that fit."""
    return [doc[i : i + length] for doc in docs for i in range(0, len(doc), length)]


def _loss_batches(tokenizer, texts: list[str], context: int) -> list[Batch]:
    docs = _chunks(tokenize_documents(tokenizer, texts), context)
    return loss_batches(docs, EVAL_BATCH_SIZE, tokenizer.pad_token_id)


def _check_probes_fit(corpus: Corpus, tokenizer, context: int) -> None:
    for i, probe in enumerate(corpus.domain_probes, start=1):
        prompt = len(tokenizer(probe.prompt, add_special_tokens=True)["input_ids"])
        answer = max(answer_length(tokenizer, probe.prompt, a) for a in probe.answers)
        if prompt + answer + 1 > context:
            raise ConfigError(
                f"field 'probes': probe {i} takes {prompt + answer + 1} tokens with its answer; "
                f"the evaluation context is {context}"
            )


def evaluate_model(model: torch.nn.Module, prepared: Prepared) -> dict[str, float]:
    """learn and the general loss; the world's held-out domain loss and general QA where it has them."""
    metrics = {
        "learn": prepared.learn(model, prepared.domain_probes),
        "general_loss": mean_loss(model, prepared.general_heldout),
    }
    if prepared.domain_heldout:
        metrics["domain_loss"] = mean_loss(model, prepared.domain_heldout)
    if prepared.general_probes:
        metrics["general_qa_acc"] = exact_match(model, prepared.general_probes)
    return metrics


def checkpoint_steps(steps: int, eval_points: int) -> list[int]:
    """Evenly spaced intermediate evaluation steps, the last one being the final step."""
    return sorted({max(1, round(steps * k / eval_points)) for k in range(1, eval_points + 1)})


def run_trial(
    config: TrialConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    cache_dir: Path | None = None,
    on_trained: Callable[[torch.nn.Module, Prepared], None] | None = None,
) -> dict:
    """Train and evaluate one configuration; returns learn, forget and every recorded attr.

    `on_step(step, total)` follows training; `on_eval(step, learn, forget)` receives each
    intermediate evaluation before the final step (and may raise, e.g. `optuna.TrialPruned`);
    `on_trained(model, prepared)` gets the trained model after the final evaluation (export).
    """
    started = time.perf_counter()
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    prepared = prepare(config, cache_dir)
    config = config.resolved(sum(len(d) for d in prepared.train_docs))
    torch.manual_seed(config.seed)
    _reset_peak_memory(prepared.device)
    model, modules = trial_model(prepared.base, config, prepared.base_dir, prepared.device)
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

    probes, heldout, base_loss = prepared.checkpoint_sets(config.eval_fraction)

    def checkpoint(step: int, _loss: float) -> None:
        learn_curve[step] = prepared.learn(model, probes)
        forget_curve[step] = mean_loss(model, heldout) - base_loss
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
    if on_trained is not None:
        on_trained(model, prepared)
    base = prepared.base_metrics
    if checkpoints:
        learn_curve[steps] = final["learn"]
        forget_curve[steps] = final["general_loss"] - base["general_loss"]
    return {
        "learn": final["learn"],
        "forget": final["general_loss"] - base["general_loss"],
        "method": config.method,
        **{k: v for k, v in final.items() if k not in ("learn",)},
        **(
            {"general_qa_delta": final["general_qa_acc"] - base["general_qa_acc"]}
            if "general_qa_acc" in final
            else {}
        ),
        **lawa,
        "base_metrics": base,
        "learn_curve": {str(k): v for k, v in sorted(learn_curve.items())},
        "forget_curve": {str(k): v for k, v in sorted(forget_curve.items())},
        "target_modules_resolved": modules,
        "quantization": config.quantization if config.method == "qlora" else "none",
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "peak_mem_bytes": _peak_memory(prepared.device),
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
        "threads": torch.get_num_threads(),
        "base_model": str(prepared.base_dir),
        "base_fingerprint": prepared.base_fingerprint,
        "data_fingerprint": prepared.corpus.fingerprint,
        "device": str(prepared.device),
        "dtype": str(prepared.base.dtype).removeprefix("torch."),
        "config": config.to_dict(),
        "versions": package_versions(),
    }


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
