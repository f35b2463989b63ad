"""Shared fixtures: a tiny world whose base model is built once per test session, tiny models of
every supported architecture, and the CLI run in this process or in a subprocess.

The tiny world trains in about a second per trial; every test and every CLI subprocess shares its
cached base model through LORASWEEP_CACHE_DIR. A CLI subprocess costs seconds of imports, so the
CLI runs in-process (`invoke`, Typer's CliRunner) unless the process boundary is what a test
checks (signals, worker processes, what reaches the terminal): then `cli`.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import yaml

from lorasweep.config import TrialConfig, WorldConfig

TINY_WORLD = {
    "n_general": 40,
    "n_domain": 12,
    "n_attributes": 2,
    "bios_per_person": 3,
    "hidden_size": 48,
    "n_layers": 2,
    "n_heads": 4,
    "pretrain_epochs": 40,
    "pretrain_batch_size": 32,
    "pretrain_lr": 1e-2,
    "max_length": 32,
}

TINY_SPACE = {
    "config": {
        "batch_size": 8,
        "max_length": 32,
        "train_tokens": 8192,
        "eval_points": 2,
        "world": TINY_WORLD,
    },
    "params": {
        "method": {"choices": ["lora", "full"]},
        "rank": {"type": "int", "low": 2, "high": 8, "log": True, "when": {"method": "lora"}},
        "target_modules": {"choices": ["all-linear", "qv"], "when": {"method": "lora"}},
        "lora_learning_rate": {
            "field": "learning_rate",
            "low": 3.0e-3,
            "high": 3.0e-2,
            "log": True,
            "when": {"method": "lora"},
        },
        "full_learning_rate": {
            "field": "learning_rate",
            "low": 3.0e-4,
            "high": 3.0e-3,
            "log": True,
            "when": {"method": "full"},
        },
    },
    "baselines": [
        {"method": "full", "learning_rate": 1.0e-3},
        {"method": "lora", "rank": 4, "target_modules": "all-linear", "learning_rate": 1.0e-2},
    ],
    "sampler": {"name": "tpe", "n_startup_trials": 2},
}


def pytest_configure(config) -> None:
    """Each pytest-xdist worker (`-n auto`, see pyproject.toml) on its own core.

    Two torch processes on the same cores slow each other down ~10x; pinned, each worker and the
    CLI processes it starts (they inherit the affinity) use one core and one torch thread.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})


@pytest.fixture(scope="session", autouse=True)  # no test writes to the checkout's results/cache
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["LORASWEEP_CACHE_DIR"] = str(path)  # for subprocesses and default_cache_dir()
    return path


@pytest.fixture(scope="session")
def tiny_world() -> WorldConfig:
    return WorldConfig(**TINY_WORLD)


@pytest.fixture(scope="session")
def prepared(tiny_world, cache_dir):
    from lorasweep.prepare import prepare

    return prepare(TrialConfig(world=tiny_world), cache_dir)


ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt_neox", "gpt2")


def tiny_model(architecture: str, hidden: int = 32, positions: int = 128, **ids):
    """A random one-layer model of a supported architecture (MLP 2x `hidden`, 2 heads), seeded;
    `ids` are the config's vocab_size and special token ids."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    if architecture == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**ids, n_embd=hidden, n_layer=1, n_head=2, n_positions=positions))
    shape = {"hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": 2}
    shape |= {"intermediate_size": 2 * hidden, "max_position_embeddings": positions}
    if architecture == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(**ids, **shape))
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    config_class, model_class = classes[architecture]
    return model_class(config_class(**ids, **shape, num_key_value_heads=2))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the world's tokenizer, saved the way Hugging Face ships models."""
    from lorasweep.world import make_tokenizer

    path = tmp_path_factory.mktemp("llama")
    tokenizer = make_tokenizer()
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    tiny_model("llama", positions=64, vocab_size=len(tokenizer), **ids).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    return path


def write_space(tmp_path: Path, **top) -> str:
    """TINY_SPACE with top-level keys set from `top`, written to tmp_path/space.yaml."""
    space = copy.deepcopy(TINY_SPACE)
    space.update(top)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


def invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`lorasweep ARGS` run in this process from `cwd`, as `cli` would report it. An exception the
    CLI does not turn into a message propagates, so a would-be traceback fails the test."""
    from typer.testing import CliRunner

    from lorasweep.cli import app

    before = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["lorasweep", *args], result.exit_code, result.stdout, result.stderr)


def cli(*args: str, cwd: Path, env_cache: Path) -> subprocess.CompletedProcess:
    """The real `lorasweep` command in a subprocess."""
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(env_cache)}
    return subprocess.run(
        [sys.executable, "-m", "lorasweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def optimize(tmp_path: Path, space: Path | str, *args: str) -> str:
    """`lorasweep optimize` on `space` (in this process), into tmp_path/s.db; returns the storage URL.

    Without replicates unless `args` asks for them: a test counts the trials it asked for.
    """
    url = f"sqlite:///{tmp_path}/s.db"
    args = args if "--replicates" in args else (*args, "--replicates", "0")
    result = invoke("optimize", "--space", str(space), "--storage", url, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return url


@dataclass
class Postgres:
    """A private PostgreSQL cluster: its URL, and pg_ctl to restart, stop or start it."""

    url: str
    pg_ctl: list

    def ctl(self, *args: str) -> None:
        subprocess.run([*self.pg_ctl, *args], check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL cluster for the session: initdb in a temp dir, a free port on 127.0.0.1.

    Skipped where PostgreSQL's server programs are not installed (`.ci/run` installs them).
    """
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server programs not installed (apt-get install postgresql)")
    # initdb refuses to run as root: the cluster belongs to Debian's postgres user then
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="lorasweep-pg-"))
    if as_owner:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = partial(subprocess.run, check=True, capture_output=True, text=True, timeout=120)
    run([*as_owner, bindir / "initdb", "-D", data / "db", "-U", "lorasweep", "--auth=trust"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_owner, bindir / "pg_ctl", "-D", data / "db", "-o", options, "-l", data / "log", "-w"]
    run([*pg_ctl, "start"])
    try:
        # a password in the URL (trust auth ignores it) so tests can check it is never printed
        yield Postgres(f"postgresql://lorasweep:s3cret@127.0.0.1:{port}/postgres", pg_ctl)
    finally:
        run([*pg_ctl, "-m", "immediate", "stop"], check=False)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    return postgres.url
