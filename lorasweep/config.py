"""A trial's whole configuration: one typed object, written as YAML and run again as it is.

Every Optuna trial records its resolved `TrialConfig` as the user attr `config`; the same object,
saved as YAML, runs one trial without Optuna:

    lorasweep run --config trial.yaml

Validation is strict and every error is one line that names the source, the field and what is
allowed, so a typo never costs a sweep.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("full", "lora", "rslora", "dora", "qlora")
ADAPTER_METHODS = ("lora", "rslora", "dora", "qlora")
TARGET_PRESETS = ("all-linear", "attention", "qv", "mlp")
QUANTIZATIONS = ("nf4", "int8")
SCHEDULES = ("constant", "linear", "cosine", "cosine_with_min_lr", "warmup_stable_decay")
LR_SCALINGS = ("none", "sqrt", "linear")
DTYPES = ("auto", "fp32", "bf16", "fp16")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the file, the field and what is allowed."""

    def __init__(self, message: str) -> None:
        # a message quotes what the user wrote (a key, a path, a library's reason), which may hold
        # line breaks: they are escaped, as repr() would, so the message stays one line
        super().__init__(message.translate(_ESCAPED_LINE_BREAKS))


# every character str.splitlines() breaks at
_ESCAPED_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


@dataclass
class WorldConfig:
    """The embedded knowledge world and the recipe of its base model (DESIGN.md section 3)."""

    seed: int = 0
    n_general: int = 200  # people the base model knows
    n_domain: int = 100  # people whose facts a trial injects
    n_attributes: int = 3  # facts per person (birth city, university, employer, job)
    n_templates: int = 4  # paraphrase templates per attribute; one per person is held out
    bios_per_person: int = 4  # training biographies per person, each a fresh paraphrase
    # base model (Llama architecture) and its pretraining on the general split
    hidden_size: int = 192
    n_layers: int = 4
    n_heads: int = 4
    pretrain_epochs: int = 30
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    max_length: int = 64  # tokens per packed pretraining sequence

    def validate(self, source: str) -> None:
        _check(source, self, "world.n_general", self.n_general >= 2, "an integer >= 2")
        _check(source, self, "world.n_domain", self.n_domain >= 1, "an integer >= 1")
        _check(source, self, "world.n_attributes", 1 <= self.n_attributes <= 4, "an integer in 1..4")
        _check(source, self, "world.n_templates", 2 <= self.n_templates <= 4, "an integer in 2..4")
        _check(source, self, "world.bios_per_person", self.bios_per_person >= 1, "an integer >= 1")
        _check(source, self, "world.hidden_size", self.hidden_size >= 8, "an integer >= 8")
        _check(source, self, "world.n_layers", self.n_layers >= 1, "an integer >= 1")
        _check(
            source,
            self,
            "world.n_heads",
            self.n_heads >= 1 and self.hidden_size % self.n_heads == 0,
            "a positive divisor of world.hidden_size",
        )
        _check(source, self, "world.pretrain_epochs", self.pretrain_epochs >= 1, "an integer >= 1")
        _check(source, self, "world.pretrain_batch_size", self.pretrain_batch_size >= 1, "an integer >= 1")
        _check(source, self, "world.pretrain_lr", self.pretrain_lr > 0, "a number > 0")
        _check(source, self, "world.max_length", self.max_length >= 16, "an integer >= 16")


