"""A trial's whole configuration: one typed object, written as YAML and run again as it is.

Every Optuna trial records its resolved `TrialConfig` as the user attr `config`; the same object,
saved as YAML, runs one trial without Optuna:

    lorasweep run --config trial.yaml

Validation is strict and every error is one line that names the source, the field and what is
allowed, so a typo never costs a sweep.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lorasweep.validation import ConfigError, check, check_types, load_yaml, typed_fields

# The choices of each field, declared once: validation, error messages and the search-space
# checks read them from the field's type.
Method = Literal["full", "lora", "rslora", "dora", "qlora", "peft"]
TargetPreset = Literal["all-linear", "attention", "qv", "mlp"]
Quantization = Literal["nf4", "int8"]
Schedule = Literal["constant", "linear", "cosine", "cosine_with_min_lr", "warmup_stable_decay"]
LrScaling = Literal["none", "sqrt", "linear"]
Dtype = Literal["auto", "fp32", "bf16", "fp16"]
Attention = Literal["sdpa", "eager", "flash_attention_2"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor"]
METHODS = typing.get_args(Method)
ADAPTER_METHODS = tuple(m for m in METHODS if m != "full")
LORA_METHODS = ("lora", "rslora", "dora", "qlora")  # PEFT's LoRA: rank, alpha and the LoRA knobs apply
TARGET_PRESETS = typing.get_args(TargetPreset)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
LORA_INITS = ("default", "gaussian", "orthogonal", "pissa", "olora", "eva", "corda", "lora_ga")
DATA_INITS = ("eva", "corda", "lora_ga")  # initialisations read from the trial's training batches
PISSA_NITER = re.compile(r"pissa_niter_\d+")
# field metadata: the field shapes what `prepare` loads (base model, data, evaluation sets)
PREPARE = {"prepare": True}


def _loaded(default: Any) -> Any:
    """A field that shapes what `prepare` loads: trials that differ in it cannot share a load."""
    return field(default=default, metadata=PREPARE)


@dataclass(frozen=True)
class WorldConfig:
    """The embedded knowledge world and the recipe of its base model (lorasweep/world.py)."""

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

    def __post_init__(self) -> None:
        check_types(self, "world.")
        self._validate()

    def _validate(self) -> None:
        check(self, "world.n_general", self.n_general >= 2, "an integer >= 2")
        check(self, "world.n_domain", self.n_domain >= 1, "an integer >= 1")
        check(self, "world.n_attributes", 1 <= self.n_attributes <= 4, "an integer in 1..4")
        check(self, "world.n_templates", 2 <= self.n_templates <= 4, "an integer in 2..4")
        check(self, "world.bios_per_person", self.bios_per_person >= 1, "an integer >= 1")
        check(self, "world.hidden_size", self.hidden_size >= 8, "an integer >= 8")
        check(self, "world.n_layers", self.n_layers >= 1, "an integer >= 1")
        check(
            self,
            "world.n_heads",
            self.n_heads >= 1 and self.hidden_size % self.n_heads == 0,
            "a positive divisor of world.hidden_size",
        )
        check(self, "world.pretrain_epochs", self.pretrain_epochs >= 1, "an integer >= 1")
        check(self, "world.pretrain_batch_size", self.pretrain_batch_size >= 1, "an integer >= 1")
        check(self, "world.pretrain_lr", self.pretrain_lr > 0, "a number > 0")
        check(self, "world.max_length", self.max_length >= 16, "an integer >= 16")


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial trains and measures. No adapter settings apply when method is full."""

    # The base model: unset is the embedded world's (built on first use), else a local Hugging Face
    # directory or a hub id already in the local cache; weights load from safetensors only.
    model: str | None = _loaded(None)
    trust_remote_code: bool = _loaded(False)  # run Python code shipped with the model: only when asked
    dtype: Dtype = _loaded("auto")  # weights and compute; auto: bf16 on a GPU that supports it, else fp32
    device: str = _loaded("auto")  # auto (the GPU if there is one), cpu, cuda, cuda:N
    attn_implementation: Attention = _loaded("sdpa")
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    # processes the trial runs as, each on its own device, the model fully sharded over them (FSDP2)
    fsdp_shards: int = 1
    # torch.compile the training forward and backward (evaluation stays eager): faster steps after
    # a compile that each worker pays once per model structure (method, rank, alpha, targets, ...)
    compile: bool = False
    # The user's text (lorasweep/corpus.py): unset is the embedded world's
    domain: str | None = _loaded(None)  # the new knowledge: a file or hub:NAME?config=C&split=S
    general: str | None = _loaded(None)  # general text: replay pool and the forgetting measure
    probes: str | None = _loaded(None)  # questions on the domain: {question, answer} or {prompt, answer}
    text_column: str = _loaded("text")
    probe_template: str = _loaded("Question: {question}\nAnswer:")
    # general documents held out to measure forgetting: a share in (0, 1), or a number of documents
    general_heldout: float = _loaded(0.2)
    method: Method = "lora"  # full, or an adapter: lora, rslora, dora, qlora (LoRA on a quantised base), peft
    # method peft: any PEFT method, as PEFT's own config (peft_methods.py), e.g. {peft_type: OFT, r: 8};
    # other methods ignore it, as full FT ignores rank

    peft_config: dict[str, Any] | None = None
    rank: int = 16
    alpha: float | None = None  # LoRA alpha; if unset, alpha_ratio x rank
    alpha_ratio: float | None = None  # alpha as a multiple of rank (default 2)
    target_modules: TargetPreset = "all-linear"
    lora_dropout: float = 0.0
    # how LoRA's matrices start (PEFT's init_lora_weights): default (B = 0), gaussian, orthogonal,
    # from the base weights' singular vectors: pissa, pissa_niter_K (fast SVD, K iterations), olora,
    # or from the trial's training batches: eva, corda, lora_ga
    init_lora_weights: str = "default"
    quantization: Quantization = "nf4"  # qlora's base weights (bitsandbytes): 4-bit nf4 or 8-bit int8
    learning_rate: float = 1e-3
    # adamw (torch), adamw_8bit and paged_adamw_8bit (bitsandbytes), adafactor (transformers)
    optimizer: Optimizer = "adamw"
    loraplus_lr_ratio: float | None = None  # LoRA+: the B matrices' LR as a multiple of learning_rate
    lr_scaling: LrScaling = "none"  # scale learning_rate by (batch / reference_batch_size): sqrt or linear
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
    schedule: Schedule = "cosine"
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
    world: WorldConfig = field(default_factory=WorldConfig, metadata=PREPARE)

    def __post_init__(self) -> None:
        # every config is valid, however it was made (a file, dataclasses.replace, code), and stays
        # so: the dataclass is frozen
        check_types(self, "")
        self._validate()

    def _validate(self) -> None:
        """Ranges and combinations; each error names the field and what is allowed."""
        check(
            self,
            "device",
            bool(DEVICE_PATTERN.fullmatch(self.device)),
            "auto, cpu, cuda or cuda:N",
        )
        check(
            self,
            "dtype",
            not (self.dtype == "fp16" and self.method == "full"),
            "fp32 or bf16 with method full (fp16 weights cannot take Adam updates; fp16 is for adapters)",
        )
        check(
            self,
            "probe_template",
            "{question}" in self.probe_template,
            "a text containing {question}",
        )
        check(
            self,
            "general_heldout",
            0 < self.general_heldout < 1 or (self.general_heldout >= 1 and self.general_heldout.is_integer()),
            "a share in (0, 1) or a number of documents (an integer >= 1)",
        )
        check(self, "model", self.model is None or self.model.strip() != "", "a directory or hub id")
        check(self, "rank", self.rank >= 1, "an integer >= 1")
        check(self, "alpha", self.alpha is None or self.alpha > 0, "a number > 0")
        check(self, "alpha_ratio", self.alpha_ratio is None or self.alpha_ratio > 0, "a number > 0")
        check(
            self,
            "alpha",
            self.alpha is None or self.alpha_ratio is None,
            "set only one of alpha and alpha_ratio",
        )
        check(self, "lora_dropout", 0 <= self.lora_dropout < 1, "a number in [0, 1)")
        check(
            self,
            "init_lora_weights",
            self.init_lora_weights in LORA_INITS or bool(PISSA_NITER.fullmatch(self.init_lora_weights)),
            f"{', '.join(LORA_INITS)} or pissa_niter_K (K fast-SVD iterations)",
        )
        check(
            self,
            "init_lora_weights",
            self.init_lora_weights == "default" or self.method in LORA_METHODS,
            f"default with method {self.method} (it says how a LoRA adapter starts)",
        )
        check(
            self,
            "rank",
            self.init_lora_weights != "orthogonal" or self.rank % 2 == 0,
            "an even number with init_lora_weights orthogonal",
        )
        check(
            self,
            "init_lora_weights",
            self.init_lora_weights in ("default", "gaussian") or self.method != "qlora",
            "default or gaussian with method qlora (PEFT computes the others from the base weights, "
            "which bitsandbytes holds quantised)",
        )
        check(
            self,
            "loraplus_lr_ratio",
            self.loraplus_lr_ratio is None or (self.loraplus_lr_ratio > 0 and self.method in LORA_METHODS),
            "unset, or a number > 0 with a LoRA method (it sets the LR of LoRA's B matrices)",
        )
        check(self, "learning_rate", 0 < self.learning_rate < 1, "a number in (0, 1)")
        check(self, "reference_batch_size", self.reference_batch_size >= 1, "an integer >= 1")
        check(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        check(self, "grad_accum", self.grad_accum >= 1, "an integer >= 1")
        check(self, "max_length", self.max_length >= 8, "an integer >= 8")
        check(
            self,
            "train_tokens",
            self.train_tokens >= self.tokens_per_step,
            "at least one optimizer step of tokens (batch_size x grad_accum x max_length)",
        )
        check(self, "max_steps", self.max_steps is None or self.max_steps >= 1, "an integer >= 1")
        check(self, "epochs", self.epochs is None or self.epochs > 0, "a number > 0")
        check(
            self,
            "epochs",
            self.epochs is None or self.max_steps is None,
            "set only one of max_steps and epochs",
        )
        check(self, "replay_ratio", 0 <= self.replay_ratio < 1, "a number in [0, 1)")
        check(self, "warmup_ratio", 0 <= self.warmup_ratio < 1, "a number in [0, 1)")
        check(self, "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]")
        check(
            self,
            "decay_ratio",
            0 < self.decay_ratio <= 1 - self.warmup_ratio,
            "a number in (0, 1 - warmup_ratio]",
        )
        check(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        check(self, "max_grad_norm", self.max_grad_norm >= 0, "a number >= 0")
        check(self, "lawa_k", self.lawa_k >= 0, "an integer >= 0 (0 turns LAWA off)")
        check(self, "lawa_interval", self.lawa_interval >= 1, "an integer >= 1")
        check(self, "eval_points", self.eval_points >= 0, "an integer >= 0")
        check(self, "eval_fraction", 0 < self.eval_fraction <= 1, "a number in (0, 1]")
        check(self, "seed", self.seed >= 0, "an integer >= 0")
        check(self, "threads", 0 <= self.threads < 2**31, "an integer in 0..2**31-1")
        self._validate_sharding()
        check(
            self,
            "peft_config",
            self.peft_config is not None or self.method != "peft",
            "a mapping with peft_type with method peft (PEFT's config of the method)",
        )
        if self.method == "peft":
            from lorasweep.peft_methods import check as check_peft

            check_peft(self.peft_config)

    def _validate_sharding(self) -> None:
        """What FSDP2 sharding (sharding.py) can run: each error names what to change instead."""
        check(self, "fsdp_shards", self.fsdp_shards >= 1, "an integer >= 1")
        if self.fsdp_shards == 1:
            return
        shards = f"with fsdp_shards {self.fsdp_shards}"
        check(
            self,
            "batch_size",
            self.batch_size % self.fsdp_shards == 0,
            f"a multiple of fsdp_shards ({self.fsdp_shards}): each shard trains an equal part of every batch",
        )
        check(
            self,
            "optimizer",
            self.optimizer == "adamw",
            f"adamw {shards} (bitsandbytes' and Adafactor's steps take whole tensors, not FSDP2's shards)",
        )
        check(
            self,
            "method",
            self.method not in ("qlora", "peft"),
            f"full, lora, rslora or dora {shards} (no 4-bit shards; other PEFT methods untried)",
        )
        check(self, "dtype", self.dtype != "fp16", f"auto, fp32 or bf16 {shards}")
        check(self, "compile", not self.compile, f"false {shards}")
        check(self, "lawa_k", self.lawa_k == 0, f"0 {shards} (LAWA averages unsharded snapshots)")
        check(
            self,
            "device",
            self.device in ("auto", "cpu", "cuda"),
            f"auto, cpu or cuda {shards}: shard k runs on cuda:k of the visible GPUs (--devices)",
        )

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
        if config.method in LORA_METHODS and config.alpha is None:
            ratio = 2.0 if config.alpha_ratio is None else config.alpha_ratio
            config = dataclasses.replace(config, alpha=ratio * config.rank, alpha_ratio=None)
        if config.max_steps is not None:
            config = dataclasses.replace(config, train_tokens=config.max_steps * config.tokens_per_step)
        elif config.epochs is not None:
            tokens = config.epochs * domain_tokens / (1 - config.replay_ratio)
            config = dataclasses.replace(config, train_tokens=max(round(tokens), config.tokens_per_step))
        return config

    def prepare_fields(self) -> dict[str, Any]:
        """The fields that shape what `prepare` loads: trials that agree on them share it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("prepare")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: Path) -> None:
        write_trial_yaml(self.to_dict(), path)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TrialConfig:
        """The config a mapping (a YAML file, a recorded trial) describes; errors name `source`."""
        values = typed_fields(cls, data, source, prefix="")
        world = typed_fields(WorldConfig, values["world"], source, "world.") if "world" in values else None
        try:
            if world is not None:
                values["world"] = WorldConfig(**world)
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: Path) -> TrialConfig:
        return cls.from_dict(load_yaml(path), str(path))


def write_trial_yaml(fields: dict[str, Any], path: Path) -> None:
    """A trial's config as `trial.yaml`, the file `lorasweep run --config` takes (every writer's)."""
    Path(path).write_text(yaml.safe_dump(fields, sort_keys=False))
