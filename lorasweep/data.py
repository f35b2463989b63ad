"""Text to tensors: packed training batches and padded evaluation batches.

Training text is packed: documents (each ending in EOS) are concatenated in a seeded, per-epoch
shuffled order and cut into rows of `max_length` tokens, so no compute goes to padding and a token
budget means the same number of real tokens for every trial. Evaluation keeps documents and probes
whole, padded on the right, with labels of -100 wherever nothing is scored.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

IGNORE = -100  # label of positions not scored (torch's cross_entropy ignore_index)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def tokenize_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with the tokenizer's own BOS if it adds one and a closing EOS."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [row + [tokenizer.eos_token_id] for row in ids]


def pack_epochs(
    docs: Sequence[Sequence[int]], batch_size: int, max_length: int, steps: int, seed: int
) -> Iterator[torch.Tensor]:
    """`steps` batches of packed rows; the documents are reshuffled every epoch."""
    if not docs:
        raise ValueError("no training documents to pack")
    rng = random.Random(seed)
    order = list(range(len(docs)))
    buffer: list[int] = []
    per_batch = batch_size * max_length
    for _ in range(steps):
        while len(buffer) < per_batch:
            rng.shuffle(order)
            for i in order:
                buffer.extend(docs[i])
        yield torch.tensor(buffer[:per_batch]).view(batch_size, max_length)
        del buffer[:per_batch]


def loss_batches(docs: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> list[Batch]:
    """Whole documents, every token after the first scored: for held-out loss in nats/token."""
    rows = [(list(doc), list(doc)) for doc in docs]
    return _collate(rows, batch_size, pad_id)


def probe_batches(tokenizer, probes: Sequence, batch_size: int) -> list[Batch]:
    """Prompt + answer + EOS rows where only the answer and the EOS after it are scored.

    Scoring the EOS makes exact match mean "answers this and stops", not "starts with this". The
    answer span is cut from the tokenization of the whole text, so subword tokenizers that merge
    the leading space into the answer are scored on the tokens they would really produce.
    """
    prompts = [p.prompt for p in probes]
    full = [f"{p.prompt} {p.answer}" for p in probes]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=True)["input_ids"]
    rows = []
    for p_ids, f_ids in zip(prompt_ids, full_ids):
        ids = f_ids + [tokenizer.eos_token_id]
        start = len(p_ids)
        rows.append((ids, [IGNORE] * start + ids[start:]))
    return _collate(rows, batch_size, tokenizer.pad_token_id)


def _collate(rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[Batch]:
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE)
        for i, (row_ids, row_labels) in enumerate(chunk):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            mask[i, : len(row_ids)] = 1
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
        batches.append(Batch(ids, mask, labels))
    return batches
