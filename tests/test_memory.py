"""The memory estimate (memory.py): how each field moves it, and the GPU pre-flight check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lorasweep.config import TrialConfig, WorldConfig
from lorasweep.memory import check_fits, estimate, model_config
from lorasweep.validation import ConfigError

GiB = 2**30


def estimated(**fields):
    config = TrialConfig(**fields)
    return estimate(config, model_config(config), torch.float32)


def test_lora_trains_a_sliver_and_qlora_stores_the_base_in_4_bits():
    full, lora, qlora = (estimated(method=m, rank=4) for m in ("full", "lora", "qlora"))
    assert lora.gradients < full.gradients / 10 and lora.optimizer < full.optimizer / 10
    assert qlora.weights < 0.6 * lora.weights
    assert full.weights == full.gradients  # fp32: a gradient per weight


def test_8bit_states_take_a_quarter_of_adamw_fp32_ones():
    adamw, eight = (estimated(method="full", optimizer=o).optimizer for o in ("adamw", "adamw_8bit"))
    assert 0.24 < eight / adamw < 0.3
    assert estimated(method="full", optimizer="adafactor").optimizer < eight / 10


def test_accumulated_gradients_are_held_beside_activations():
    plain, accumulating = estimated(method="full"), estimated(method="full", grad_accum=2)
    assert plain.total == plain.weights + plain.optimizer + plain.activations  # activations > gradients
    assert accumulating.total == plain.total + plain.gradients


def test_checkpointing_and_batch_size_move_activations():
    deep = WorldConfig(n_layers=16)
    plain = estimated(batch_size=16, world=deep)
    assert estimated(batch_size=32, world=deep).activations == 2 * plain.activations
    assert (
        estimated(batch_size=16, world=deep, gradient_checkpointing=True).activations < plain.activations / 2
    )


def test_shards_split_gradients_and_states():
    deep = WorldConfig(n_layers=16)
    one, two = estimated(method="full", world=deep), estimated(method="full", world=deep, fsdp_shards=2)
    assert two.optimizer == one.optimizer // 2 and two.gradients == one.gradients // 2
    assert one.weights // 2 < two.weights < 0.7 * one.weights  # half, and two layers gathered whole
    assert two.activations == pytest.approx(one.activations / 2)
    assert two.total < one.total


def test_a_trial_that_will_not_fit_the_gpu_fails_at_once_naming_the_fields(monkeypatch):
    config = TrialConfig(method="full")
    need = dataclasses.replace(estimated(method="full"), optimizer=100 * GiB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * GiB, 141 * GiB))
    with pytest.raises(ConfigError) as info:
        check_fits(need, config, torch.device("cuda", 0))
    message = str(info.value)
    assert message.startswith(
        "trial needs about 100.1 GiB (weights 0.0, gradients 0.0, optimizer 100.0, activations 0.1) "
        "on cuda:0, which has 80.0 GiB free; try "
    )
    for field in ("batch_size", "gradient_checkpointing: true", "optimizer: adamw_8bit", "fsdp_shards: 2"):
        assert field in message
    assert "\n" not in message
    check_fits(need, config, torch.device("cpu"))  # a CPU's memory is not checked
    check_fits(dataclasses.replace(need, optimizer=GiB), config, torch.device("cuda", 0))  # it fits


def test_corda_and_lora_ga_count_what_they_hold_to_initialise():
    base = model_config(TrialConfig())
    h, layers = base.hidden_size, base.num_hidden_layers
    heads, kv_heads = base.num_attention_heads, base.num_key_value_heads
    kv = h // heads * kv_heads
    plain = estimated(method="lora", rank=4, target_modules="qv")
    corda = estimated(method="lora", rank=4, target_modules="qv", init_lora_weights="corda")
    lora_ga = estimated(method="lora", rank=4, target_modules="qv", init_lora_weights="lora_ga")
    assert plain.initialising == 0 and "initialising" not in plain.parts()
    # an fp32 covariance of q_proj's and v_proj's inputs (the hidden state) in every layer, and the
    # decomposition of the widest (q_proj: h in, h out) in fp32
    assert corda.initialising == layers * 2 * h * h * 4 + (5 * h + 3 * h) * h * 4
    # the gradient of q_proj's and v_proj's weights, a batch's activations, q_proj's fp32 copies
    full = estimated(method="full", rank=4, target_modules="qv")
    assert lora_ga.initialising == layers * (h * h + h * kv) * 4 + h * h * (4 + 12) + full.activations
    assert lora_ga.total == max(lora_ga.training, lora_ga.weights + lora_ga.initialising)
    assert corda.parts()["initialising"] == corda.initialising


def test_an_init_that_takes_the_most_memory_is_named_as_a_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**20, 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    config = TrialConfig(method="lora", rank=4, init_lora_weights="lora_ga", batch_size=64)
    with pytest.raises(ConfigError) as info:
        check_fits(estimate(config, model_config(config), torch.float32), config, torch.device("cuda:0"))
    assert "try another init_lora_weights (lora_ga takes the most to initialise), a smaller" in str(
        info.value
    )
