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
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [row + [tokenizer.eos_token_id] for row in ids]


def pack_epochs(
    docs: Sequence[Sequence[int]],
    batch_size: int,
    max_length: int,
    batches: int,
    seed: int,
    replay: Sequence[Sequence[int]] = (),
    replay_ratio: float = 0.0,
) -> Iterator[torch.Tensor]:
    """`batches` batches of packed rows; each document pool is reshuffled every epoch.

    With replay, documents from `replay` are interleaved so that their share of the tokens so far
    stays at `replay_ratio` (the mixture setting of the critical-mixture-ratio paper): the total
    budget is fixed and replay takes its share of it.
    """
    if not docs:
        raise ValueError("no training documents to pack")
    if replay_ratio > 0 and not replay:
        raise ValueError("replay_ratio > 0 needs replay documents")
    domain_docs = _epochs(docs, random.Random(seed))
    replay_docs = _epochs(replay, random.Random(seed + 1)) if replay_ratio > 0 else None
    replayed = total = 0
    buffer: list[int] = []
    per_batch = batch_size * max_length
    for _ in range(batches):
        while len(buffer) < per_batch:
            if replay_docs is not None and replayed < replay_ratio * total:
                doc = next(replay_docs)
                replayed += len(doc)
            else:
                doc = next(domain_docs)
            total += len(doc)
            buffer.extend(doc)
        yield torch.tensor(buffer[:per_batch]).view(batch_size, max_length)
        del buffer[:per_batch]


def _epochs(docs: Sequence[Sequence[int]], rng: random.Random) -> Iterator[Sequence[int]]:
    """The documents forever, in a new order every epoch."""
    order = list(range(len(docs)))
    while True:
        rng.shuffle(order)
        for i in order:
            yield docs[i]


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
    if not probes:
        return []
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
