"""Base model in, trial model out: full fine-tuning or a PEFT LoRA adapter, on one code path.

The base model is loaded once per process through `from_pretrained` (safetensors only, no remote
code); each trial gets a deep copy of it in memory, so no trial reloads from disk and none sees
another's weights. No adapter config means full fine-tuning, as in PEFT's method_comparison.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from lorasweep.config import ConfigError, TrialConfig

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


def load_base(path: Path, device: str = "cpu"):
    """The base model (eval mode, float32) and its tokenizer, from a Hugging Face directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
    return model.to(device).eval(), tokenizer


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
    base: torch.nn.Module, config: TrialConfig, base_dir: Path
) -> tuple[torch.nn.Module, list[str]]:
    """A fresh trainable model for this trial, and the module names the adapter was put on.

    Full FT and LoRA variants start from a deep copy of the in-memory base. QLoRA needs the base
    quantised at load time, so it loads `base_dir` again with a bitsandbytes config.
    """
    if config.method == "full":
        model = copy.deepcopy(base).train()
        for p in model.parameters():
            p.requires_grad_(True)
        return model, []
    from peft import LoraConfig, get_peft_model

    modules = target_modules(base, config.target_modules)
    if config.method == "qlora":
        model = load_quantized(base_dir, config.quantization, next(base.parameters()).device)
    else:
        model = copy.deepcopy(base)
    model.train()
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules,
        use_rslora=config.method == "rslora",
        use_dora=config.method == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), modules


def load_quantized(path: Path, quantization: str, device: torch.device) -> torch.nn.Module:
    """The base with its linear layers in 4-bit NF4 or 8-bit (bitsandbytes), the rest in fp32."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quantization == "nf4":
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, dtype=torch.float32, quantization_config=quant, device_map=str(device)
    )


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights as stored (4-bit and 8-bit weights count as packed)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_counts(model: torch.nn.Module, base: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; total is the base's count plus any adapter.

    Counting from the unquantised base keeps QLoRA honest: bitsandbytes stores 4-bit weights
    packed, so their tensors hold fewer elements than the layer has parameters.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_total = sum(p.numel() for p in base.parameters())
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return trainable, base_total + adapter
