"""Base model in, trial model out: full fine-tuning or a PEFT LoRA adapter, on one code path.

The base model is loaded once per process through `from_pretrained` (safetensors only, no remote
code); each trial gets a deep copy of it in memory, so no trial reloads from disk and none sees
another's weights. No adapter config means full fine-tuning, as in PEFT's method_comparison.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

from lorasweep.config import TrialConfig
from lorasweep.validation import ConfigError

# Target-module presets per architecture. A preset an architecture cannot express (q,v only on a
# fused QKV projection) is absent, and asking for it is an error, never a silent substitute.
# Names are suffixes PEFT matches on module paths ("attn.c_proj" is GPT-2's attention output only).
_LLAMA_LIKE = {
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qv": ["q_proj", "v_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
TARGET_MODULES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gpt_neox": {
        "all-linear": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        "attention": ["query_key_value", "attention.dense"],
        "mlp": ["dense_h_to_4h", "dense_4h_to_h"],
    },
    "gpt2": {
        "all-linear": ["c_attn", "c_proj", "c_fc"],
        "attention": ["attn.c_attn", "attn.c_proj"],
        "mlp": ["mlp.c_fc", "mlp.c_proj"],
    },
}


CPU = torch.device("cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when there is one; asking for a GPU that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        found = torch.cuda.device_count()
        raise ConfigError(
            f"field 'device' is '{name}'; this machine has {found} CUDA device(s) (allowed: auto, cpu)"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU that supports it (the mixed-precision default of the field), else fp32."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[name]


def load_base(
    source: str | Path,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
):
    """The base model (eval mode, on the CPU, in `dtype`) and its tokenizer.

    `source` is a local Hugging Face directory or a hub id already in the local cache: nothing is
    downloaded. Weights load from safetensors only (no pickle), remote code only when asked.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    local = Path(source).is_dir()
    where = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    try:
        config = AutoConfig.from_pretrained(source, **where)
    except (OSError, ValueError) as err:
        if local:
            raise ConfigError(f"model '{source}': cannot read its config.json ({_first_line(err)})") from None
        raise ConfigError(
            f"model '{source}': no such directory, and not a hub id in the local Hugging Face cache "
            "(nothing is downloaded: fetch it first with `hf download`)"
        ) from None
    remote = trust_remote_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not remote:
        raise ConfigError(
            f"model '{source}': '{config.model_type}' is not a causal language model architecture"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **where)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"model '{source}': cannot load its tokenizer ({_first_line(err)})") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"model '{source}': the tokenizer has no EOS token (needed to end documents and answers)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out, so any id does
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            attn_implementation=attn_implementation,
            **where,
        )
    except (OSError, ImportError, ValueError) as err:
        raise ConfigError(f"model '{source}': cannot load safetensors weights ({_first_line(err)})") from None
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise ConfigError(
            f"model '{source}': its tokenizer has {len(tokenizer)} tokens, more than the model's {embeddings} embeddings"
        )
    return model.eval(), tokenizer


def weights_fingerprint(source: str | Path) -> str:
    """sha256 of the base model's safetensors files, so a re-run can tell that the weights changed."""
    path = Path(source)
    if not path.is_dir():  # a hub id: its snapshot in the local cache
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(source), local_files_only=True))
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [err.__class__.__name__])[0]


def target_modules(model: torch.nn.Module, preset: str) -> list[str]:
    """The module names a preset means for this model's architecture."""
    model_type = model.config.model_type
    presets = TARGET_MODULES.get(model_type)
    if presets is None:
        raise ConfigError(
            f"target_modules: no presets for architecture '{model_type}' (known: {', '.join(TARGET_MODULES)})"
        )
    if preset not in presets:
        raise ConfigError(
            f"target_modules: preset '{preset}' cannot be applied to '{model_type}' "
            f"(available there: {', '.join(presets)})"
        )
    return presets[preset]


