"""The `optimizer` field: each optimizer trains the trial, and the state it keeps is recorded and
is what memory.py estimates before loading."""

from __future__ import annotations

import typing

import optuna
import pytest
import torch
import yaml
from conftest import TINY_SPACE, optimize

from lorasweep.config import Optimizer, TrialConfig
from lorasweep.modeling import trial_model
from lorasweep.optimizers import make_optimizer
from lorasweep.trial import run_trial

OPTIMIZERS = typing.get_args(Optimizer)


@pytest.fixture(scope="module")
def full_ft(tiny_world, cache_dir) -> dict:
    """A full-FT trial per optimizer (every tensor trained: AdamW's states are largest there)."""
    base = {"world": tiny_world, "method": "full", "batch_size": 8, "max_length": 32}
    return {
        name: run_trial(
            TrialConfig(**base, train_tokens=8192, eval_points=0, learning_rate=1e-3, optimizer=name),
            cache_dir=cache_dir,
        )
        for name in OPTIMIZERS
    }


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_recorded_optimizer_state_is_the_estimated_one(full_ft, name):
    result = full_ft[name]
    assert result.config["optimizer"] == name
    assert result.optimizer_state_bytes == result.memory_estimate["optimizer"]


def test_optimizers_train_differently_and_keep_less_state(full_ft):
    adamw, eight, paged, adafactor = (full_ft[n] for n in OPTIMIZERS)
    assert len({adamw.train_loss, eight.train_loss, adafactor.train_loss}) == 3
    assert paged.train_loss == eight.train_loss  # on a CPU the paged one is the plain 8-bit one
    assert adafactor.optimizer_state_bytes < eight.optimizer_state_bytes < adamw.optimizer_state_bytes


def test_optimizers_take_the_trial_lr_and_weight_decay():
    model = torch.nn.Linear(128, 128)
    for name in OPTIMIZERS:
        config = TrialConfig(optimizer=name, learning_rate=3e-4, weight_decay=0.05)
        group = make_optimizer(model, config).param_groups[0]
        assert (group["lr"], group["weight_decay"]) == (3e-4, 0.05), name


def test_a_study_searches_the_optimizer_and_records_its_state(tmp_path):
    baselines = [{"optimizer": "adamw"}, {"optimizer": "adafactor"}]
    space = dict(TINY_SPACE, params={"optimizer": {"choices": ["adamw", "adafactor"]}}, baselines=baselines)
    space["config"] = dict(space["config"], method="full", learning_rate=1e-3)
    path = tmp_path / "optimizers.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    url = optimize(tmp_path, path, "--n-trials", "2")
    trials = optuna.load_study(study_name="default", storage=url).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.params["optimizer"] for t in done} == {"adamw", "adafactor"}
    for t in done:
        assert t.user_attrs["config"]["optimizer"] == t.params["optimizer"]
        assert t.user_attrs["optimizer_state_bytes"] == t.user_attrs["memory_estimate"]["optimizer"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_loraplus_trains_the_b_matrices_at_a_multiple_of_the_lr(prepared, tiny_world, name):
    config = TrialConfig(world=tiny_world, rank=4, learning_rate=1e-3, loraplus_lr_ratio=16, optimizer=name)
    model, _ = trial_model(prepared.base, config.resolved(prepared.train_docs.n_tokens), prepared.base_dir)
    optimizer = make_optimizer(model, config)
    lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr) == len(trained)
    for n, p in trained.items():
        assert lr[id(p)] == pytest.approx(16e-3 if "lora_B" in n else 1e-3), n


def test_loraplus_changes_what_a_trial_learns(tiny_world, cache_dir):
    base = {"world": tiny_world, "batch_size": 8, "max_length": 32, "train_tokens": 8192, "eval_points": 0}
    plain = run_trial(TrialConfig(**base, rank=4, learning_rate=3e-3), cache_dir=cache_dir)
    plus = run_trial(
        TrialConfig(**base, rank=4, learning_rate=3e-3, loraplus_lr_ratio=16), cache_dir=cache_dir
    )
    assert plus.config["loraplus_lr_ratio"] == 16
    assert plus.train_loss < plain.train_loss  # B learns 16x faster at the same A learning rate
