"""The text a trial trains on and is measured with: the embedded world, or the user's own files.

    lorasweep optimize --model ./my-model --domain examples/domain.jsonl \
        --general examples/general.txt --probes examples/probes.jsonl

- `domain`: the new knowledge, trained on in full.
- `general`: general text; a deterministic `general_heldout` share (or number) of its documents
  measures forgetting, the rest is the replay pool. Without it, the embedded world's general text is used.
- `probes`: questions about the domain that the text answers but never states in that form.
  Rows are `{"question", "answer"}` (the prompt is `probe_template` with the question filled in)
  or cloze `{"prompt", "answer"}`; `answer` may be a list of acceptable answers.

Each source is a local file read through `datasets` (.jsonl, .json, .csv, .parquet; .txt where
paragraphs separated by a blank line are documents) or a hub dataset already in the local cache,
written `hub:NAME?config=CONFIG&split=SPLIT` (config optional, split default train). Text rows
are read from `text_column`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import random
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from lorasweep.config import TrialConfig
from lorasweep.validation import ConfigError
from lorasweep.world import Probe, build_world, default_cache_dir, world_fingerprint

FINGERPRINT_RULES = 1  # bump when what a text is (stripping, skipping) changes: forgets remembered ones
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class Texts:
    """A text column of a dataset, read a batch of rows at a time: the whole corpus is never held
    as Python strings (`datasets` keeps it as a memory-mapped Arrow file). A text is stripped (and
    a leading byte-order mark, which Windows editors write, dropped); empty ones are skipped."""

    def __init__(self, rows, column: str) -> None:
        self.rows, self.column = rows, column

    def __iter__(self) -> Iterator[str]:
        for batch in self.rows.iter(batch_size=1024):
            for value in batch[self.column]:
                text = "" if value is None else str(value).lstrip("\ufeff").strip()
                if text:
                    yield text


@dataclass
class Corpus:
    domain_train: Iterable[str]  # a list (the world's), or Texts read from the user's file
    replay: list[str]  # general text for replay, disjoint from general_heldout
    general_heldout: list[str]  # the forgetting measure
    domain_probes: list[Probe]  # learn
    domain_heldout: list[str] = field(default_factory=list)  # the world's held-out paraphrases only
    general_probes: list[Probe] = field(default_factory=list)  # the world's general QA only
    user_probes: bool = False  # scored by greedy generation with normalisation (evaluate.py)
    fingerprint: str = ""  # of every text and answer, recorded with each trial
    # of each part a token store is built from (domain_train, replay): a change elsewhere (a probe,
    # the held-out share) does not tokenise the domain again
    parts: dict[str, str] = field(default_factory=dict)


def load_corpus(config: TrialConfig, cache_dir: Path | None = None) -> Corpus:
    """The world's texts, with whatever the user's files replace.

    `datasets` keeps its Arrow copy of a local file under `cache_dir`/datasets (default: lorasweep's
    cache), not in the home directory.
    """
    cache = str((cache_dir or default_cache_dir()) / "datasets")
    world = build_world(config.world)
    if config.domain is None and config.general is None and config.probes is None:
        return Corpus(
            domain_train=world.domain_bios,
            replay=world.general_bios,
            general_heldout=world.general_heldout_bios,
            domain_probes=world.domain_probes,
            domain_heldout=world.domain_heldout_bios,
            general_probes=world.general_probes,
            fingerprint=f"world-{world_fingerprint(config.world)}",
        )
    if config.domain is None or config.probes is None:
        raise ConfigError("fields 'domain' and 'probes' go together: the probes ask about the domain text")
    before = (
        _stats(config) if all(_exists(s) for s in (config.domain, config.general, config.probes)) else None
    )
    domain = _texts(config.domain, config.text_column, "domain", cache)
    probes = _probes(config.probes, config.probe_template, cache)
    if config.general is None:
        replay, heldout = world.general_bios, world.general_heldout_bios
    else:
        general = _read(
            _texts(config.general, config.text_column, "general", cache), "general", config.general
        )
        if not general:
            raise ConfigError(
                f"field 'general': {config.general} has no non-empty '{config.text_column}' values"
            )
        replay, heldout = _split(general, config.general_heldout)
    corpus = Corpus(domain, replay, heldout, probes, user_probes=True)
    corpus.fingerprint, corpus.parts = _remembered_fingerprint(corpus, config, Path(cache).parent, before)
    return corpus


def _remembered_fingerprint(
    corpus: Corpus, config: TrialConfig, cache_dir: Path, before: list | None
) -> tuple[str, dict[str, str]]:
    """The corpus's fingerprint, remembered under `cache_dir`/fingerprints for files whose
    `_stats` are unchanged: a second run or worker does not read the whole domain text again (its
    trials read only what they pack, from the token store). `before` are the files' stats from
    before they were read (None for a hub dataset, fingerprinted on every load); a value is
    remembered only if the files did not change while they were read."""
    if before is None:
        return _fingerprint(corpus, config)
    shaping = [
        config.text_column,
        config.probe_template,
        config.general_heldout,
        world_fingerprint(config.world),
    ]
    key = hashlib.sha256(json.dumps([FINGERPRINT_RULES, before, shaping]).encode()).hexdigest()[:16]
    remembered = cache_dir / "fingerprints" / key
    if remembered.exists():
        found = json.loads(remembered.read_text())
        return found[0], found[1]
    found = _fingerprint(corpus, config)
    if _stats(config) == before:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        partial = remembered.with_name(f".{key}.{socket.gethostname()}.{os.getpid()}")
        partial.write_text(json.dumps(found))
        partial.replace(remembered)
    return found


def _stats(config: TrialConfig) -> list | None:
    """What tells the user's files changed without reading them: each one's inode, size, and
    modification and change times (the change time cannot be set back, as `cp -p` or `touch -r`
    set the modification time); None when a source is a hub dataset."""
    sources = [config.domain, config.general, config.probes]
    if any(s is not None and s.startswith("hub:") for s in sources):
        return None
    return [None if source is None else _stat(source) for source in sources]


def _stat(source: str) -> list:
    info = Path(source).stat()
    return [str(Path(source).resolve()), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _exists(source: str | None) -> bool:
    """Whether a source is absent or a readable file (a missing one is _rows's to report)."""
    return source is None or source.startswith("hub:") or Path(source).is_file()


def _split(docs: list[str], heldout: float) -> tuple[list[str], list[str]]:
    """(replay, held out): a seeded shuffle, so the split is the same on every run and machine;
    `heldout` is a share of the documents, or (>= 1) their number."""
    order = list(range(len(docs)))
    random.Random(0).shuffle(order)
    n_heldout = max(1, round(heldout * len(docs))) if heldout < 1 else int(heldout)
    if n_heldout >= len(docs):
        raise ConfigError(
            f"field 'general': {len(docs)} documents cannot be split into replay and held-out text"
        )
    return [docs[i] for i in order[n_heldout:]], [docs[i] for i in order[:n_heldout]]


def _fingerprint(corpus: Corpus, config: TrialConfig) -> tuple[str, dict[str, str]]:
    """sha256 of every text and answer, as the JSON of each part's list: streamed, so the domain
    text is read a batch at a time, and the same value as lorasweep has always recorded (reproduce
    compares it); with the fingerprints of the domain and replay parts alone (Corpus.parts).
    Reading the domain here also checks each of its rows decodes."""
    digest, domain = hashlib.sha256(b"["), hashlib.sha256(b"[")
    count = 0
    try:
        for text in corpus.domain_train:
            piece = (", " if count else "").encode() + json.dumps(text).encode()
            digest.update(piece)
            domain.update(piece)
            count += 1
    except (OSError, ValueError, TypeError) as err:
        raise _unreadable("domain", config.domain, err) from None
    if not count:
        raise ConfigError(f"field 'domain': {config.domain} has no non-empty '{config.text_column}' values")
    digest.update(b"]")
    domain.update(b"]")
    for part in (corpus.replay, corpus.general_heldout):
        digest.update(json.dumps(part).encode())
    digest.update(json.dumps([(p.prompt, p.answers) for p in corpus.domain_probes]).encode())
    replay = hashlib.sha256(json.dumps(corpus.replay).encode())
    parts = {"domain_train": domain.hexdigest()[:16], "replay": replay.hexdigest()[:16]}
    return digest.hexdigest()[:16], parts


def _rows(source: str, what: str, cache: str):
    """The rows of a local file or a cached hub dataset, as a `datasets.Dataset` (memory-mapped);
    every failure is one line naming the source."""
    import datasets

    datasets.disable_progress_bars()
    # not even its errors: each is raised, and turned into the one line below ("Failed to load
    # JSON ..." would be a second line before it)
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        if source.startswith("hub:"):
            name, _, query = source[4:].partition("?")
            options = {k: v[-1] for k, v in parse_qs(query).items()}
            unknown = set(options) - {"config", "split"}
            if unknown or not name:
                raise ConfigError(f"field '{what}': '{source}' is not hub:NAME?config=CONFIG&split=SPLIT")
            rows = datasets.load_dataset(
                name,
                options.get("config"),
                split=options.get("split", "train"),
                download_mode="reuse_dataset_if_exists",
            )
        else:
            path = Path(source)
            if path.is_dir():
                raise ConfigError(f"field '{what}': {source} is a directory, not a file")
            if not path.is_file():
                raise ConfigError(f"field '{what}': file not found: {source}")
            kind = FORMATS.get(path.suffix.lower())
            if kind is None:
                raise ConfigError(f"field '{what}': {source}: unknown format (allowed: {', '.join(FORMATS)})")
            if path.stat().st_size == 0:
                raise ConfigError(f"field '{what}': {source} is empty")
            if kind != "parquet":
                _check_utf8(source, what)
            extra = {"sample_by": "paragraph"} if kind == "text" else {}
            # a copy per version of the file: `datasets` itself tells versions apart by path and
            # modification time only, and would keep reading the old copy of a file rewritten
            # at the same size and time (cp -p, rsync -a)
            version = hashlib.sha256(json.dumps(_stat(source)).encode()).hexdigest()[:16]
            rows = datasets.load_dataset(
                kind, data_files=str(path), split="train", cache_dir=f"{cache}/{version}", **extra
            )
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, datasets.exceptions.DatasetsError) as err:
        raise _unreadable(what, source, err) from None
    if len(rows) == 0:
        raise ConfigError(f"field '{what}': {source} has no rows")
    return rows


