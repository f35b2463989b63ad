import dataclasses
import json
import shutil
import subprocess
import sys

from transformers import AutoTokenizer

from lorasweep.config import WorldConfig
from lorasweep.world import WEIGHTS_RECORD, build_world, ensure_base_model, make_tokenizer


def test_world_is_deterministic(tiny_world):
    assert build_world(tiny_world) == build_world(tiny_world)
    other = WorldConfig(**{**tiny_world.__dict__, "seed": 1})
    assert build_world(other).domain_bios != build_world(tiny_world).domain_bios


def test_sizes_follow_config(tiny_world):
    world = build_world(tiny_world)
    assert len(world.domain_bios) == tiny_world.n_domain * tiny_world.bios_per_person
    assert len(world.domain_probes) == tiny_world.n_domain * tiny_world.n_attributes
    assert (
        len(world.general_probes)
        == (tiny_world.n_general - tiny_world.n_general // 2) * tiny_world.n_attributes
    )
    assert len(world.general_qa_train) == tiny_world.n_general // 2 * tiny_world.n_attributes


def test_no_probe_question_in_training_text(tiny_world):
    world = build_world(tiny_world)
    training = world.general_bios + world.general_qa_train + world.domain_bios
    for probe in world.domain_probes + world.general_probes:
        assert not any(probe.prompt in text for text in training), probe.prompt
    # QA of the probed people is never trained, in any phrasing
    assert not any("q :" in text for text in world.domain_bios)


def test_heldout_paraphrases_are_not_trained(tiny_world):
    world = build_world(tiny_world)
    trained_sentences = {s for text in world.general_bios + world.domain_bios for s in text.split(" . ")}
    for text in world.general_heldout_bios + world.domain_heldout_bios:
        for sentence in text.split(" . "):
            assert sentence not in trained_sentences


def test_domain_split_has_no_new_tokens(tiny_world):
    world = build_world(tiny_world)
    tokenizer = make_tokenizer()

    def tokens(texts):
        return {t for text in texts for t in tokenizer(text)["input_ids"]}

    known = tokens(world.general_bios + world.general_qa_train)
    domain = tokens(world.domain_bios + world.domain_heldout_bios)
    domain |= tokens(f"{p.prompt} {p.answer}" for p in world.domain_probes)
    assert domain <= known
    assert tokenizer.unk_token_id not in known


def test_base_model_is_an_ordinary_hf_directory_and_is_cached(prepared, tiny_world, cache_dir):
    path = prepared.base_dir
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (
        tokenizer.decode(tokenizer("q : where was")["input_ids"], skip_special_tokens=True) == "q : where was"
    )
    mtime = (path / "model.safetensors").stat().st_mtime
    assert ensure_base_model(tiny_world, cache_dir) == path  # second call builds nothing
    assert (path / "model.safetensors").stat().st_mtime == mtime


def test_base_model_knows_general_people_not_domain_ones(prepared):
    base = prepared.base_metrics
    # held-out paraphrases of general people are far more predictable than of domain people
    assert base["domain_loss"] > base["general_loss"] + 1.0


def test_a_damaged_base_model_cache_is_rebuilt_with_a_notice(prepared, tiny_world, tmp_path, capfd):
    cached = tmp_path / prepared.base_dir.name
    shutil.copytree(prepared.base_dir, cached)
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a disk that filled up
    capfd.readouterr()
    assert ensure_base_model(tiny_world, tmp_path) == cached
    (notice,) = [line for line in capfd.readouterr().err.splitlines() if line.startswith("base model")]
    assert notice.startswith(f"base model cache {cached}: its weights' fingerprint is ")
    assert notice.endswith("recorded when it was built; rebuilding it")
    assert weights.stat().st_size == (prepared.base_dir / "model.safetensors").stat().st_size
    assert ensure_base_model(tiny_world, tmp_path) == cached  # whole now: used as it is
    assert "base model" not in capfd.readouterr().err


def test_a_base_model_build_killed_halfway_leaves_nothing_taken_for_complete(tiny_world, tmp_path):
    code = (
        "import sys, json; from lorasweep.config import WorldConfig; from lorasweep.world import "
        "ensure_base_model; ensure_base_model(WorldConfig(**json.loads(sys.argv[1])), sys.argv[2], "
        "lambda step, total: step == 10 and print('pretraining', flush=True))"
    )
    build = [sys.executable, "-c", code, json.dumps(dataclasses.asdict(tiny_world)), str(tmp_path)]
    builder = subprocess.Popen(build, stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline() == "pretraining\n"  # at step 10 of its pretraining
    builder.kill()
    builder.wait()
    assert not list(tmp_path.glob("base-*"))  # no cache to take for complete
    assert subprocess.run(build, check=False).returncode == 0  # the next build is whole
    (built,) = tmp_path.glob("base-*")
    assert (built / WEIGHTS_RECORD).exists() and (built / "model.safetensors").exists()
