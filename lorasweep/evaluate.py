"""Metrics: held-out loss (nats/token) and exact match on QA probes.

learn = exact match on domain probes; forget = general held-out loss of the trained model minus
that of the base model.

The embedded world's probes are scored from one teacher-forced forward pass: a probe is correct
when the argmax at every answer position (and the EOS after it) is the answer token, which is
exactly what greedy decoding would produce, without a generation loop.

A user's probes are scored by greedy generation (`generated_match`): the model continues the
prompt, and the probe is correct when, for one of its acceptable answers, the continuation cut at
that answer's length in tokens equals the answer after `normalize` (SQuAD's normalisation:
lowercase, punctuation and the articles a/an/the removed, whitespace collapsed). A base model need
not stop after the answer, so what follows it is not judged.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence

import torch

from lorasweep.data import IGNORE, Batch
from lorasweep.world import Probe

# fp32 logits one evaluation forward may produce: a batch (prepare.EVAL_BATCH_SIZE rows) whose
# logits would take more is run a few rows at a time. 128 rows of 1,024 tokens over a 128k
# vocabulary would be ~67 GB of fp32 logits, ~170 GB with the loss's copies; the embedded world's
# batches are far below it, so their numbers do not change.
EVAL_LOGITS_BYTES = 2**29


def mean_loss(model, batches: Sequence[Batch]) -> float:
    """Mean negative log-likelihood per scored token, in nats."""
    return loss_of(row_losses(model, batches))


def loss_of(rows: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The mean loss per scored token of `row_losses`' rows."""
    nll, tokens = rows
    return float(nll.sum() / max(int(tokens.sum()), 1))


@torch.no_grad()
def row_losses(model, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (float64) and scored-token count of every row, so any subset's mean can be formed."""
    nlls, counts = [], []
    for logits, labels in _forwards(model, batches):
        scored = labels != IGNORE
        nll = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), labels.masked_fill(~scored, 0), reduction="none"
        )
        nlls.append((nll * scored).double().sum(1).cpu())
        counts.append(scored.sum(1).cpu())
    return torch.cat(nlls), torch.cat(counts)


@torch.no_grad()
def exact_match(model, batches: Sequence[Batch]) -> float:
    """Share of rows whose every scored token is the model's argmax prediction."""
    correct = torch.zeros((), dtype=torch.long)
    rows = 0
    for logits, labels in _forwards(model, batches):
        scored = labels != IGNORE
        hit = (logits.argmax(-1) == labels) | ~scored
        correct += hit.all(dim=1).sum().cpu()
        rows += labels.shape[0]
    return float(correct) / max(rows, 1)


def _forwards(model, batches: Sequence[Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`_forward` over the batches, each in row chunks whose fp32 logits fit EVAL_LOGITS_BYTES."""
    config = getattr(model, "config", None)  # a model without a flat vocab_size: its output layer's
    vocab = getattr(config, "vocab_size", None) or model.get_output_embeddings().weight.shape[0]
    for batch in batches:
        rows, length = batch.input_ids.shape
        step = max(1, EVAL_LOGITS_BYTES // (length * vocab * 4))
        if step >= rows:
            yield _forward(model, batch)
            continue
        for start in range(0, rows, step):
            part = slice(start, start + step)
            yield _forward(
                model, Batch(batch.input_ids[part], batch.attention_mask[part], batch.labels[part])
            )


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


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@torch.no_grad()
def generated_match(model, tokenizer, probes: Sequence[Probe], batch_size: int) -> float:
    """Share of probes whose greedy continuation matches an acceptable answer (see the module doc)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    # Under FSDP2 (a sharded trial), PEFT's generate goes around the root module's forward, whose hook
    # gathers the root's own weights (embeddings, head): gathered here instead. Every shard takes
    # each decoding step together until all are done (synced_gpus), as each step is collective.
    sharded = hasattr(model, "unshard") and hasattr(model, "reshard")
    if sharded:
        model.unshard()
    try:
        for start in range(0, len(probes), batch_size):
            chunk = probes[start : start + batch_size]
            prompts = [p.prompt for p in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
            lengths = [[answer_length(tokenizer, p.prompt, a) for a in p.answers] for p in chunk]
            out = model.generate(
                input_ids=enc.input_ids.to(device),
                attention_mask=enc.attention_mask.to(device),
                max_new_tokens=max(max(n) for n in lengths),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,  # the tokenizer's, whatever the model config says
                synced_gpus=sharded,
            )
            continuations = out[:, enc.input_ids.shape[1] :].cpu()
            for probe, row, ns in zip(chunk, continuations, lengths):
                correct += any(
                    normalize(tokenizer.decode(row[:n], skip_special_tokens=True)) == normalize(answer)
                    for answer, n in zip(probe.answers, ns)
                )
    finally:
        if sharded:
            model.reshard()
        model.train(was_training)
    return correct / max(len(probes), 1)


def answer_length(tokenizer, prompt: str, answer: str) -> int:
    """Tokens the answer takes after the prompt (cut from the whole text, as subword tokenizers
    merge the leading space into the answer)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(f"{prompt} {answer}", add_special_tokens=True)["input_ids"]
    return max(1, len(full_ids) - len(prompt_ids))


def forget(general_loss: float, base_general_loss: float) -> float:
    """forget: how far the general held-out loss rose over the base model's on the same text."""
    return general_loss - base_general_loss
