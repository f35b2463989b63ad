"""How much device memory a trial will take, estimated before anything is loaded.

The estimate is read from the model's config alone (its parameters laid out on PyTorch's meta
device, which allocates nothing) and the trial's config. On a GPU, a trial whose estimate exceeds
the free memory fails at once with a line that says which fields would make it fit, rather than
after minutes of loading; every trial records its estimate beside its measured peak
(`memory_estimate_bytes`, `peak_mem_bytes`), and BENCHMARKS.md compares the two.

Bytes per device, for a compute dtype of `e` bytes and `S` = fsdp_shards:
- weights: every parameter in the dtype (QLoRA: every linear weight but the output layer's 4-bit
  with an fp32 scale per 64, or 8-bit), adapters in fp32 (PEFT keeps them so); sharded: / S, plus
  what FSDP2 gathers whole at a time (the root's own weights, a decoder layer and the next);
- gradients: one per trainable parameter, in its dtype; / S;
- optimizer states: from each trainable tensor's shape, as the optimizers hold them (optimizers.py):
  AdamW two per parameter in its dtype, 8-bit AdamW two bytes and a scale per 256 (tensors under
  4,096 elements: two fp32), Adafactor a row and a column vector per matrix in fp32; / S;
- activations of one micro-batch (batch_size / S rows of max_length tokens) saved for backward,
  per token of a decoder layer: the two RMSNorms (an fp32 copy and the output), the inputs of the
  projections, SDPA's q, k, v and output, and the MLP's gate, up, product and activation, about
  8h + 9eh + 4ei bytes (h hidden size, i intermediate size, k/v narrower under grouped-query
  attention; counted in Llama's layer, an estimate for others); eager attention adds the scores;
  an adapted module keeps its input cast to fp32 and its rank-r product; gradient checkpointing
  keeps each layer's input alone and recomputes one layer at a time (counted three times: its
  backward's temporaries, as measured); the logits take (e + 8) bytes per vocabulary entry (fp32
  copy and log-softmax for the loss). DoRA's weight-sized temporaries are not counted.

CorDA and LoRA-GA read training batches before training (`initialising`): CorDA holds an fp32
covariance of each adapted layer's inputs (in x in) all at once, LoRA-GA each adapted weight's
gradient and a batch's activations (details in _initialising); the peak is the larger of that
(beside the weights) and training's.

Training's peak = weights + optimizer states + the larger of activations and gradients: backward
frees a layer's activations as it fills that layer's gradients, and each step frees the gradients
(`zero_grad(set_to_none=True)`) before the next forward; with grad_accum > 1 the gradients are held
while the next micro-batch's activations are saved, so both count. Evaluation (no gradients, up to
128 rows a batch, run a few rows at a time where their fp32 logits would pass 512 MiB:
evaluate.EVAL_LOGITS_BYTES) is not counted. BENCHMARKS.md ("Memory estimate") compares the
estimate with the live tensors of trials.
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
    accumulating: bool = False  # grad_accum > 1: gradients are held while activations are saved
    initialising: int = 0  # what a data-driven init holds beside the weights before training (CorDA, LoRA-GA)

    @property
    def training(self) -> int:
        if self.accumulating:
            return self.weights + self.optimizer + self.gradients + self.activations
        return self.weights + self.optimizer + max(self.activations, self.gradients)

    @property
    def total(self) -> int:
        return max(self.training, self.weights + self.initialising)

    def parts(self) -> dict[str, int]:
        return {
            k: v
            for k, v in asdict(self).items()
            if k != "accumulating" and (k != "initialising" or v)  # most trials have no init part
        }

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
    if config.method == "peft":  # any PEFT method: its trainable tensors, as PEFT lays them out
        adapted = {}
        trainable, weights = _peft_layout(meta, config, e)
    elif config.method == "full":
        adapted: dict[str, tuple[int, int]] = {}
        trainable = [(p.shape, e) for p in params.values()]
        weights = sum(p.numel() for p in params.values()) * e
    else:
        adapted = _adapted_linears(meta, config)
        trainable = [((config.rank, n_in), 4) for n_in, _ in adapted.values()]
        trainable += [((n_out, config.rank), 4) for _, n_out in adapted.values()]
        if config.method == "dora":
            trainable += [((n_out,), 4) for _, n_out in adapted.values()]
        quantised = _quantised(meta) if config.method == "qlora" else set()
        per_quantised = 0.5 + 4 / 64 if config.quantization == "nf4" else 1.0
        weights = sum(p.numel() * (per_quantised if n in quantised else e) for n, p in params.items())
        weights += sum(math.prod(shape) * size for shape, size in trainable)
    gradients = sum(math.prod(shape) * size for shape, size in trainable)
    optimizer = sum(_state_bytes(shape, size, config.optimizer) for shape, size in trainable)
    if shards > 1:
        # gathered whole at a time: the root's own weights (FSDP2 keeps them after the forward) and
        # a decoder layer with the next one prefetched
        sizes = sorted(sum(p.numel() for p in layer.parameters()) for layer in _layers(meta))
        root = sum(p.numel() for p in params.values()) - sum(sizes)
        gathered = (root + sum(sizes[-2:])) * e
        weights, gradients, optimizer = weights // shards + gathered, gradients // shards, optimizer // shards
    return MemoryEstimate(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(_activations(config, base_config, adapted, e)),
        accumulating=config.grad_accum > 1,
        initialising=int(_initialising(config, base_config, adapted, e)) if shards == 1 else 0,
    )


def _initialising(config: TrialConfig, base_config: Any, adapted: dict[str, tuple[int, int]], e: int) -> int:
    """What CorDA or LoRA-GA holds beside the weights while it initialises (PEFT 0.21; a sharded
    trial's shards do it on the CPU): CorDA an fp32 covariance of each adapted layer's inputs, all
    at once, and one layer's decomposition in fp32 (about 5 in x in and 3 in x out); LoRA-GA each
    adapted weight's gradient (averaged and freed a layer at a time), a batch's activations, and
    one layer's fp32 copies while it splits the gradient."""
    if not adapted:
        return 0
    if config.init_lora_weights == "corda":
        covariances = sum(n_in * n_in * 4 for n_in, _ in adapted.values())
        return covariances + max((5 * n_in + 3 * n_out) * n_in * 4 for n_in, n_out in adapted.values())
    if config.init_lora_weights == "lora_ga":
        gradients = sum(n_in * n_out * e for n_in, n_out in adapted.values())
        layer = max(n_in * n_out * (e + 12) for n_in, n_out in adapted.values())
        return gradients + layer + _activations(config, base_config, {}, e)
    return 0


def check_fits(estimated: MemoryEstimate, config: TrialConfig, device: torch.device) -> None:
    """On a GPU, a one-line ConfigError when the trial will not fit the device's free memory (what
    the driver has free, and what this process's allocator holds unused)."""
    if device.type != "cuda":
        return
    free = torch.cuda.mem_get_info(device)[0]
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if estimated.total <= free:
        return
    fixes = ["a smaller batch_size (with grad_accum for the same step) or max_length"]
    if estimated.weights + estimated.initialising > estimated.training:  # the init is what does not fit
        fixes.insert(
            0, f"another init_lora_weights ({config.init_lora_weights} takes the most to initialise)"
        )
    if not config.gradient_checkpointing:
        fixes.append("gradient_checkpointing: true")
    if config.method == "full":
        fixes.append("a LoRA method")
    if config.optimizer == "adamw" and config.fsdp_shards == 1:
        fixes.append("optimizer: adamw_8bit")
    if _can_shard(config):
        fixes.append(f"fsdp_shards: {config.fsdp_shards * 2}")
    raise ConfigError(
        f"trial needs {estimated.describe()} on {device}, which has {free / GiB:.1f} GiB free; "
        f"try {', '.join(fixes)}"
    )


def _can_shard(config: TrialConfig) -> bool:
    """Whether the trial could run sharded (config._validate_sharding allows it)."""
    import dataclasses

    try:
        dataclasses.replace(config, fsdp_shards=2, batch_size=2 * config.batch_size)
    except ConfigError:
        return False
    return True


def _quantised(meta: torch.nn.Module) -> set[str]:
    """The weights bitsandbytes quantises when transformers loads the model: every linear layer's
    but the output embedding's."""
    head = meta.get_output_embeddings()
    return {
        f"{name}.weight"
        for name, module in meta.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }


def _peft_layout(meta: torch.nn.Module, config: TrialConfig, e: int) -> tuple[list, int]:
    """(trainable shapes and element sizes, weights' bytes) of `method: peft` on the meta model."""
    from peft import get_peft_model

    from lorasweep.modeling import target_modules
    from lorasweep.peft_methods import build

    model = get_peft_model(meta, build(config.peft_config, target_modules(meta, config.target_modules)))
    trainable = [(p.shape, p.element_size()) for p in model.parameters() if p.requires_grad]
    return trainable, sum(p.numel() * p.element_size() for p in model.parameters())


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


def _state_bytes(shape: tuple[int, ...], size: int, optimizer: str) -> int:
    """What the optimizer keeps for one trainable tensor (bytes)."""
    n = math.prod(shape)
    if optimizer == "adamw":
        return 2 * n * size + 4  # exp_avg, exp_avg_sq and an fp32 step
    if optimizer == "adafactor":  # factored moments and an RMS, in fp32 whatever the weights' dtype
        return (sum(shape[-2:]) if len(shape) >= 2 else n) * 4 + 4
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
    head_dim = getattr(text, "head_dim", None) or h // heads
    q_width = heads * head_dim
    kv_width = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    tokens = config.batch_size // config.fsdp_shards * config.max_length
    # RMSNorms 2 x (fp32 copy + output), the inputs of q/k/v, o and the MLP, SDPA's q, k, v and
    # output, the MLP's gate, up, product and activation
    per_layer = 8 * h + 2 * e * h + 2 * e * h + 3 * e * q_width + 2 * e * kv_width + 4 * e * i
    if config.attn_implementation == "eager":
        per_layer += heads * config.max_length * (e + 4)
    if adapted:  # spread over the layers: the adapters' own saved tensors
        cast = 4 if e != 4 else 0
        per_layer += sum(n_in * cast + config.rank * 4 for n_in, _ in adapted.values()) / layers
    # under checkpointing, each layer's input, and one layer recomputed with its backward's
    # temporaries (about twice its activations again, as measured: BENCHMARKS.md)
    kept = layers * h * e + 3 * per_layer if config.gradient_checkpointing else layers * per_layer
    return tokens * (kept + vocab * (e + 8))
