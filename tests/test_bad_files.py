"""Bad --domain/--general/--probes files and --storage URLs: one line naming the file or URL.

tests/test_user_data.py covers a missing file, an unknown format, an empty .jsonl, a missing
column, a probe without an answer key and broken JSON; tests/test_cli.py the CLI on a malformed
or refused storage URL. Here: what else a user's file or URL can be. The checks call
`load_corpus` and `storage` directly; one runs the real CLI, to see what reaches the terminal.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_WORLD, cli

from lorasweep.config import TrialConfig, WorldConfig
from lorasweep.corpus import load_corpus
from lorasweep.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "domain": str(ROOT / "examples/domain.jsonl"),
    "general": str(ROOT / "examples/general.txt"),
    "probes": str(ROOT / "examples/probes.jsonl"),
}
LATIN1 = "Ren\u00e9e was born in S\u00e3o Paulo.".encode("latin-1")  # not UTF-8: \xe9 and \xe3
HUGE = 5_000_000  # characters in one line: a whole book as one paragraph or one JSON record


def corpus_error(**files: str) -> str:
    """The ConfigError of loading the examples with `files` replaced; checked to be one line."""
    config = TrialConfig(**{**EXAMPLES, **files}, world=WorldConfig(**TINY_WORLD))
    with pytest.raises(ConfigError) as info:
        load_corpus(config)
    text = str(info.value)
    assert len(text.splitlines()) == 1, text
    return text


@pytest.mark.parametrize("what", ["domain", "general", "probes"])
def test_a_directory_is_not_a_file(what, tmp_path):
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    assert corpus_error(**{what: str(folder)}) == f"field '{what}': {folder} is a directory, not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "domain.jsonl"
    path.write_text('{"text": "x"}\n')
    path.chmod(0)
    assert f"cannot read {path} (PermissionError" in corpus_error(domain=str(path))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        # latin-1, as Windows editors of old and many exports write it: the line is named
        ("domain.jsonl", b'{"text": "ok"}\n{"text": "' + LATIN1 + b'"}\n', "line 2 is not UTF-8 (byte 0xe9"),
        ("domain.txt", b"ok\n\n" + LATIN1 + b"\n", "line 3 is not UTF-8 (byte 0xe9"),
        ("domain.csv", b"text\n" + LATIN1 + b"\n", "line 2 is not UTF-8 (byte 0xe9"),
        # UTF-16 (Windows' "Unicode"), with its byte-order mark and without one
        ("domain.jsonl", '{"text": "ok"}\n'.encode("utf-16"), "is UTF-16; save it as UTF-8"),
        ("domain.txt", "ok\n".encode("utf-16"), "is UTF-16; save it as UTF-8"),
        ("domain.txt", "ok\n".encode("utf-16-le"), "line 1 holds NUL bytes"),
        # empty in all but name
        ("domain.txt", b"\n\n  \n\n", "has no non-empty 'text' values"),
        ("domain.txt", b"", "is empty"),
    ],
    ids=[
        "latin1-jsonl",
        "latin1-txt",
        "latin1-csv",
        "utf16-jsonl",
        "utf16-txt",
        "utf16-no-bom",
        "blank",
        "empty",
    ],
)
def test_a_file_without_utf8_text_is_named_with_its_line(name, data, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(data)
    text = corpus_error(domain=str(path))
    assert text.startswith(f"field 'domain': {path}") and message in text, text


def test_a_utf8_byte_order_mark_is_not_part_of_the_text(tmp_path):
    path = tmp_path / "general.txt"
    path.write_bytes("\ufeff".encode() + Path(EXAMPLES["general"]).read_bytes())
    config = TrialConfig(**{**EXAMPLES, "general": str(path)}, world=WorldConfig(**TINY_WORLD))
    reference = TrialConfig(**EXAMPLES, world=WorldConfig(**TINY_WORLD))
    assert load_corpus(config).fingerprint == load_corpus(reference).fingerprint


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_huge_line_is_one_whole_document_read_in_seconds(suffix, tmp_path):
    # A user expects a long document to be trained on, not refused: the corpus keeps it whole,
    # training packs its tokens into rows of max_length, and a held-out one is cut into pieces
    # of the model's context (prepare._chunks); tokenizing it takes seconds per MB, like any text.
    huge = ("word " * (HUGE // 5)).strip()
    path = tmp_path / f"domain{suffix}"
    path.write_text(json.dumps({"text": huge}) + "\n" if suffix == ".jsonl" else huge + "\n")
    config = TrialConfig(**{**EXAMPLES, "domain": str(path)}, world=WorldConfig(**TINY_WORLD))
    start = time.monotonic()
    assert list(load_corpus(config).domain_train) == [huge]
    assert time.monotonic() - start < 30


def test_held_out_text_longer_than_the_context_is_cut_into_pieces():
    from lorasweep.prepare import _chunks

    pieces = _chunks([list(range(1000)), [7]], 128)
    assert [len(p) for p in pieces] == [128] * 7 + [104, 1]
    assert [token for piece in pieces for token in piece] == [*range(1000), 7]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "Who?", "answer": ""}, "row 2: has no 'answer'"),
        ({"question": "Who?", "answer": "  "}, "row 2: has no 'answer'"),
        ({"question": "Who?", "answer": None}, "row 2: has no 'answer'"),
        ({"question": "Who?", "answer": []}, "row 2: has no 'answer'"),
        ({"question": "Who?", "answer": [None, ""]}, "row 2: has no 'answer'"),  # was the answer "None"
        ({"question": "Who?", "answer": {"text": "x"}}, "row 2: 'answer' is {'text': 'x'}; allowed: a text"),
        ({"answer": "Quillhaven"}, "row 2: needs a 'question' or a 'prompt'"),
    ],
    ids=["empty", "blank", "null", "no-list", "null-list", "mapping", "no-question"],
)
def test_a_probe_without_a_usable_answer_names_its_row(row, message, tmp_path):
    path = tmp_path / "probes.jsonl"
    good = {"question": "Where was Orla Venn born?", "answer": "Quillhaven"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    text = corpus_error(probes=str(path))
    assert text.startswith(f"field 'probes': {path} row 2") and message in text, text


def test_the_cli_says_it_in_one_line_with_exit_2_and_no_study(tmp_path, tiny_space, cache_dir):
    # broken JSON: `datasets` logs "Failed to load JSON ..." as well, a second line unless silenced;
    # one subprocess only (~6 s): the other cases take the same path from load_corpus to the CLI
    path = tmp_path / "domain.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    db = tmp_path / "s.db"
    result = cli(
        "optimize",
        "--space",
        str(tiny_space),
        "--storage",
        f"sqlite:///{db}",
        *[arg for key, value in {**EXAMPLES, "domain": str(path)}.items() for arg in (f"--{key}", value)],
        cwd=tmp_path,
        env_cache=cache_dir,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: field 'domain': cannot read {path}"), lines
    assert "Traceback" not in result.stdout + result.stderr
    # the storage is opened before the data is read (a bad URL is answered in seconds), but no
    # study is created until the model and data have loaded
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


# --storage: a malformed or unreachable URL is one line, with the password masked.


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo", "--storage 'foo': not a storage URL"),
        ("sqlite:/x", "--storage 'sqlite:/x': not a storage URL"),
        # no host: libpq tries the local socket, which is refused or not there
        ("postgresql://u:secret@", "--storage 'postgresql://u:***@': cannot open (OperationalError"),
    ],
)
def test_a_malformed_storage_url_is_one_line_without_the_password(url, message):
    from lorasweep.storages import open_storage

    with pytest.raises(ConfigError) as info:
        open_storage(url)
    text = str(info.value)
    assert text.startswith(message) and "secret" not in text and len(text.splitlines()) == 1, text


def test_a_storage_url_with_a_bad_port_is_one_line_without_the_password():
    from lorasweep.storages import open_storage

    with pytest.raises(ConfigError) as info:
        open_storage("postgresql://u:secret@db.example:notaport/db")
    assert "secret" not in str(info.value) and "notaport" in str(info.value)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers: a hung or firewalled database host."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)  # never accept()ed: the client waits for a reply that never comes
        yield server.getsockname()[1]


def test_a_database_server_that_never_answers_is_an_error_within_the_connect_timeout(
    silent_server, monkeypatch
):
    from lorasweep import storages

    monkeypatch.setattr(storages, "CONNECT_TIMEOUT_S", 2)  # libpq's smallest; the default is 5
    start = time.monotonic()
    with pytest.raises(ConfigError, match="timeout") as info:
        storages.open_storage(f"postgresql://u:secret@127.0.0.1:{silent_server}/db")
    assert time.monotonic() - start < 10  # without a connect_timeout, psycopg waits 130 s
    assert "secret" not in str(info.value) and "postgresql://u:***@127.0.0.1" in str(info.value)
