"""How much device memory a trial will take, estimated before anything is loaded.

The estimate is read from the model's config alone (its parameters laid out on PyTorch's meta
device, which allocates nothing) and the trial's config. On a GPU, a trial whose estimate exceeds
the free memory fails at once with a line that says which fields would make it fit, rather than
after minutes of loading; every trial records its estimate beside its measured peak
(`memory_estimate_bytes`, `peak_mem_bytes`), and BENCHMARKS.md compares the two.

Bytes per device, for a compute dtype of `e` bytes and `S` = fsdp_shards:
- weights: every parameter in the dtype (QLoRA: the adapted linear weights 4-bit with an fp32
  scale per 64, or 8-bit), adapters in fp32 (PEFT keeps them so); sharded: / S, plus one decoder
  layer gathered whole;
- gradients: one per trainable parameter, in its dtype; / S;
- optimizer states: from each trainable tensor's shape, as the optimizers hold them (optimizers.py):
  AdamW two per parameter in its dtype, 8-bit AdamW two bytes and a scale per 256 (tensors under
  4,096 elements: two fp32), Adafactor a row and a column vector per matrix; / S;
- activations of one micro-batch (batch_size / S rows of max_length tokens) saved for backward,
  per token of a decoder layer: the two RMSNorms (an fp32 copy and the output), the inputs of the
  projections, SDPA's q, k, v and output, and the MLP's gate, up, product and activation, about
  8h + 9eh + 4ei bytes (h hidden size, i intermediate size; counted in Llama's layer, an estimate
  for others); eager attention adds the score matrix; an adapted module keeps its input cast to
  fp32 and its rank-r product; gradient checkpointing keeps each layer's input alone and
  recomputes one layer at a time; the logits take (e + 8) bytes per vocabulary entry (fp32 copy
  and log-softmax for the loss).

Peak = weights + optimizer states + the larger of activations and gradients: backward frees a
layer's activations as it fills that layer's gradients, and each step frees the gradients
(`zero_grad(set_to_none=True)`) before the next forward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lorasweep.config import TrialConfig
from lorasweep.validation import ConfigError

GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes per device, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + max(self.activations, self.gradients)

    def parts(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GiB:.1f}" for name, value in self.parts().items())
        return f"about {self.total / GiB:.1f} GiB ({parts})"


def model_config(config: TrialConfig) -> Any:
    """The transformers config of the trial's base model, read without loading any weight."""
    if config.model is None:
        from lorasweep.world import model_config as world_model_config

        return world_model_config(config.world)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        config.model, trust_remote_code=config.trust_remote_code, local_files_only=True
    )


def estimate(config: TrialConfig, base_config: Any, dtype: torch.dtype) -> MemoryEstimate:
    """The trial's memory per device, for a base of `base_config` in `dtype` (see the module doc)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(
            base_config, trust_remote_code=config.trust_remote_code, dtype=dtype
        )
    e = torch.tensor([], dtype=dtype).element_size()
    shards = config.fsdp_shards
    params = dict(meta.named_parameters())
    if config.method == "full":
        adapted: dict[str, tuple[int, int]] = {}
        trainable = [(p.shape, e) for p in params.values()]
        weights = sum(p.numel() for p in params.values()) * e
    else:
        adapted = _adapted_linears(meta, config)
        trainable = [((config.rank, n_in), 4) for n_in, _ in adapted.values()]
        trainable += [((n_out, config.rank), 4) for _, n_out in adapted.values()]
        if config.method == "dora":
            trainable += [((n_out,), 4) for _, n_out in adapted.values()]
        weights = sum(p.numel() * _stored_bytes(name, config, adapted, e) for name, p in params.items())
        weights += sum(math.prod(shape) * size for shape, size in trainable)
    gradients = sum(math.prod(shape) * size for shape, size in trainable)
    optimizer = sum(_state_bytes(shape, size, config.optimizer) for shape, size in trainable)
    if shards > 1:
        gathered = max(sum(p.numel() for p in layer.parameters()) for layer in _layers(meta)) * e
        weights, gradients, optimizer = weights // shards + gathered, gradients // shards, optimizer // shards
    return MemoryEstimate(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(_activations(config, base_config, adapted, e)),
    )


def check_fits(estimated: MemoryEstimate, config: TrialConfig, device: torch.device) -> None:
    """On a GPU, a one-line ConfigError when the trial will not fit the device's free memory."""
    if device.type != "cuda":
        return
    free = torch.cuda.mem_get_info(device)[0]
    if estimated.total <= free:
        return
    fixes = ["a smaller batch_size (with grad_accum for the same step) or max_length"]
    if not config.gradient_checkpointing:
        fixes.append("gradient_checkpointing: true")
    if config.optimizer in ("adamw", "adafactor") or config.method == "full":
        fixes.append("optimizer: adamw_8bit" if config.optimizer == "adamw" else "a LoRA method")
    fixes.append(f"fsdp_shards: {config.fsdp_shards * 2} (GPUs from --devices)")
    raise ConfigError(
        f"trial needs {estimated.describe()} on {device}, which has {free / GiB:.1f} GiB free; "
        f"try {', '.join(fixes)}"
    )


