"""Every trial-config knob changes what is trained, and does what it says."""

import dataclasses
import math

import pytest
import torch

from lorasweep.config import TrialConfig
from lorasweep.data import pack_epochs
from lorasweep.optimizers import make_optimizer
from lorasweep.train import make_scheduler, train_loop
from lorasweep.trial import run_trial


@pytest.fixture
def lora(tiny_world, prepared) -> TrialConfig:
    return TrialConfig(
        method="lora",
        rank=4,
        learning_rate=1e-2,
        batch_size=8,
        max_length=32,
        train_tokens=8192,
        eval_points=2,
        world=tiny_world,
    )


@pytest.fixture
def reference(lora):
    return run_trial(lora)


KNOBS = [
    {"method": "rslora"},
    {"method": "dora"},
    {"method": "qlora", "quantization": "nf4"},
    {"method": "qlora", "quantization": "int8"},
    {"method": "full", "learning_rate": 1e-3},
    {"target_modules": "attention"},
    {"target_modules": "mlp"},
    {"target_modules": "qv"},
    {"rank": 8},
    {"alpha": 4.0},
    {"alpha_ratio": 4.0},
    {"lora_dropout": 0.1},
    {"learning_rate": 3e-3},
    {"lr_scaling": "sqrt", "reference_batch_size": 4},
    {"batch_size": 4},
    {"grad_accum": 2},
    {"max_length": 16},
    {"train_tokens": 4096},
    {"max_steps": 10},
    {"epochs": 1.0},
    {"replay_ratio": 0.3},
    {"schedule": "constant"},
    {"schedule": "linear"},
    {"schedule": "cosine_with_min_lr", "min_lr_ratio": 0.5},
    {"schedule": "warmup_stable_decay"},
    {"warmup_ratio": 0.3},
    {"weight_decay": 0.5},
    {"max_grad_norm": 0.0},
    {"seed": 1},
]


