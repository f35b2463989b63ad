"""`compile: true`: the same training as eager, compiled once per model structure per process.

Compiling is slow on a cold inductor cache (a minute per structure here): one structure
only. Full FT, DoRA, QLoRA, dropout, checkpointing and fp16 also compile (BENCHMARKS.md).
"""

import dataclasses
import gc
import weakref

import pytest
from torch._dynamo.utils import counters

from lorasweep.config import TrialConfig
from lorasweep.trial import run_trial


def test_compiled_trial_trains_as_eager_and_later_trials_of_the_structure_reuse_the_graph(
    tiny_world, llama_dir, cache_dir
):
    # the one-layer Llama: compile time grows with the layers
    lora = TrialConfig(
        model=str(llama_dir),
        method="lora",
        rank=4,
        learning_rate=1e-2,
        batch_size=8,
        max_length=32,
        max_steps=6,
        world=tiny_world,
    )
    eager = run_trial(lora)
    compiled = run_trial(dataclasses.replace(lora, compile=True))
    # inductor fuses and reorders float ops: equal up to rounding, not bit for bit
    assert compiled.train_loss == pytest.approx(eager.train_loss, rel=1e-4)
    assert compiled.forget == pytest.approx(eager.forget, abs=1e-4)
    assert compiled.learn == pytest.approx(eager.learn, abs=0.02)
    assert compiled.config["compile"] is True and eager.config["compile"] is False
    assert compiled.learn_curve.keys() == eager.learn_curve.keys()  # evaluations ran (eagerly)

    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the model's forward was compiled, not run eagerly
    assert any((cache_dir / "inductor").iterdir())  # kernels cached under lorasweep's cache, not /tmp
    # a fresh copy of the same structure, other LR and seed: no new graph
    trained = []
    again = run_trial(
        dataclasses.replace(lora, compile=True, learning_rate=3e-3, seed=1),
        on_trained=lambda model, _: trained.append(weakref.ref(model)),
    )
    assert counters["stats"]["unique_graphs"] == graphs
    assert again.train_loss != compiled.train_loss
    gc.collect()
    assert trained[0]() is None  # the cached graph holds no trial's model (its memory is freed)