@dataclass
class TrialConfig:
    """Everything one trial trains and measures. No adapter settings apply when method is full."""

    # The base model: unset is the embedded world's (built on first use), else a local Hugging Face
    # directory or a hub id already in the local cache; weights load from safetensors only.
    model: str | None = None
    trust_remote_code: bool = False  # run Python code shipped with the model: only when asked
    dtype: str = "auto"  # weights and compute; auto: bf16 on a GPU that supports it, else fp32
    device: str = "auto"  # auto (the GPU if there is one), cpu, cuda, cuda:N
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    # torch.compile the training forward and backward (evaluation stays eager): faster steps after
    # a compile that each worker pays once per model structure (method, rank, alpha, targets, ...)
    compile: bool = False
    # The user's text (lorasweep/corpus.py): unset is the embedded world's
    domain: str | None = None  # the new knowledge: a file or hub:NAME?config=C&split=S
    general: str | None = None  # general text: replay pool and the forgetting measure
    probes: str | None = None  # questions on the domain: {question, answer} or {prompt, answer}
    text_column: str = "text"
    probe_template: str = "Question: {question}\nAnswer:"
    general_heldout: float = 0.2  # share of general documents held out to measure forgetting
    method: str = "lora"  # full, or an adapter: lora, rslora, dora, qlora (LoRA on a quantised base)
    rank: int = 16
    alpha: float | None = None  # LoRA alpha; if unset, alpha_ratio x rank
    alpha_ratio: float | None = None  # alpha as a multiple of rank (default 2)
    target_modules: str = "all-linear"
    lora_dropout: float = 0.0
    quantization: str = "nf4"  # qlora's base weights (bitsandbytes): 4-bit nf4 or 8-bit int8
    learning_rate: float = 1e-3
    lr_scaling: str = "none"  # scale learning_rate by (batch / reference_batch_size): sqrt or linear
    reference_batch_size: int = 16  # sequences per optimizer step that learning_rate is meant for
    batch_size: int = 16  # sequences per forward pass
    grad_accum: int = 1  # forward passes per optimizer step
    max_length: int = 64  # tokens per packed training sequence
    # Budget: train_tokens, unless max_steps or epochs (passes over the domain text) is given.
    # The same token budget for every method and replay ratio keeps trials comparable.
    train_tokens: int = 150_000
    max_steps: int | None = None
    epochs: float | None = None
    replay_ratio: float = 0.0  # share of training tokens that are general text (replay)
    schedule: str = "cosine"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1  # floor of cosine_with_min_lr, as a share of the peak LR
    decay_ratio: float = 0.2  # share of steps in the final decay of warmup_stable_decay
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    lawa_k: int = 0  # LAWA: average of the last k snapshots, evaluated beside the final weights
    lawa_interval: int = 10  # steps between LAWA snapshots
    eval_points: int = 4  # evaluations of learn and forget during training (learning curves, pruning)
    eval_fraction: float = 0.5  # share of probes and held-out text used by those evaluations
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 means every core
    world: WorldConfig = field(default_factory=WorldConfig)

    def validate(self, source: str) -> None:
        _check_choice(source, "method", self.method, METHODS)
        _check_choice(source, "target_modules", self.target_modules, TARGET_PRESETS)
        _check_choice(source, "quantization", self.quantization, QUANTIZATIONS)
        _check_choice(source, "schedule", self.schedule, SCHEDULES)
        _check_choice(source, "lr_scaling", self.lr_scaling, LR_SCALINGS)
        _check_choice(source, "dtype", self.dtype, DTYPES)
        _check_choice(source, "attn_implementation", self.attn_implementation, ATTENTION)
        _check(
            source,
            self,
            "device",
            bool(DEVICE_PATTERN.fullmatch(self.device)),
            "auto, cpu, cuda or cuda:N",
        )
        _check(
            source,
            self,
            "dtype",
            not (self.dtype == "fp16" and self.method == "full"),
            "fp32 or bf16 with method full (fp16 weights cannot take Adam updates; fp16 is for adapters)",
        )
        _check(
            source,
            self,
            "probe_template",
            "{question}" in self.probe_template,
            "a text containing {question}",
        )
        _check(source, self, "general_heldout", 0 < self.general_heldout < 1, "a number in (0, 1)")
        _check(source, self, "model", self.model is None or self.model.strip() != "", "a directory or hub id")
        _check(source, self, "rank", self.rank >= 1, "an integer >= 1")
        _check(source, self, "alpha", self.alpha is None or self.alpha > 0, "a number > 0")
        _check(source, self, "alpha_ratio", self.alpha_ratio is None or self.alpha_ratio > 0, "a number > 0")
        _check(
            source,
            self,
            "alpha",
            self.alpha is None or self.alpha_ratio is None,
            "set only one of alpha and alpha_ratio",
        )
        _check(source, self, "lora_dropout", 0 <= self.lora_dropout < 1, "a number in [0, 1)")
        _check(source, self, "learning_rate", 0 < self.learning_rate < 1, "a number in (0, 1)")
        _check(source, self, "reference_batch_size", self.reference_batch_size >= 1, "an integer >= 1")
        _check(source, self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        _check(source, self, "grad_accum", self.grad_accum >= 1, "an integer >= 1")
        _check(source, self, "max_length", self.max_length >= 8, "an integer >= 8")
        _check(
            source,
            self,
            "train_tokens",
            self.train_tokens >= self.tokens_per_step,
            "at least one optimizer step of tokens (batch_size x grad_accum x max_length)",
        )
        _check(source, self, "max_steps", self.max_steps is None or self.max_steps >= 1, "an integer >= 1")
        _check(source, self, "epochs", self.epochs is None or self.epochs > 0, "a number > 0")
        _check(
            source,
            self,
            "epochs",
            self.epochs is None or self.max_steps is None,
            "set only one of max_steps and epochs",
        )
        _check(source, self, "replay_ratio", 0 <= self.replay_ratio < 1, "a number in [0, 1)")
        _check(source, self, "warmup_ratio", 0 <= self.warmup_ratio < 1, "a number in [0, 1)")
        _check(source, self, "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]")
        _check(
            source,
            self,
            "decay_ratio",
            0 < self.decay_ratio <= 1 - self.warmup_ratio,
            "a number in (0, 1 - warmup_ratio]",
        )
        _check(source, self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        _check(source, self, "max_grad_norm", self.max_grad_norm >= 0, "a number >= 0")
        _check(source, self, "lawa_k", self.lawa_k >= 0, "an integer >= 0 (0 turns LAWA off)")
        _check(source, self, "lawa_interval", self.lawa_interval >= 1, "an integer >= 1")
        _check(source, self, "eval_points", self.eval_points >= 0, "an integer >= 0")
        _check(source, self, "eval_fraction", 0 < self.eval_fraction <= 1, "a number in (0, 1]")
        _check(source, self, "seed", self.seed >= 0, "an integer >= 0")
        _check(source, self, "threads", 0 <= self.threads < 2**31, "an integer in 0..2**31-1")
        self.world.validate(source)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.max_length

    @property
    def steps(self) -> int:
        """Optimizer steps the token budget buys."""
        return self.train_tokens // self.tokens_per_step

    @property
    def peak_lr(self) -> float:
        """learning_rate scaled from reference_batch_size to this batch (the practice rule)."""
        ratio = self.batch_size * self.grad_accum / self.reference_batch_size
        power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[self.lr_scaling]
        return self.learning_rate * ratio**power

    def resolved(self, domain_tokens: int) -> TrialConfig:
        """The config as a trial records it: alpha and the token budget filled in.

        `domain_tokens` is the size of one pass over the domain text, which `epochs` counts in;
        with replay, that pass is the domain share of the stream.
        """
        config = self
        if config.method in ADAPTER_METHODS and config.alpha is None:
            ratio = 2.0 if config.alpha_ratio is None else config.alpha_ratio
            config = dataclasses.replace(config, alpha=ratio * config.rank, alpha_ratio=None)
        if config.max_steps is not None:
            config = dataclasses.replace(config, train_tokens=config.max_steps * config.tokens_per_step)
        elif config.epochs is not None:
            tokens = config.epochs * domain_tokens / (1 - config.replay_ratio)
            config = dataclasses.replace(config, train_tokens=max(round(tokens), config.tokens_per_step))
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TrialConfig:
        values = _typed_fields(cls, data, source, prefix="")
        if "world" in values:
            values["world"] = WorldConfig(**_typed_fields(WorldConfig, values["world"], source, "world."))
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: Path) -> TrialConfig:
        return cls.from_dict(load_yaml(path), str(path))


def load_yaml(path: Path) -> Any:
    """Read a YAML file, turning every way it can be unreadable into a one-line ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.__class__.__name__}: {err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as err:
        # PyYAML's constructors fail this way on values its parser accepted: a date such as
        # 2020-13-45, `!!int abc`, `!!timestamp 5`, an integer of over 4300 digits; and nesting
        # deeper than Python's recursion limit
        reason = str(err) or err.__class__.__name__
        raise ConfigError(f"{path}: invalid YAML: a value cannot be read ({reason})") from None


def coerce(value: Any, kind: type, source: str, name: str) -> Any:
    """Check one value against a field type; YAML reads `3e-4` as a string, so accept that."""
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }[kind]
    if not ok:
        raise ConfigError(f"{source}: field '{name}' is {value!r}; expected {_type_name(kind)}")
    if kind is int and not -(2**63) <= value < 2**63:  # torch takes sizes and seeds as 64-bit
        raise ConfigError(f"{source}: field '{name}' is out of range; expected an integer in -2**63..2**63-1")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range, e.g. 10**400
            raise ConfigError(f"{source}: field '{name}' is too large; expected a finite number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{source}: field '{name}' is {value!r}; expected a finite number")
    return value


def _typed_fields(cls: type, data: Any, source: str, prefix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        what = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{source}: {what} must be a mapping of field: value")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in hints:
            allowed = ", ".join(hints)
            raise ConfigError(f"{source}: unknown field '{prefix}{key}' (allowed: {allowed})")
        kind = hints[key]
        if kind is WorldConfig:
            values[key] = value
            continue
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            values[key] = None
            continue
        base = next((a for a in args if a is not type(None)), kind)
        values[key] = coerce(value, base, source, prefix + key)
    return values


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def _check(source: str, obj: Any, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        value = getattr(obj, name.rsplit(".", 1)[-1])
        raise ConfigError(f"{source}: field '{name}' is {value!r}; allowed: {allowed}")


def _check_choice(source: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{source}: field '{name}' is {value!r}; allowed: {', '.join(choices)}")
