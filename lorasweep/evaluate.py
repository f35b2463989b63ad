"""Metrics: held-out loss (nats/token) and exact match on QA probes, one forward pass per batch.

learn = exact match on domain probes; forget = general held-out loss of the trained model minus
that of the base model. Both are computed from the same teacher-forced forward pass: a probe is
correct when the argmax at every answer position (and the EOS after it) is the answer token, which
is exactly what greedy decoding would produce, without a generation loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorasweep.data import IGNORE, Batch


@torch.no_grad()
def mean_loss(model, batches: Sequence[Batch]) -> float:
    """Mean negative log-likelihood per scored token, in nats."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for batch in batches:
        logits, labels = _forward(model, batch)
        scored = labels != IGNORE
        nll = torch.nn.functional.cross_entropy(logits[scored].float(), labels[scored], reduction="sum")
        total += nll.double().cpu()
        count += int(scored.sum())
    return float(total / max(count, 1))


@torch.no_grad()
def exact_match(model, batches: Sequence[Batch]) -> float:
    """Share of rows whose every scored token is the model's argmax prediction."""
    correct = torch.zeros((), dtype=torch.long)
    rows = 0
    for batch in batches:
        logits, labels = _forward(model, batch)
        scored = labels != IGNORE
        hit = (logits.argmax(-1) == labels) | ~scored
        correct += hit.all(dim=1).sum().cpu()
        rows += labels.shape[0]
    return float(correct) / max(rows, 1)


def _forward(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at each position and the label each position must predict (the next token)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(
            input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
        ).logits
    finally:
        model.train(was_training)
    return logits[:, :-1], batch.labels[:, 1:].to(device)