def _adapted_linears(meta: torch.nn.Module, config: TrialConfig) -> dict[str, tuple[int, int]]:
    """name -> (in, out) of each linear layer the adapter is put on."""
    from lorasweep.modeling import target_modules

    targets = target_modules(meta, config.target_modules)
    found = {}
    for name, module in meta.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and hasattr(module, "weight"):
            shape = module.weight.shape  # GPT-2's Conv1D stores (in, out), a Linear (out, in)
            n_in, n_out = (shape[0], shape[1]) if type(module).__name__ == "Conv1D" else (shape[1], shape[0])
            found[name] = (n_in, n_out)
    return found


def _stored_bytes(name: str, config: TrialConfig, adapted: dict[str, tuple[int, int]], e: int) -> float:
    """Bytes per parameter of the base as stored: QLoRA quantises the linear layers it adapts."""
    if config.method != "qlora" or name.removesuffix(".weight") not in adapted:
        return e
    return 0.5 + 4 / 64 if config.quantization == "nf4" else 1.0


def _state_bytes(shape: tuple[int, ...], size: int, optimizer: str) -> int:
    """What the optimizer keeps for one trainable tensor (bytes)."""
    n = math.prod(shape)
    if optimizer == "adamw":
        return 2 * n * size + 4  # exp_avg, exp_avg_sq and an fp32 step
    if optimizer == "adafactor":
        return (sum(shape[-2:]) if len(shape) >= 2 else n) * size + 4  # factored moments and an RMS
    if n < 4096:  # bitsandbytes keeps 32-bit states for small tensors
        return 2 * n * 4
    # uint8 states, an fp32 scale per block of 256, and each state's 256-entry quantisation map
    return 2 * n + 2 * math.ceil(n / 256) * 4 + 2 * 256 * 4


def _layers(meta: torch.nn.Module) -> list[torch.nn.Module]:
    from lorasweep.sharding import decoder_layers

    return list(decoder_layers(meta))


def _activations(config: TrialConfig, base: Any, adapted: dict[str, tuple[int, int]], e: int) -> float:
    text = base.get_text_config() if hasattr(base, "get_text_config") else base
    h = text.hidden_size
    i = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * h
    layers, heads, vocab = text.num_hidden_layers, text.num_attention_heads, text.vocab_size
    tokens = config.batch_size // config.fsdp_shards * config.max_length
    per_layer = 8 * h + 9 * e * h + 4 * e * i
    if config.attn_implementation == "eager":
        per_layer += heads * config.max_length * (e + 4)
    if adapted:  # spread over the layers: the adapters' own saved tensors
        cast = 4 if e != 4 else 0
        per_layer += sum(n_in * cast + config.rank * 4 for n_in, _ in adapted.values()) / layers
    kept = layers * h * e + per_layer if config.gradient_checkpointing else layers * per_layer
    return tokens * (kept + vocab * (e + 8))
