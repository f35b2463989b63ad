import dataclasses

import pytest

from lorasweep.config import TrialConfig
from lorasweep.records import TrialResult
from lorasweep.trial import checkpoint_steps, run_trial
from lorasweep.validation import ConfigError


@pytest.fixture
def config(tiny_world, prepared):
    return TrialConfig(batch_size=8, max_length=32, train_tokens=8192, eval_points=2, world=tiny_world)


def test_full_fine_tuning_injects_knowledge_and_forgets(config, prepared):
    result = run_trial(dataclasses.replace(config, method="full", learning_rate=1e-3))
    base = prepared.base_metrics
    assert result.domain_loss < base["domain_loss"] - 1.0
    assert result.forget > 0
    assert result.trainable_pct == 100.0 and result.target_modules_resolved == []
    assert result.train_tokens == config.steps * 8 * 32
    assert list(result.learn_curve) == ["16", "32"] and result.learn_curve["32"] == result.learn
    # the user attrs a trial records are the result's fields, and read back into the same result
    assert TrialResult.from_attrs(result.attrs()) == result and "lawa_learn" not in result.attrs()


def test_lora_trains_only_the_adapter_on_the_preset(config):
    qv = run_trial(
        dataclasses.replace(config, method="lora", rank=4, target_modules="qv", learning_rate=1e-2)
    )
    every = run_trial(dataclasses.replace(config, method="lora", rank=4, learning_rate=1e-2))
    assert qv.target_modules_resolved == ["q_proj", "v_proj"]
    assert qv.trainable_params < every.trainable_params < every.total_params / 2
    assert every.config["alpha"] == 8.0  # resolved: 2 x rank
    assert every.domain_loss < qv.domain_loss


def test_trial_is_deterministic(config):
    lora = dataclasses.replace(config, method="lora", rank=4, learning_rate=1e-2)
    first, second = run_trial(lora), run_trial(lora)
    assert (first.learn, first.forget) == (second.learn, second.forget)
    other_seed = run_trial(dataclasses.replace(lora, seed=1))
    assert other_seed.forget != first.forget


def test_non_finite_loss_stops_training_at_the_next_checkpoint(prepared):
    import copy

    import torch

    from lorasweep.data import pack_epochs
    from lorasweep.train import NonFiniteLoss, train_loop

    model = copy.deepcopy(prepared.base).train()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # as a diverged update would leave it
    batches = pack_epochs(prepared.train_docs, 4, 32, batches=6, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reached = []
    with pytest.raises(NonFiniteLoss, match="training loss became nan by step 3"):
        train_loop(
            model, batches, optimizer, checkpoints=[3, 6], on_checkpoint=lambda s, _: reached.append(s)
        )
    assert reached == []


def test_preset_missing_from_architecture_is_an_error(prepared):
    from lorasweep.modeling import target_modules

    prepared.base.config.model_type = "gpt_neox"
    try:
        with pytest.raises(ConfigError, match="preset 'qv' cannot be applied to 'gpt_neox'"):
            target_modules(prepared.base, "qv")
    finally:
        prepared.base.config.model_type = "llama"


def test_rank_above_a_target_layers_width_is_an_error(config):
    # the tiny world's layers are 48 wide (k_proj, v_proj: 48 x 48): a rank above it means nothing
    with pytest.raises(
        ConfigError, match=r"rank 49 is above what a LoRA update of '\w+' can have: at most .* = 48"
    ):
        run_trial(dataclasses.replace(config, method="lora", rank=49, max_steps=1))
    assert run_trial(dataclasses.replace(config, method="lora", rank=48, max_steps=1)).train_steps == 1


def test_checkpoint_steps_are_spread_and_end_at_the_last_step():
    assert checkpoint_steps(146, 4) == [36, 73, 110, 146]
    assert checkpoint_steps(3, 5) == [1, 2, 3]
    assert checkpoint_steps(10, 0) == []


def test_intermediate_evaluations_use_a_subset_measured_against_the_base_on_that_subset(prepared):
    from lorasweep.evaluate import mean_loss

    probes, heldout, base_loss = prepared.checkpoint_sets(0.5)
    assert sum(len(b.input_ids) for b in probes) == len(prepared.corpus.domain_probes) // 2
    assert mean_loss(prepared.base, heldout) == pytest.approx(base_loss, abs=1e-9)  # the base forgets 0
    assert prepared.checkpoint_sets(1.0)[2] == pytest.approx(prepared.base_metrics["general_loss"], abs=1e-9)
