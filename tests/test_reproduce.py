"""reproduce and export: a recorded trial runs again exactly, and its export loads without lorasweep."""

import json

import optuna
import pytest
import torch
import yaml
from conftest import TINY_SPACE, cli, invoke, optimize


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache_dir):
    """A tiny study of two trials: the space's baselines, full FT (trial 0) and LoRA (trial 1)."""
    path = tmp_path_factory.mktemp("study")
    (path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    url = optimize(path, "space.yaml", "--n-trials", "2", "--artifact-dir", str(path / "artifacts"))
    return path, url


def test_a_recorded_trial_reproduces_exactly_on_cpu(study, cache_dir):
    path, url = study
    # in a new process: nothing the recording process held in memory helps the re-run
    result = cli("reproduce", "--trial", "1", "--storage", url, cwd=path, env_cache=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "trial 1 reproduced exactly" in result.stdout and "NO" not in result.stdout


def test_reproduce_refuses_changed_data_unless_allowed(tmp_path, cache_dir, request, llama_dir):
    for name in ("domain.jsonl", "probes.jsonl"):
        (tmp_path / name).write_text((request.config.rootpath / "examples" / name).read_text())
    space = {
        **TINY_SPACE,
        "config": {**TINY_SPACE["config"], "max_steps": 2},
        "baselines": TINY_SPACE["baselines"][1:],
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    data = ("--model", str(llama_dir), "--domain", "domain.jsonl", "--probes", "probes.jsonl")
    url = optimize(tmp_path, "space.yaml", "--n-trials", "1", *data)
    with (tmp_path / "domain.jsonl").open("a") as f:
        f.write(json.dumps({"text": "Orla Venn later moved to Saltmere."}) + "\n")
    # new processes: this one holds the data as it was when the trial ran
    refused = cli("reproduce", "--trial", "0", "--storage", url, cwd=tmp_path, env_cache=cache_dir)
    assert refused.returncode == 1
    assert "the data changed since trial 0 (data_fingerprint" in refused.stderr
    allowed = cli(
        "reproduce", "--trial", "0", "--allow-changed", "--storage", url, cwd=tmp_path, env_cache=cache_dir
    )
    assert allowed.returncode in (0, 1) and "re-run" in allowed.stdout, allowed.stderr


def test_every_completed_trial_carries_its_config_as_an_artifact(study):
    path, url = study
    for trial in optuna.load_study(study_name="default", storage=url).trials:
        (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=optuna.storages.RDBStorage(url))
        assert meta.filename == "trial.yaml"
        assert (
            yaml.safe_load((path / "artifacts" / meta.artifact_id).read_text()) == trial.user_attrs["config"]
        )


def test_an_exported_adapter_loads_with_plain_peft_and_scores_the_recorded_learn(study, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorasweep.config import WorldConfig
    from lorasweep.world import build_world

    path, url = study
    out = tmp_path / "export"
    result = invoke("export", "--trial", "1", "--out", str(out), "--storage", url, cwd=path)
    assert result.returncode == 0, result.stderr
    assert {"adapter_model.safetensors", "adapter_config.json", "trial.yaml", "README.md"} <= {
        f.name for f in out.iterdir()
    }
    recorded = optuna.load_study(study_name="default", storage=url).trials[1].user_attrs
    base_dir = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    world = build_world(WorldConfig(**recorded["config"]["world"]))  # the probe texts, nothing else
    assert exact_match(model, tokenizer, world.domain_probes) == recorded["learn"]
    assert "| learn |" in (out / "README.md").read_text()
    assert yaml.safe_load((out / "trial.yaml").read_text()) == recorded["config"]


def test_export_merges_an_adapter_into_a_full_model(study, tmp_path):
    from transformers import AutoModelForCausalLM

    path, url = study
    out = tmp_path / "merged"
    result = invoke("export", "--trial", "1", "--merge", "--out", str(out), "--storage", url, cwd=path)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_reading_commands_say_what_is_missing(study, tmp_path):
    path, url = study
    both = invoke("reproduce", "--storage", url, cwd=path)
    assert both.returncode == 2 and "give either --trial N or --best" in both.stderr
    missing = invoke("export", "--trial", "9", "--out", "x", "--storage", url, cwd=path)
    assert missing.returncode == 2 and "has trials 0..1" in missing.stderr
    plain = f"sqlite:///{tmp_path}/plain.db"
    optuna.create_study(storage=plain, study_name="plain").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1
    )
    result = invoke("reproduce", "--best", "--storage", plain, cwd=tmp_path)
    assert result.returncode == 2 and "trial 0 of study 'plain' has no recorded config" in result.stderr


def test_a_qlora_trial_that_does_not_reproduce_on_cpu_names_the_known_reason():
    import torch

    from lorasweep.config import TrialConfig
    from lorasweep.reproduce import known_differences

    (note,) = known_differences(TrialConfig(method="qlora"), torch.device("cpu"))
    assert "AVX512-BF16" in note and "README" in note
    assert known_differences(TrialConfig(method="lora"), torch.device("cpu")) == []


def exact_match(model, tokenizer, probes) -> float:
    """Teacher-forced exact match (answer and EOS), written with plain transformers and torch."""
    correct = 0
    for probe in probes:
        prompt = tokenizer(probe.prompt)["input_ids"]
        full = tokenizer(f"{probe.prompt} {probe.answer}")["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0]
        predicted = logits[len(prompt) - 1 : len(full) - 1].argmax(-1).tolist()
        correct += predicted == full[len(prompt) :]
    return correct / len(probes)


@pytest.mark.parametrize(
    ("init", "rank"), [("pissa_niter_2", 8), ("olora", 8), ("corda", 8), ("lora_ga", 8), ("eva", 4)]
)
def test_an_adapter_with_its_own_init_exports_as_plain_lora_on_the_original_base(init, rank, tmp_path):
    """PiSSA, OLoRA, CorDA and LoRA-GA take the adapter's start out of the base: the export is
    converted back into a rank-2r adapter; EVA's (started from training batches) exports as it is."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorasweep.config import WorldConfig
    from lorasweep.world import build_world

    space = {**TINY_SPACE, "params": {"init_lora_weights": {"choices": [init]}}, "baselines": []}
    space["config"] = {**TINY_SPACE["config"], "method": "lora", "rank": 4, "learning_rate": 3e-3}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    url = optimize(tmp_path, "space.yaml", "--n-trials", "1")
    out = tmp_path / "export"
    result = invoke("export", "--trial", "0", "--out", str(out), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = optuna.load_study(study_name="default", storage=url).trials[0].user_attrs
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == rank
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"]), out
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    world = build_world(WorldConfig(**recorded["config"]["world"]))
    assert exact_match(model.eval(), tokenizer, world.domain_probes) == recorded["learn"]