def _unreadable(what: str, source: str, err: Exception) -> ConfigError:
    # "An error occurred while generating the dataset" says nothing: the reason is its cause
    cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
    reason = (str(cause).strip().splitlines() or [cause.__class__.__name__])[0]
    return ConfigError(f"field '{what}': cannot read {source} ({cause.__class__.__name__}: {reason})")


def _check_utf8(source: str, what: str) -> None:
    """A text file must be UTF-8: name the line where it is not, before `datasets` reads it.

    `datasets` reports a latin-1 or UTF-16 file as "An error occurred while generating the
    dataset", or reads UTF-16 without a byte-order mark as text full of NUL characters.
    """
    with open(source, "rb") as f:
        if f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise ConfigError(f"field '{what}': {source} is UTF-16; save it as UTF-8")
        f.seek(0)
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(
                    f"field '{what}': {source} line {number} is not UTF-8 (byte 0x{line[err.start]:02x} "
                    f"at position {err.start + 1}); save the file as UTF-8"
                ) from None
            if b"\0" in line:
                raise ConfigError(
                    f"field '{what}': {source} line {number} holds NUL bytes (UTF-16 or a binary file?); "
                    "save it as UTF-8 text"
                )


def _texts(source: str, column: str, what: str, cache: str) -> Texts:
    rows = _rows(source, what, cache)
    if column not in rows.column_names:
        raise ConfigError(
            f"field '{what}': {source} has no column '{column}' (columns: {', '.join(rows.column_names)})"
        )
    return Texts(rows, column)


