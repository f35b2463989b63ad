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
