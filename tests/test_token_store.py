"""The token store: a corpus tokenised once, memory-mapped, packed into the same batches as before."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lorasweep.data import pack_epochs, tokenize_documents
from lorasweep.token_store import TokenStore, fingerprint, token_store
from lorasweep.world import build_world, make_tokenizer


@pytest.fixture(scope="module")
def texts(tiny_world) -> list[str]:
    return build_world(tiny_world).domain_bios


def test_a_store_holds_each_document_as_tokenize_documents_makes_it(texts, tmp_path):
    tokenizer = make_tokenizer()
    built = []
    store = token_store(lambda: texts, tokenizer, tmp_path, "corpus", lambda d, t: built.append((d, t)))
    expected = tokenize_documents(tokenizer, texts)
    assert len(store) == len(texts) and [store[i] for i in range(len(store))] == expected
    assert store[-1] == expected[-1] and store.n_tokens == sum(map(len, expected)) == built[-1][1]
    with pytest.raises(IndexError):
        store[len(texts)]
    assert store.tokens.dtype == np.uint16  # a vocabulary of 106 fits
    # a second use maps the same files: nothing is tokenised again
    again = token_store(lambda: pytest.fail("tokenised again"), tokenizer, tmp_path, "corpus")
    assert again.path == store.path and again[3] == store[3]


def big_vocabulary_tokenizer(size: int = 70_000) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<eos>": 1} | {f"w{i}": i + 2 for i in range(size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")


def test_ids_past_uint16_are_stored_as_uint32(tmp_path):
    tokenizer = big_vocabulary_tokenizer()
    texts = ["w1 w65535 w69999", "w0 w65536"]
    store = token_store(lambda: texts, tokenizer, tmp_path, "big")
    assert store.tokens.dtype == np.uint32
    assert [store[0], store[1]] == [[3, 65537, 70001, 1], [2, 65538, 1]]


def test_another_corpus_or_tokenizer_is_another_store(texts, tmp_path):
    tokenizer = make_tokenizer()
    first = token_store(lambda: texts, tokenizer, tmp_path, "corpus-a")
    assert token_store(lambda: texts[:5], tokenizer, tmp_path, "corpus-b").path != first.path
    # the same vocabulary, another post-processor: no BOS any more, so other ids
    changed = make_tokenizer()
    changed.backend_tokenizer.post_processor = None
    assert fingerprint("corpus-a", changed) != fingerprint("corpus-a", tokenizer)
    other = token_store(lambda: texts, changed, tmp_path, "corpus-a")
    assert other.path != first.path and other[0] == first[0][1:]


BUILD = """
import sys, time
from pathlib import Path
from lorasweep.token_store import token_store
from lorasweep.world import make_tokenizer

texts = lambda: (f"person {i} was born in cityname" for i in range(int(sys.argv[2])))
def progress(docs, tokens):
    print(docs, flush=True)
    time.sleep(float(sys.argv[3]))
store = token_store(texts, make_tokenizer(), Path(sys.argv[1]), "generated", progress)
print("done", store.path.name, store.n_tokens, flush=True)
"""


def build(cache: Path, docs: int, pause: float) -> subprocess.Popen:
    command = [sys.executable, "-c", BUILD, str(cache), str(docs), str(pause)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def test_a_killed_build_leaves_no_store_and_the_next_builds_it_whole(tmp_path):
    builder = build(tmp_path, 100_000, 0.2)
    assert builder.stdout.readline().strip() == "2048"  # the first batch is on disk
    builder.kill()
    builder.wait()
    stores = tmp_path / "tokens"
    assert [p.name for p in stores.iterdir() if not p.name.startswith(".building-")] == []
    finished = build(tmp_path, 100_000, 0)
    out = finished.communicate()[0].splitlines()[-1].split()
    assert finished.returncode == 0 and out[0] == "done"
    store = TokenStore(stores / out[1])
    assert len(store) == 100_000 and store.n_tokens == int(out[2])
    assert json.loads((store.path / "meta.json").read_text())["n_docs"] == 100_000


def test_two_processes_building_at_once_end_with_one_store(tmp_path):
    builders = [build(tmp_path, 20_000, 0.01) for _ in range(2)]
    outs = [b.communicate()[0].splitlines()[-1] for b in builders]
    assert [b.returncode for b in builders] == [0, 0]
    assert outs[0] == outs[1]  # the same store, the same size
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [outs[0].split()[1]]  # no leftovers


def test_packing_from_a_store_gives_the_same_batches_as_from_lists(texts, tmp_path, tiny_world):
    tokenizer = make_tokenizer()
    replay = build_world(tiny_world).general_bios

    def packed(docs, replay_docs) -> list[torch.Tensor]:
        return list(pack_epochs(docs, 4, 32, 40, seed=7, replay=replay_docs, replay_ratio=0.25))

    from_lists = packed(tokenize_documents(tokenizer, texts), tokenize_documents(tokenizer, replay))
    stores = [
        token_store(lambda t=t: t, tokenizer, tmp_path, key) for t, key in ((texts, "d"), (replay, "r"))
    ]
    from_stores = packed(*stores)
    assert all(torch.equal(a, b) for a, b in zip(from_lists, from_stores, strict=True))
    assert from_stores[0].dtype == torch.int64


def test_a_store_of_many_batches_holds_every_document_where_it_was(texts, tmp_path, monkeypatch):
    from lorasweep import token_store as module

    monkeypatch.setattr(module, "BATCH_DOCS", 7)  # the test world's documents in many batches
    tokenizer = make_tokenizer()
    store = token_store(lambda: texts, tokenizer, tmp_path, "batched")
    expected = tokenize_documents(tokenizer, texts)
    assert [store[i] for i in range(len(store))] == expected
    assert store.offsets.tolist() == np.cumsum([0, *map(len, expected)]).tolist()


def test_a_store_another_process_finished_first_is_the_one_used(texts, tmp_path, monkeypatch):
    from lorasweep import token_store as module

    tokenizer = make_tokenizer()
    theirs = token_store(lambda: texts, tokenizer, tmp_path / "theirs", "corpus")
    build = module._build

    def racing(*args) -> None:  # while this build runs, the other process renames its store in
        build(*args)
        shutil.copytree(theirs.path, tmp_path / "ours" / "tokens" / theirs.path.name)

    monkeypatch.setattr(module, "_build", racing)
    ours = token_store(lambda: texts, tokenizer, tmp_path / "ours", "corpus")
    assert ours.path.name == theirs.path.name and ours[5] == theirs[5]
    assert [p.name for p in (tmp_path / "ours" / "tokens").iterdir()] == [theirs.path.name]  # no leftover
