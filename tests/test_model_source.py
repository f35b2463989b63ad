"""`model:` points a trial at a user's own Hugging Face model directory: dtype, errors, safety."""

import dataclasses
import json

import pytest
import torch
from transformers import DistilBertConfig

from lorasweep.config import TrialConfig
from lorasweep.modeling import load_base
from lorasweep.trial import run_trial
from lorasweep.validation import ConfigError


@pytest.fixture
def config(llama_dir, tiny_world):
    return TrialConfig(
        model=str(llama_dir), world=tiny_world, batch_size=4, max_length=32, max_steps=4, eval_points=0
    )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_trial_trains_a_local_model_in_bf16(config, method):
    result = run_trial(dataclasses.replace(config, method=method, dtype="bf16", learning_rate=1e-3))
    assert result.dtype == "bfloat16" and result.device == "cpu"
    assert result.base_model == config.model and result.train_steps == 4
    assert result.forget != 0.0  # trained, and measured against this model's own base


def test_fp16_adapters_train_with_loss_scaling(config):
    result = run_trial(dataclasses.replace(config, method="lora", dtype="fp16", learning_rate=1e-3))
    assert result.dtype == "float16" and result.forget != 0.0


def test_gradient_checkpointing_gives_the_same_training(config):
    plain = run_trial(dataclasses.replace(config, method="lora", learning_rate=1e-2))
    checkpointed = run_trial(
        dataclasses.replace(config, method="lora", learning_rate=1e-2, gradient_checkpointing=True)
    )
    assert checkpointed.forget == pytest.approx(plain.forget, abs=1e-5)


def test_a_tokenizer_without_pad_token_pads_with_eos(llama_dir, tmp_path):
    for f in llama_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.pop("pad_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    _, tokenizer = load_base(tmp_path)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_bad_models_are_one_line_errors(llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="no such directory, and not a hub id in the local"):
        load_base(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no such directory, and not a hub id in the local"):
        load_base("nobody/no-such-model")
    encoder = tmp_path / "distilbert"
    DistilBertConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=32).save_pretrained(encoder)
    with pytest.raises(ConfigError, match="'distilbert' is not a causal language model"):
        load_base(encoder)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save({}, pickled / "pytorch_model.bin")  # a pickle: never loaded
    with pytest.raises(ConfigError, match="cannot load safetensors weights"):
        load_base(pickled)


def test_devices_and_dtypes_are_validated():
    with pytest.raises(ConfigError, match="field 'dtype' is 'fp16'; allowed: fp32 or bf16 with method full"):
        TrialConfig.from_dict({"method": "full", "dtype": "fp16"}, "t.yaml")
    with pytest.raises(ConfigError, match="field 'device' is 'gpu0'; allowed: auto, cpu, cuda or cuda:N"):
        TrialConfig.from_dict({"device": "gpu0"}, "t.yaml")
    if not torch.cuda.is_available():
        from lorasweep.modeling import resolve_device

        with pytest.raises(ConfigError, match="this machine has 0 CUDA device"):
            resolve_device("cuda:1")