def trial_model(
    base: torch.nn.Module,
    config: TrialConfig,
    base_dir: str | Path,
    device: torch.device = CPU,
    init_batches: Iterable[torch.Tensor] | None = None,
    own_base: bool = False,
) -> tuple[torch.nn.Module, list[str]]:
    """A fresh trainable model for this trial on `device`, and the module names the adapter was put on.

    Full FT and LoRA variants start from a deep copy of the in-memory base (kept on the CPU, so the
    accelerator holds only the trial's model); with `own_base`, from the base itself, which the
    trial then changes (a shard process, which runs one trial: no second copy of the model in its
    memory). QLoRA needs the base quantised at load time, so it
    loads `base_dir` again with a bitsandbytes config. A data-driven initialisation (`eva`) reads
    `init_batches`, the first batches of the trial's own training stream; without them (a model
    rebuilt to receive trained weights) the adapter is left as PEFT creates it.
    """
    if config.method == "full":
        model = _fresh(base, device, own_base).train()
        for p in model.parameters():
            p.requires_grad_(True)
        return _checkpointed(model, config), []
    from peft import EvaConfig, LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig, LoraGAConfig

    modules = target_modules(base, config.target_modules)
    if config.method == "peft":
        return _other_peft_method(base, config, modules, device, own_base)
    _check_rank(base, modules, config.rank)
    if config.method == "qlora":
        model = load_quantized(base_dir, config, base.dtype, device)
    else:
        model = _fresh(base, device, own_base)
    model.train()
    init = config.init_lora_weights
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules,
        use_rslora=config.method == "rslora",
        use_dora=config.method == "dora",
        init_lora_weights=True if init == "default" else init,
        # EVA keeps the configured rank on every layer (rho 1): the rank stays the knob it is
        eva_config=EvaConfig(rho=1.0) if init == "eva" else None,
        # CorDA's instruction-previewed mode: the adapter in the directions the training data uses
        corda_config=CordaConfig(corda_method="ipm") if init == "corda" else None,
        lora_ga_config=LoraGAConfig() if init == "lora_ga" else None,
        task_type="CAUSAL_LM",
    )
    try:
        model = _checkpointed(model, config)
        if init in ("corda", "lora_ga"):
            _preprocess(model, lora, init, init_batches)
        model = get_peft_model(model, lora)
        if init == "eva" and init_batches is not None:
            _eva(model, init_batches)
        return model.train(), modules  # CorDA's preprocessing leaves the base in eval mode
    except (ValueError, NotImplementedError) as err:
        if config.init_lora_weights == "default":
            raise
        raise ConfigError(  # an initialisation PEFT refuses for this model or method
            f"field 'init_lora_weights' is '{config.init_lora_weights}'; PEFT refuses it with method "
            f"{config.method}: {_first_line(err)}"
        ) from None


def _fresh(base: torch.nn.Module, device: torch.device, own_base: bool) -> torch.nn.Module:
    """The trial's model before any adapter: a copy of the base on `device`, or the base itself."""
    return (base if own_base else copy.deepcopy(base)).to(device)


def _other_peft_method(
    base: torch.nn.Module, config: TrialConfig, presets: list[str], device: torch.device, own_base: bool
) -> tuple[torch.nn.Module, list[str]]:
    """`method: peft`: PEFT's method of `peft_config` (peft_methods.py) on a copy of the base."""
    from peft import get_peft_model

    from lorasweep.peft_methods import build

    peft_config = build(config.peft_config, presets)
    model = _fresh(base, device, own_base).train()
    kind = config.peft_config["peft_type"]
    try:
        model = get_peft_model(_checkpointed(model, config), peft_config)
    except (ValueError, NotImplementedError, TypeError, KeyError, AttributeError) as err:
        raise ConfigError(
            f"field 'peft_config': PEFT cannot put {kind} on this model: {_first_line(err)}"
        ) from None
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"field 'peft_config': {kind} with these options leaves nothing to train")
    targets = model.peft_config["default"].target_modules
    return model.train(), sorted(targets) if isinstance(targets, (set, list)) else [str(targets)]


