from transformers import AutoTokenizer

from lorasweep.config import WorldConfig
from lorasweep.world import build_world, ensure_base_model, make_tokenizer


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
