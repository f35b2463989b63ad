"""The training loop shared by every trial and by the base model's pretraining.

A plain PyTorch loop, not `transformers.Trainer`: a sweep pays its overhead on every trial, and
the loop stays on the device: no `.item()` per step, so the host never waits for the accelerator
except at evaluation points, where the running loss is also checked for NaN/inf.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lorasweep.config import TrialConfig


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainStats:
    steps: int
    tokens: int
    train_s: float  # wall time of training alone, evaluation excluded
    eval_s: float  # wall time spent in evaluation callbacks
    train_loss: float  # mean loss over the last evaluation interval


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrialConfig):
    """The LR schedule; warmup is a share of the steps (transformers 5 has no warmup_ratio)."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(config.schedule, config.schedule)
    extra = None
    if config.schedule == "cosine_with_min_lr":
        extra = {"min_lr_rate": config.min_lr_ratio}
    elif config.schedule == "warmup_stable_decay":
        extra = {
            "num_decay_steps": round(config.decay_ratio * config.steps),
            "min_lr_ratio": config.min_lr_ratio,
        }
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * config.steps),
        num_training_steps=config.steps,
        scheduler_specific_kwargs=extra,
    )


class WeightAverager:
    """LAWA (arXiv 2306.03241): the last k snapshots of the trainable weights, kept on CPU.

    Snapshots are taken every `interval` steps, but only within the last k intervals of training,
    since earlier ones would be dropped anyway.
    """

    def __init__(self, model: torch.nn.Module, k: int, interval: int, total_steps: int):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.k = k
        self.interval = interval
        self.first = total_steps - k * interval
        self.snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=k)

    def on_step(self, step: int) -> None:
        if self.k and step % self.interval == 0 and step > self.first:
            self.snapshots.append({n: p.detach().to("cpu", copy=True) for n, p in self.params.items()})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for snap in self.snapshots for t in snap.values())

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside, the model holds the average of the snapshots; the final weights come back after."""
        final = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                mean = torch.stack([snap[n] for snap in self.snapshots]).mean(0)
                p.copy_(mean.to(p.device))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(final[n])


def train_loop(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    grad_accum: int = 1,
    max_grad_norm: float = 1.0,
    on_step: Callable[[int], None] | None = None,
    checkpoints: Collection[int] = (),
    on_checkpoint: Callable[[int, float], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainStats:
    """Train on packed micro-batches (causal LM loss on every token), `grad_accum` per step.

    After each optimizer step in `checkpoints`, `on_checkpoint(step, mean_loss)` runs (evaluation,
    reporting, pruning); its time is counted apart from training time. In a sharded trial,
    `average` gives the mean of the shards' running losses (each shard trains part of every batch).
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    running = torch.zeros((), device=device)
    interval_steps = 0
    train_loss = math.nan
    tokens = step = micro = 0
    eval_s = 0.0
    start = time.perf_counter()
    for input_ids in batches:
        input_ids = input_ids.to(device, non_blocking=True)
        loss = model(input_ids=input_ids, labels=input_ids).loss / grad_accum
        (loss if scaler is None else scaler.scale(loss)).backward()
        running += loss.detach()
        tokens += input_ids.numel()
        micro += 1
        if micro % grad_accum:
            continue
        step += 1
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        interval_steps += 1
        if on_step is not None:
            on_step(step)
        if step in checkpoints:
            train_loss = _checked_mean(average(running) if average else running, interval_steps, step)
            running.zero_()
            interval_steps = 0
            if on_checkpoint is not None:
                t0 = time.perf_counter()
                on_checkpoint(step, train_loss)
                eval_s += time.perf_counter() - t0
    if interval_steps:
        train_loss = _checked_mean(average(running) if average else running, interval_steps, step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - start - eval_s
    return TrainStats(steps=step, tokens=tokens, train_s=train_s, eval_s=eval_s, train_loss=train_loss)


def _checked_mean(running: torch.Tensor, n: int, step: int) -> float:
    value = float(running) / n
    if not math.isfinite(value):
        raise NonFiniteLoss(f"training loss became {value} by step {step}")
    return value