def _eva(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """EVA (arXiv 2410.07170): each adapted layer's A from the top singular vectors of its inputs on
    the given training batches (packed rows: every position counts)."""
    from peft import initialize_lora_eva_weights

    device = next(model.parameters()).device
    data = [{"input_ids": b.to(device), "attention_mask": torch.ones_like(b, device=device)} for b in batches]
    # each shard of a sharded trial sees the same batches: nothing to gather across processes
    initialize_lora_eva_weights(
        model, dataloader=data, show_progress_bar=False, gather_distributed_inputs=False
    )


def _preprocess(model: torch.nn.Module, lora, init: str, batches: Iterable[torch.Tensor] | None) -> None:
    """CorDA (arXiv 2406.05223) from the covariance of each layer's inputs, LoRA-GA (arXiv
    2407.05000) from the gradients of the loss, on the given training batches: both read the
    batches before the adapter exists and change the base weights (as PiSSA does)."""
    if batches is None:
        raise ValueError(f"init_lora_weights '{init}' needs the trial's training batches")
    batches = list(batches)
    device = next(model.parameters()).device

    def run_model() -> None:  # CorDA's hooks take one row at a time
        with torch.no_grad():
            for row in torch.cat(batches):
                model(input_ids=row[None].to(device))

    def train_step() -> None:
        for b in batches:
            model(input_ids=b.to(device), labels=b.to(device)).loss.backward()

    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        preprocess_corda(model, lora, run_model=run_model)
    else:
        from peft.tuners.lora.loraga import preprocess_loraga

        preprocess_loraga(model, lora, train_step=train_step)


def _check_rank(base: torch.nn.Module, modules: list[str], rank: int) -> None:
    """A LoRA update of a layer has rank at most min(in, out): a larger rank is a mistake, not a choice."""
    widths = {
        name.rsplit(".", 1)[-1]: min(layer.weight.shape)
        for name, layer in base.named_modules()
        if name.rsplit(".", 1)[-1] in modules and hasattr(layer, "weight")
    }
    narrowest = min(widths, key=widths.get, default=None)
    if narrowest is not None and rank > widths[narrowest]:
        raise ConfigError(
            f"rank {rank} is above what a LoRA update of '{narrowest}' can have: at most "
            f"min(in, out) = {widths[narrowest]} on this model"
        )


def _checkpointed(model: torch.nn.Module, config: TrialConfig) -> torch.nn.Module:
    if config.gradient_checkpointing:
        # non-reentrant checkpointing needs no input that requires grad, so frozen embeddings work
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_quantized(
    path: str | Path, config: TrialConfig, dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    """The base with its linear layers in 4-bit NF4 or 8-bit (bitsandbytes), the rest in `dtype`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if config.quantization == "nf4":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        use_safetensors=True,
        dtype=dtype,
        quantization_config=quant,
        device_map=str(device),
        trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
        local_files_only=True,
    )
    _plain_cpu_4bit(model)
    return model


def _plain_cpu_4bit(model: torch.nn.Module) -> None:
    """4-bit layers take bitsandbytes' portable CPU path on every CPU.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights at the first forward without
    gradients (our evaluations), which fails unless every output width is a multiple of 32 and the
    `kernels` package can fetch its kernel from the Hugging Face hub; the portable path trains and
    evaluates the same trial on any CPU, so a study's QLoRA trials reproduce across machines.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights as stored (4-bit and 8-bit weights count as packed)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_counts(model: torch.nn.Module, base_total: int) -> tuple[int, int]:
    """(trainable, total) parameters; total is the base's count (`base_total`, taken from the base
    before the trial's model was made of it) plus any adapter.

    Counting from the unquantised base keeps QLoRA honest: bitsandbytes stores 4-bit weights
    packed, so their tensors hold fewer elements than the layer has parameters.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter = trainable if hasattr(model, "peft_config") else 0  # an adapter's are all its own
    return trainable, base_total + adapter
