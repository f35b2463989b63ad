"""Token ids of a corpus, tokenised once and memory-mapped by every trial, worker and run.

    store = token_store(texts, tokenizer, cache_dir, key=corpus.fingerprint, on_progress=...)
    len(store), store[i], store.n_tokens   # documents, one document's ids, all tokens

The first time a (corpus, tokenizer) pair is used, its texts are tokenised in batches (the fast
tokenizer encodes a batch on all cores) and appended to a flat array of token ids on disk (uint16
when the vocabulary fits, else uint32) with the documents' offsets beside it, under
`<cache>/tokens/<fingerprint>/`. Each document is what `data.tokenize_documents` makes of it (the
tokenizer's own BOS if it adds one, a closing EOS), so packing from the store gives the same
batches as packing from lists did. Memory while building holds one batch, whatever the corpus.

The store is built in a temporary directory and renamed into place whole: a killed build leaves
nothing that is taken for a store, and of two processes building at once, the second to finish
uses the first one's. Later processes memory-map it: the operating system shares its pages
between workers, and a trial reads only the documents its budget packs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

BATCH_DOCS = 2048  # documents tokenised at once while building
VERSION = 1  # of the layout and of what a document holds; part of the fingerprint
SAMPLE = "Orla Venn was born in Tarn, 1987. Ça va? 東京 ✓"  # encoded into the fingerprint


class TokenStore(Sequence):
    """A corpus's documents as token ids, memory-mapped: `store[i]` is document i's ids (a list)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        meta = json.loads((path / "meta.json").read_text())
        self.fingerprint: str = meta["fingerprint"]
        self.n_tokens: int = meta["n_tokens"]
        self.offsets = np.memmap(path / "offsets.bin", dtype=np.int64, mode="r", shape=(meta["n_docs"] + 1,))
        self.tokens = np.memmap(path / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(self.n_tokens,))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.tokens[self.offsets[i] : self.offsets[i + 1]].tolist()


def fingerprint(corpus_key: str, tokenizer) -> str:
    """What makes two stores the same: the corpus, the tokenizer as it encodes, the layout."""
    digest = hashlib.sha256(f"{VERSION}\0{corpus_key}\0{type(tokenizer).__name__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: its whole definition, normalizer to post-processor
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)]).encode())
    # what it makes of a text, special tokens included: settings outside its definition (a slow or
    # remote-code tokenizer's add_bos_token, say) show here
    digest.update(json.dumps(tokenizer(SAMPLE, add_special_tokens=True)["input_ids"]).encode())
    return digest.hexdigest()[:16]


def token_store(
    texts: Callable[[], Iterable[str]],
    tokenizer,
    cache_dir: Path,
    key: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> TokenStore:
    """The store of the corpus `key` (its data fingerprint) under this tokenizer, built on first use
    from `texts()` (called only then); `on_progress(documents, tokens)` follows a build."""
    name = fingerprint(key, tokenizer)
    target = Path(cache_dir) / "tokens" / name
    if (target / "meta.json").exists():
        return TokenStore(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _build(texts(), tokenizer, tmp, name, on_progress)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would keep a shared cache's other users out
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: its store is the same
            if not (target / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenStore(target)


def _build(
    texts: Iterable[str], tokenizer, out: Path, name: str, on_progress: Callable[[int, int], None] | None
) -> None:
    largest = max([*tokenizer.get_vocab().values(), tokenizer.eos_token_id])  # a vocabulary may have gaps
    dtype = np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32
    n_docs = n_tokens = 0
    with (out / "tokens.bin").open("wb") as tokens, (out / "offsets.bin").open("wb") as offsets:
        np.zeros(1, dtype=np.int64).tofile(offsets)
        for batch in _batches(texts, BATCH_DOCS):
            ids = tokenizer(batch, add_special_tokens=True)["input_ids"]
            lengths = np.fromiter((len(row) + 1 for row in ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(
                (t for row in ids for t in (*row, tokenizer.eos_token_id)),
                dtype=dtype,
                count=int(lengths.sum()),
            )
            flat.tofile(tokens)
            (n_tokens + np.cumsum(lengths)).tofile(offsets)
            n_docs, n_tokens = n_docs + len(ids), n_tokens + int(lengths.sum())
            if on_progress is not None:
                on_progress(n_docs, n_tokens)
    if n_docs == 0:
        raise ValueError("no documents to tokenise")
    meta = {"fingerprint": name, "dtype": np.dtype(dtype).name, "n_docs": n_docs, "n_tokens": n_tokens}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
