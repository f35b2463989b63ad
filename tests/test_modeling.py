"""Target-module presets resolve to real modules on every supported architecture, or fail clearly."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
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

from lorasweep.config import TARGET_PRESETS
from lorasweep.modeling import target_modules
from lorasweep.validation import ConfigError

SMALL = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}


def tiny(architecture: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if architecture == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    if architecture == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL, max_position_embeddings=32))
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    config_class, model_class = classes[architecture]
    return model_class(config_class(**SMALL, num_key_value_heads=2, max_position_embeddings=32))


UNAVAILABLE = {("gpt_neox", "qv"), ("gpt2", "qv")}  # fused QKV projections


@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen2", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("preset", TARGET_PRESETS)
def test_presets_resolve_to_modules_the_model_has(architecture, preset):
    model = tiny(architecture)
    if (architecture, preset) in UNAVAILABLE:
        with pytest.raises(ConfigError, match=f"preset '{preset}' cannot be applied to '{architecture}'"):
            target_modules(model, preset)
        return
    names = target_modules(model, preset)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=names))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert adapted, "the preset matched no module"
    # every adapted module is named by the preset, and the output layer is never adapted
    for path in adapted:
        assert any(path == n or path.endswith("." + n) for n in names), path
        assert "lm_head" not in path and "embed_out" not in path
    if preset == "mlp":
        assert all("attn" not in p and "attention" not in p for p in adapted)
    if preset == "attention":
        assert all("mlp" not in p for p in adapted)


def test_unknown_architecture_says_which_are_known():
    model = tiny("llama")
    model.config.model_type = "mamba"
    with pytest.raises(ConfigError, match="no presets for architecture 'mamba' \\(known: llama"):
        target_modules(model, "all-linear")
