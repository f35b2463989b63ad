"""Target-module presets resolve to real modules on every supported architecture, or fail clearly."""

import pytest
import torch
from conftest import ARCHITECTURES, tiny_model
from peft import LoraConfig, get_peft_model

from lorasweep.config import TARGET_PRESETS, TrialConfig
from lorasweep.modeling import target_modules, trial_model
from lorasweep.validation import ConfigError


def tiny(architecture: str) -> torch.nn.Module:
    return tiny_model(architecture, hidden=16, positions=32, vocab_size=32)


UNAVAILABLE = {("gpt_neox", "qv"), ("gpt2", "qv")}  # fused QKV projections


@pytest.mark.parametrize("architecture", ARCHITECTURES)
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


@pytest.mark.parametrize(
    "init", ["gaussian", "orthogonal", "pissa", "pissa_niter_2", "olora", "eva", "corda", "lora_ga"]
)
def test_each_lora_init_starts_the_adapter_its_own_way_with_the_base_function(init):
    """What init_lora_weights changes: the adapter's (and for PiSSA, OLoRA, CorDA and LoRA-GA the
    base's) starting weights; what it keeps: the model computes the base's function before training."""
    base = tiny_model("llama")
    torch.manual_seed(0)
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(4)]  # what the data-driven ones read
    default, _ = trial_model(base, TrialConfig(rank=4, alpha=8), "unused")
    torch.manual_seed(0)
    other, _ = trial_model(
        base, TrialConfig(rank=4, alpha=8, init_lora_weights=init), "unused", init_batches=batches
    )
    assert all(m.training for m in other.modules())  # CorDA's preprocessing switches the base to eval
    pairs = zip(default.named_parameters(), other.named_parameters(), strict=True)
    changed = {a_name for (a_name, a), (_, b) in pairs if not torch.equal(a, b)}
    assert any("lora_A" in name for name in changed)
    assert any("base_layer" in name for name in changed) == init.startswith(
        ("pissa", "olora", "corda", "lora_ga")
    )
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.allclose(default.eval()(tokens).logits, other.eval()(tokens).logits, atol=1e-4)


def test_eva_starts_from_the_trials_own_training_batches(prepared, tiny_world):
    """EVA's A holds the top right-singular vectors of each layer's inputs on the training batches."""
    import dataclasses
    import itertools

    from lorasweep.data import pack_epochs
    from lorasweep.trial import INIT_BATCHES, run_trial

    config = TrialConfig(world=tiny_world, rank=4, alpha=8, init_lora_weights="eva")
    batches = list(itertools.islice(pack_epochs(prepared.train_docs, 16, 64, 64, 0), INIT_BATCHES))
    torch.manual_seed(0)
    eva, _ = trial_model(prepared.base, config, prepared.base_dir, init_batches=batches)
    torch.manual_seed(0)
    plain, _ = trial_model(prepared.base, dataclasses.replace(config, init_lora_weights="default"), "unused")
    a_eva = {n: p for n, p in eva.named_parameters() if "lora_A" in n}
    a_plain = dict(plain.named_parameters())
    for name, a in a_eva.items():
        assert not torch.allclose(a, a_plain[name])
        assert torch.allclose(a @ a.T, torch.eye(4), atol=1e-4), name  # orthonormal components
    result = run_trial(dataclasses.replace(config, train_tokens=4096, eval_points=0))
    assert result.config["init_lora_weights"] == "eva" and result.init_s > 0