@pytest.mark.parametrize("change", KNOBS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_knob_changes_what_is_trained(lora, reference, change):
    result = run_trial(dataclasses.replace(lora, **change))
    assert math.isfinite(result.forget)
    assert result.forget != reference.forget


def test_settings_that_only_observe_do_not_change_training(lora, reference):
    more_evals = run_trial(dataclasses.replace(lora, eval_points=4, eval_fraction=1.0))
    assert (more_evals.learn, more_evals.forget) == (reference.learn, reference.forget)
    assert len(more_evals.learn_curve) == 4


def test_min_lr_and_decay_ratios_shape_their_schedules(lora):
    cosine = dataclasses.replace(lora, schedule="cosine_with_min_lr")
    wsd = dataclasses.replace(lora, schedule="warmup_stable_decay")
    assert run_trial(cosine).forget != run_trial(dataclasses.replace(cosine, min_lr_ratio=0.0)).forget
    assert run_trial(wsd).forget != run_trial(dataclasses.replace(wsd, decay_ratio=0.5)).forget


def lrs_used(config: TrialConfig, prepared) -> list[float]:
    """The learning rate the optimizer applied at each step of the real training loop."""
    from lorasweep.modeling import trial_model

    config = config.resolved(0)
    model, _ = trial_model(prepared.base, config, prepared.base_dir)
    optimizer = make_optimizer(model, config)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    batches = pack_epochs(
        prepared.train_docs, config.batch_size, config.max_length, config.steps * config.grad_accum, seed=0
    )
    train_loop(model, batches, optimizer, make_scheduler(optimizer, config), grad_accum=config.grad_accum)
    assert len(seen) == config.steps
    return seen


def test_schedules_apply_the_lr_they_promise(lora, prepared):
    base = dataclasses.replace(lora, learning_rate=1e-2, warmup_ratio=0.25, max_steps=20)  # 5 warmup steps
    peak = 1e-2
    constant = lrs_used(dataclasses.replace(base, schedule="constant"), prepared)
    assert constant[0] == 0.0 and constant[4] == pytest.approx(0.8 * peak)
    assert constant[5:] == pytest.approx([peak] * 15)
    linear = lrs_used(dataclasses.replace(base, schedule="linear"), prepared)
    assert linear[5] == pytest.approx(peak) and linear[-1] == pytest.approx(peak / 15)
    cosine = lrs_used(dataclasses.replace(base, schedule="cosine"), prepared)
    assert cosine[5] == pytest.approx(peak) and cosine[-1] < 0.02 * peak
    floor = lrs_used(dataclasses.replace(base, schedule="cosine_with_min_lr", min_lr_ratio=0.3), prepared)
    assert min(floor[5:]) >= 0.3 * peak - 1e-12 and floor[-1] < 0.32 * peak
    wsd = lrs_used(
        dataclasses.replace(base, schedule="warmup_stable_decay", decay_ratio=0.25, min_lr_ratio=0.1),
        prepared,
    )
    assert wsd[5:16] == pytest.approx([peak] * 11)  # stable, then decay over the last 25% of the steps
    assert wsd[16] < peak and wsd[-1] < 0.2 * peak and min(wsd) >= 0.1 * peak - 1e-12


def test_lr_scaling_follows_the_batch_ratio(lora, prepared):
    sqrt = dataclasses.replace(
        lora,
        lr_scaling="sqrt",
        reference_batch_size=4,
        grad_accum=2,
        max_steps=4,
        warmup_ratio=0.0,
        schedule="constant",
    )
    assert sqrt.peak_lr == pytest.approx(1e-2 * 2.0)  # (8 x 2 / 4) ** 0.5
    assert lrs_used(sqrt, prepared) == pytest.approx([2e-2] * 4)
    linear = dataclasses.replace(sqrt, lr_scaling="linear")
    assert linear.peak_lr == pytest.approx(1e-2 * 4.0)
    assert dataclasses.replace(sqrt, lr_scaling="none").peak_lr == 1e-2


def test_budget_in_tokens_steps_or_epochs(lora, prepared):
    domain_tokens = sum(len(d) for d in prepared.train_docs)
    assert lora.resolved(domain_tokens).steps == 8192 // (8 * 32)
    assert dataclasses.replace(lora, max_steps=7).resolved(domain_tokens).steps == 7
    two = dataclasses.replace(lora, epochs=2.0).resolved(domain_tokens)
    assert two.train_tokens == 2 * domain_tokens
    # with replay the domain text still gets its epochs: the stream grows by the replay share
    mixed = dataclasses.replace(lora, epochs=2.0, replay_ratio=0.5).resolved(domain_tokens)
    assert mixed.train_tokens == 4 * domain_tokens
    result = run_trial(dataclasses.replace(lora, grad_accum=2, batch_size=4))
    assert result.train_steps == 32 and result.train_tokens == 32 * 2 * 4 * 32


def test_replay_mixes_general_text_at_the_ratio(prepared):
    domain = [[1] * 10 for _ in range(5)]
    general = [[2] * 7 for _ in range(5)]
    rows = torch.cat(list(pack_epochs(domain, 4, 25, 20, seed=0, replay=general, replay_ratio=0.3)))
    share = float((rows == 2).float().mean())
    assert abs(share - 0.3) < 0.02
    only_domain = torch.cat(list(pack_epochs(domain, 4, 25, 5, seed=0)))
    assert bool((only_domain == 1).all())


def test_replay_text_is_disjoint_from_the_forgetting_measure(tiny_world):
    from lorasweep.world import build_world

    world = build_world(tiny_world)
    assert not set(world.general_heldout_bios) & set(world.general_bios)


def test_lawa_evaluates_the_average_of_the_last_k_snapshots(lora):
    result = run_trial(dataclasses.replace(lora, lawa_k=3, lawa_interval=5))
    assert result.lawa_snapshots == 3
    assert result.lawa_snapshot_bytes == 3 * result.trainable_params * 4
    assert 0.0 <= result.lawa_learn <= 1.0
    assert result.lawa_forget != result.forget  # averaged weights differ from the final ones
    plain = run_trial(lora)
    assert (plain.learn, plain.forget) == (result.learn, result.forget)  # final weights untouched
    assert plain.lawa_learn is None and "lawa_learn" not in plain.attrs()


def test_adapter_methods_build_what_they_name(lora, prepared):
    from peft.tuners.lora import LoraLayer

    from lorasweep.modeling import trial_model

    def layers(method, **extra):
        config = dataclasses.replace(lora, method=method, **extra).resolved(0)
        model, _ = trial_model(prepared.base, config, prepared.base_dir)
        return model, [m for m in model.modules() if isinstance(m, LoraLayer)]

    _, plain = layers("lora")
    assert plain[0].scaling["default"] == 8.0 / 4
    _, rs = layers("rslora")
    assert rs[0].scaling["default"] == pytest.approx(8.0 / 4**0.5)
    _, dora = layers("dora")
    assert dora[0].use_dora["default"]
    quantized, _ = layers("qlora", quantization="nf4")
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())
    eight, _ = layers("qlora", quantization="int8")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in eight.modules())


def test_qlora_records_its_quantization(lora):
    result = run_trial(dataclasses.replace(lora, method="qlora"))
    plain = run_trial(lora)
    assert result.quantization == "nf4" and result.method == "qlora"
    assert plain.quantization == "none"
    # same adapter on the same layers: the same parameter counts, in fewer bytes
    assert (result.trainable_params, result.total_params) == (
        plain.trainable_params,
        plain.total_params,
    )
    assert result.model_bytes < plain.model_bytes