def _read(rows: Iterable, what: str, source: str) -> list:
    """All of a small source's rows or texts (general text, probes), each decoded here: a bad one
    is one line naming the source."""
    try:
        return list(rows)
    except (OSError, ValueError, TypeError) as err:
        raise _unreadable(what, source, err) from None


def _probes(source: str, template: str, cache: str) -> list[Probe]:
    rows = _read(_rows(source, "probes", cache), "probes", source)
    probes = []
    for i, row in enumerate(rows, start=1):
        where = f"field 'probes': {source} row {i}"
        if row.get("prompt") is not None:
            prompt = str(row["prompt"])
        elif row.get("question") is not None:
            prompt = template.replace("{question}", str(row["question"]))
        else:
            raise ConfigError(f"{where}: needs a 'question' or a 'prompt' (columns: {', '.join(row)})")
        answer = row.get("answer")
        answers = answer if isinstance(answer, list) else [answer]
        if any(isinstance(a, (dict, list)) for a in answers):
            raise ConfigError(f"{where}: 'answer' is {answer!r}; allowed: a text or a list of texts")
        # null and blank answers are no answers (str(None) would be the answer "None")
        answers = [str(a).strip() for a in answers if a is not None and str(a).strip()]
        if not answers:
            raise ConfigError(f"{where}: has no 'answer'")
        probes.append(Probe(prompt.rstrip(), tuple(answers)))
    return probes
