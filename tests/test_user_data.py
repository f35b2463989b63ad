"""A user's own model and files: every supported architecture, the formats, and the errors."""

import json
import os

import pytest
import yaml
from conftest import ARCHITECTURES, invoke, tiny_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lorasweep.config import TrialConfig
from lorasweep.corpus import load_corpus
from lorasweep.evaluate import generated_match, normalize
from lorasweep.validation import ConfigError
from lorasweep.world import Probe

EXAMPLES = {name: f"examples/{name}" for name in ("domain.jsonl", "general.txt", "probes.jsonl")}


@pytest.fixture(scope="module")
def repo(request):
    return request.config.rootpath


def tokenizer(repo) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the example texts, with an EOS and, like many, no pad token."""
    texts = [json.loads(line)["text"] for line in (repo / EXAMPLES["domain.jsonl"]).read_text().splitlines()]
    texts += (repo / EXAMPLES["general.txt"]).read_text().split("\n\n")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


@pytest.fixture(scope="module")
def model_dirs(repo, tmp_path_factory):
    tok = tokenizer(repo)
    dirs = {}
    for name in ARCHITECTURES:
        path = tmp_path_factory.mktemp(name)
        # the token ids in the model's config match its tokenizer's, as in a released checkpoint;
        # embeddings padded beyond the tokenizer, as released models often are (transformers
        # loads Qwen2's own tokenizer class here, which adds a token)
        ids = {"vocab_size": len(tok) + 8, "bos_token_id": None, "eos_token_id": tok.eos_token_id}
        tiny_model(name, **ids).save_pretrained(path)
        tok.save_pretrained(path)
        dirs[name] = path
    return dirs


def user_config(repo, model_dir, **fields) -> TrialConfig:
    files = {k.split(".")[0]: str(repo / v) for k, v in EXAMPLES.items()}
    return TrialConfig(
        model=str(model_dir),
        domain=files["domain"],
        general=files["general"],
        probes=files["probes"],
        batch_size=4,
        max_length=32,
        max_steps=3,
        eval_points=0,
        **fields,
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_and_full_trials_of_every_architecture_through_the_cli(architecture, model_dirs, repo, tmp_path):
    space = {
        "config": {
            "batch_size": 4,
            "max_length": 32,
            "max_steps": 3,
            "eval_points": 1,
            "target_modules": "attention",
        },
        "params": {
            "method": {"choices": ["lora", "full"]},
            "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
        },
        "baselines": [{"method": "lora", "learning_rate": 1e-3}, {"method": "full", "learning_rate": 1e-4}],
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    url = f"sqlite:///{tmp_path}/s.db"
    data = [
        "--domain",
        str(repo / EXAMPLES["domain.jsonl"]),
        "--general",
        str(repo / EXAMPLES["general.txt"]),
    ]
    data += ["--probes", str(repo / EXAMPLES["probes.jsonl"]), "--cache-dir", str(tmp_path / "cache")]
    args = [
        "--space",
        "space.yaml",
        "--storage",
        url,
        "--n-trials",
        "2",
        "--model",
        str(model_dirs[architecture]),
    ]
    result = invoke("optimize", *args, *data, "--replicates", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import optuna

    study = optuna.load_study(study_name="default", storage=url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs["method"] for t in trials) == ["full", "lora"]
    for t in trials:
        assert 0.0 <= t.values[0] <= 1.0 and t.user_attrs["base_model"] == str(model_dirs[architecture])
        assert (
            t.user_attrs["config"]["probes"].endswith("probes.jsonl")
            and len(t.user_attrs["data_fingerprint"]) == 16
        )
        assert "general_qa_acc" not in t.user_attrs  # the user's data has no general QA
    assert study.user_attrs["space"]["config"]["model"] == str(model_dirs[architecture])
    assert not list((tmp_path / "cache").glob("base-*"))  # no embedded base model was built
    assert list((tmp_path / "cache" / "datasets").iterdir())  # datasets' copies of the files: here


def test_general_heldout_is_a_share_or_a_number_of_documents_and_a_huge_one_is_refused(
    repo, model_dirs, tmp_path, monkeypatch
):
    from lorasweep import prepare

    config = user_config(repo, model_dirs["llama"])
    three = TrialConfig(**{**config.__dict__, "general_heldout": 3})
    corpus = load_corpus(three)
    assert len(corpus.general_heldout) == 3 and len(corpus.replay) == 9
    with pytest.raises(ConfigError, match="general_heldout.*a share in \\(0, 1\\) or a number of documents"):
        TrialConfig(**{**config.__dict__, "general_heldout": 2.5})
    monkeypatch.setattr(prepare, "HELDOUT_TOKENS_MAX", 100)  # the 2 held-out paragraphs hold more
    with pytest.raises(ConfigError) as refused:
        prepare.prepare(config, tmp_path)
    assert str(refused.value).startswith(
        f"field 'general_heldout': 0.2 of {config.general} holds out 2 documents, over 100 tokens"
    )
    assert str(refused.value).endswith(
        "hold out a number of documents instead, e.g. general_heldout: 1 "
        "(a trial recorded with more cannot be re-run by this lorasweep)"
    )


def test_the_data_fingerprint_is_the_one_earlier_lorasweeps_recorded(repo, model_dirs, tmp_path):
    # reproduce compares it with the recorded one: the examples' value since the first release
    assert load_corpus(user_config(repo, model_dirs["llama"]), tmp_path).fingerprint == "eab048529a6b736d"


def test_the_data_fingerprint_is_remembered_until_a_file_changes(repo, model_dirs, tmp_path, monkeypatch):
    from lorasweep import corpus as corpus_module

    domain = tmp_path / "domain.jsonl"
    domain.write_text((repo / EXAMPLES["domain.jsonl"]).read_text())
    config = TrialConfig(**{**user_config(repo, model_dirs["llama"]).__dict__, "domain": str(domain)})
    cache = tmp_path / "cache"
    first = load_corpus(config, cache)
    with monkeypatch.context() as patch:  # remembered: the text is not read again
        patch.setattr(corpus_module, "_fingerprint", lambda *_: pytest.fail("the domain was read again"))
        again = load_corpus(config, cache)
    assert (again.fingerprint, again.parts) == (first.fingerprint, first.parts)
    # another probe: another corpus, but the same domain text and token store
    probes = tmp_path / "probes.jsonl"
    probes.write_text(
        (repo / EXAMPLES["probes.jsonl"]).read_text() + json.dumps({"question": "Q?", "answer": "A"})
    )
    other = load_corpus(TrialConfig(**{**config.__dict__, "probes": str(probes)}), cache)
    assert other.fingerprint != first.fingerprint and other.parts == first.parts
    # the same size and modification time, other content: its change time tells
    stat = domain.stat()
    domain.write_text(domain.read_text().replace("Orla", "Arlo"))
    os.utime(domain, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert domain.stat().st_size == stat.st_size and domain.stat().st_mtime_ns == stat.st_mtime_ns
    changed = load_corpus(config, cache)
    assert (
        changed.fingerprint != first.fingerprint
        and changed.parts["domain_train"] != first.parts["domain_train"]
    )


def test_user_files_are_read_and_split_deterministically(repo, model_dirs):
    corpus = load_corpus(user_config(repo, model_dirs["llama"]))
    assert len(list(corpus.domain_train)) == 12 and len(corpus.domain_probes) == 18
    assert len(corpus.general_heldout) == 2 and len(corpus.replay) == 10  # 12 paragraphs, 20% held out
    assert corpus.domain_probes[0].prompt == "Question: Where was Orla Venn born?\nAnswer:"
    assert corpus.domain_probes[1].answers == ("the Marrow Institute", "Marrow Institute")
    assert corpus.domain_probes[2].prompt == "Orla Venn is best known for work on"
    assert load_corpus(user_config(repo, model_dirs["llama"])).fingerprint == corpus.fingerprint


def test_probes_are_scored_by_greedy_generation_after_normalisation():
    from lorasweep.world import make_tokenizer

    tok = make_tokenizer()  # word-level: every generated token decodes to a whole word
    model = tiny_model("llama", vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id)
    prompt = "Vara Lo was born in"
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None
    )
    said = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert normalize(f" The {said.upper()}!") == normalize(said) != ""
    right = Probe(prompt, ("no such answer", f"{said.upper()}."))
    wrong = Probe(prompt, ("no such answer",))
    assert generated_match(model, tok, [right, wrong], batch_size=2) == 0.5


def test_bad_user_data_is_a_one_line_error(repo, model_dirs, tmp_path):
    base = user_config(repo, model_dirs["llama"])

    def error(**fields) -> str:
        with pytest.raises(ConfigError) as err:
            load_corpus(TrialConfig(**{**base.__dict__, **fields}))
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "file not found" in error(domain=str(tmp_path / "none.jsonl"))
    (tmp_path / "x.docx").write_text("x")
    assert "unknown format (allowed: .jsonl, .json, .csv, .parquet, .txt)" in error(
        domain=str(tmp_path / "x.docx")
    )
    (tmp_path / "empty.jsonl").write_text("")
    assert "is empty" in error(domain=str(tmp_path / "empty.jsonl"))
    (tmp_path / "body.jsonl").write_text('{"body": "x"}\n')
    assert "has no column 'text' (columns: body)" in error(domain=str(tmp_path / "body.jsonl"))
    (tmp_path / "noanswer.jsonl").write_text('{"question": "Who?"}\n')
    assert "row 1: has no 'answer'" in error(probes=str(tmp_path / "noanswer.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": \n')
    assert "cannot read" in error(domain=str(tmp_path / "broken.jsonl"))
    assert "'domain' and 'probes' go together" in error(probes=None)
    assert "hub:NAME?config=CONFIG&split=SPLIT" in error(domain="hub:?what=1")
    with pytest.raises(ConfigError, match="allowed: a text containing \\{question\\}"):
        TrialConfig.from_dict({"probe_template": "Q:"}, "t.yaml")


def test_an_answer_longer_than_the_context_is_an_error(repo, model_dirs, tmp_path):
    from lorasweep.prepare import prepare

    (tmp_path / "long.jsonl").write_text(
        json.dumps({"prompt": "Orla Venn is", "answer": "very " * 200}) + "\n"
    )
    with pytest.raises(
        ConfigError, match="probe 1 takes .* tokens with its answer; the evaluation context is 128"
    ):
        prepare(
            TrialConfig(
                **{**user_config(repo, model_dirs["llama"]).__dict__, "probes": str(tmp_path / "long.jsonl")}
            )
        )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_every_file_format_reads_the_same_documents(suffix, repo, model_dirs, tmp_path):
    import datasets

    rows = datasets.load_dataset("json", data_files=str(repo / EXAMPLES["domain.jsonl"]), split="train")
    path = tmp_path / f"domain{suffix}"
    {".csv": rows.to_csv, ".parquet": rows.to_parquet, ".json": rows.to_json}[suffix](str(path))
    config = user_config(repo, model_dirs["llama"])
    reference = list(load_corpus(config).domain_train)
    assert (
        list(load_corpus(TrialConfig(**{**config.__dict__, "domain": str(path)})).domain_train) == reference
    )


def test_a_sharded_lora_trial_generates_on_user_probes_as_the_unsharded_one(repo, model_dirs, cache_dir):
    """User probes are scored by generate(), which under FSDP2 bypasses the root's forward hook."""
    import dataclasses

    from lorasweep.trial import run_trial

    config = dataclasses.replace(
        user_config(repo, model_dirs["llama"], method="lora", learning_rate=1e-2), max_steps=4, eval_points=2
    )
    plain = run_trial(config, cache_dir=cache_dir)
    sharded = run_trial(dataclasses.replace(config, fsdp_shards=2), cache_dir=cache_dir)
    assert sharded.learn == plain.learn
    assert sharded.learn_curve == plain.learn_curve
    assert sharded.forget == pytest.approx(plain.forget, abs=1e-3)
