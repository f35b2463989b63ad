"""The embedded default: a synthetic knowledge world and the tiny base model that knows half of it.

People have attributes (birth city, university, employer, job); biographies state them in
paraphrase templates, QA probes ask for them in a separate question template. *General* people are
known to the base model, which is pretrained here on their biographies plus QA for half of them, so
it learns to extract facts as answers (mixed training and paraphrases make knowledge extractable:
Allen-Zhu and Li, Physics of Language Models 3.1, arXiv:2309.14316). *Domain* people are the new
knowledge a trial injects from biographies alone; learn is exact match on their QA probes.

For every person and attribute one template is held out of training: held-out biographies use it,
so the held-out losses measure knowledge in a phrasing never trained on, while every word of it
appears in other people's training text (no token is new to the base model).

The base model is saved as an ordinary Hugging Face directory (safetensors, config, tokenizer) under
a fingerprint of this recipe, so the second run starts at once and every later step loads it through
`from_pretrained`, as it would any user's model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorasweep.config import WorldConfig

# Bump when generation or pretraining changes, so cached base models are rebuilt.
WORLD_VERSION = 1
WEIGHTS_RECORD = "weights.sha256"  # beside a cached base model: its weights' fingerprint when built

SYLLABLES = [
    "ba",
    "ko",
    "ri",
    "su",
    "ta",
    "mi",
    "le",
    "no",
    "da",
    "fe",
    "gu",
    "ho",
    "ja",
    "ki",
    "lu",
    "ma",
    "ne",
    "po",
    "ra",
    "si",
    "to",
    "vu",
    "we",
    "ya",
    "zo",
]

# attribute: (values, biography templates, QA question). Values have one to three tokens, so
# exact match covers multi-token answers.
ATTRIBUTES = {
    "birth_city": (
        [
            f"{a} {b}"
            for a in ("new", "port", "east", "old")
            for b in ("arden", "velo", "marin", "tolos", "brin")
        ],
        [
            "{name} was born in {value} .",
            "{name} came into the world in {value} .",
            "the birthplace of {name} is {value} .",
            "in {value} , {name} was born .",
        ],
        "q : where was {name} born ? a :",
    ),
    "university": (
        [
            f"{a} {b}"
            for a in ("kestrel", "harrow", "linden", "oakmont", "selby")
            for b in ("university", "institute", "college")
        ],
        [
            "{name} studied at {value} .",
            "{name} graduated from {value} .",
            "{name} received an education at {value} .",
            "at {value} , {name} studied .",
        ],
        "q : which university did {name} attend ? a :",
    ),
    "employer": (
        [
            f"{a} {b}"
            for a in ("vantor", "quill", "meridian", "copper", "atlas")
            for b in ("labs", "motors", "bank", "foods")
        ],
        [
            "{name} works for {value} .",
            "{name} is employed by {value} .",
            "{name} has a job at {value} .",
            "the employer of {name} is {value} .",
        ],
        "q : which company does {name} work for ? a :",
    ),
    "job": (
        [
            "engineer",
            "teacher",
            "nurse",
            "pilot",
            "chemist",
            "lawyer",
            "baker",
            "farmer",
            "painter",
            "architect",
        ],
        [
            "{name} works as a {value} .",
            "{name} is a {value} by trade .",
            "the profession of {name} is {value} .",
            "by trade , {name} is a {value} .",
        ],
        "q : what is the job of {name} ? a :",
    ),
}

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class Probe:
    """A question and its acceptable answers (the world's probes have one)."""

    prompt: str
    answers: tuple[str, ...]

    @property
    def answer(self) -> str:
        return self.answers[0]


@dataclass
class World:
    """The texts of one world, split the way training and evaluation use them."""

    general_bios: list[str]  # base pretraining text; later the replay pool
    general_qa_train: list[str]  # QA of half the general people, in pretraining
    general_heldout_bios: list[str]  # held-out paraphrases: the forgetting measure
    general_probes: list[Probe]  # QA of the other half: extraction on people never asked about
    domain_bios: list[str]  # the new knowledge a trial trains on
    domain_heldout_bios: list[str]  # held-out paraphrases of the new knowledge
    domain_probes: list[Probe]  # learn: QA on the new facts, never in training text


def build_world(cfg: WorldConfig) -> World:
    """Generate the world deterministically from `cfg.seed`."""
    rng = random.Random(cfg.seed)
    attributes = list(ATTRIBUTES)[: cfg.n_attributes]
    taken: set[str] = set()
    general_names = _unique_names(rng, cfg.n_general, SYLLABLES, taken)
    # domain names use only syllables the base model has seen, so no domain token is new to it
    seen = sorted({s for name in general_names for s in name.split()})
    names = general_names + _unique_names(rng, cfg.n_domain, seen, taken)
    people = [{a: rng.choice(ATTRIBUTES[a][0]) for a in attributes} for _ in names]
    # the template each person never sees in training, per attribute
    held = [{a: rng.randrange(cfg.n_templates) for a in attributes} for _ in names]

    def bio(i: int, heldout: bool) -> str:
        sentences = []
        for a in attributes:
            if heldout:
                t = held[i][a]
            else:
                t = rng.choice([t for t in range(cfg.n_templates) if t != held[i][a]])
            sentences.append(ATTRIBUTES[a][1][t].format(name=names[i], value=people[i][a]))
        rng.shuffle(sentences)
        return " ".join(sentences)

    def qa_text(i: int) -> list[str]:
        return [f"{p.prompt} {p.answer}" for p in probes(i)]

    def probes(i: int) -> list[Probe]:
        return [Probe(ATTRIBUTES[a][2].format(name=names[i]), (people[i][a],)) for a in attributes]

    general = range(cfg.n_general)
    domain = range(cfg.n_general, cfg.n_general + cfg.n_domain)
    qa_people = general[: cfg.n_general // 2]
    probe_people = general[cfg.n_general // 2 :]
    return World(
        general_bios=[bio(i, False) for i in general for _ in range(cfg.bios_per_person)],
        general_qa_train=[t for i in qa_people for t in qa_text(i)],
        general_heldout_bios=[bio(i, True) for i in general],
        general_probes=[p for i in probe_people for p in probes(i)],
        domain_bios=[bio(i, False) for i in domain for _ in range(cfg.bios_per_person)],
        domain_heldout_bios=[bio(i, True) for i in domain],
        domain_probes=[p for i in domain for p in probes(i)],
    )


def _unique_names(rng: random.Random, n: int, syllables: list[str], taken: set[str]) -> list[str]:
    """Names of four syllable tokens: new combinations of tokens every name shares."""
    names = []
    while len(names) < n:
        name = " ".join(rng.choice(syllables) for _ in range(4))
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def vocabulary() -> list[str]:
    """Every token any world can contain: specials, template words, values and name words."""
    words = set()
    for values, templates, question in ATTRIBUTES.values():
        for text in [*values, *templates, question]:
            words.update(w for w in text.split() if not w.startswith("{"))
    words.update(SYLLABLES)
    return list(SPECIAL_TOKENS.values()) + sorted(words)


def world_fingerprint(cfg: WorldConfig) -> str:
    recipe = json.dumps({"version": WORLD_VERSION, **dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE_DIR", "results/cache"))


def ensure_base_model(
    cfg: WorldConfig,
    cache_dir: Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """The directory of the world's base model, pretrained and saved on first use.

    The model is built in a temporary directory and moved into place whole, so an interrupted build
    never leaves a half-written cache behind, and concurrent workers simply use the first one ready.
    Its weights' fingerprint is recorded beside them (WEIGHTS_RECORD) and checked on every use: a
    damaged copy (a truncated file, a disk error) is rebuilt, with a one-line notice.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / f"base-{world_fingerprint(cfg)}"
    if (target / "config.json").exists():
        damage = _damage(target)
        if damage is None:
            return target
        print(f"base model cache {target}: {damage}; rebuilding it", file=sys.stderr, flush=True)
        aside = Path(tempfile.mkdtemp(prefix=".damaged-", dir=cache_dir))
        with contextlib.suppress(OSError):  # another worker moved it first
            target.rename(aside / target.name)  # out of the way whole: a process reading it keeps its files
        shutil.rmtree(aside, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        _pretrain(cfg, tmp, on_step)
        (tmp / WEIGHTS_RECORD).write_text(_weights_fingerprint(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another worker finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _damage(base_dir: Path) -> str | None:
    """What is wrong with a cached base model, or None. One cached before its fingerprint was
    recorded (an earlier lorasweep) gets it recorded now, as it is."""
    record = base_dir / WEIGHTS_RECORD
    try:
        found = _weights_fingerprint(base_dir)
        recorded = record.read_text().strip() if record.exists() else ""
    except OSError as err:
        return f"cannot read it ({err.__class__.__name__}: {err})"
    if not recorded:
        partial = record.with_name(f".{WEIGHTS_RECORD}.{os.getpid()}")
        with contextlib.suppress(OSError):  # a read-only cache is used as it is
            partial.write_text(found)
            partial.replace(record)  # whole: a worker starting beside this one never reads half
        return None
    if found != recorded:
        return f"its weights' fingerprint is {found}, not the {recorded} recorded when it was built"
    return None


def _weights_fingerprint(base_dir: Path) -> str:
    from lorasweep.modeling import weights_fingerprint  # imports torch: only once a model is used

    return weights_fingerprint(base_dir)


def _pretrain(cfg: WorldConfig, out: Path, on_step: Callable[[int, int], None] | None) -> None:
    import torch
    from transformers import LlamaForCausalLM

    from lorasweep.data import pack_epochs, tokenize_documents
    from lorasweep.train import train_loop

    tokenizer = make_tokenizer()
    world = build_world(cfg)
    docs = tokenize_documents(tokenizer, world.general_bios + world.general_qa_train)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(model_config(cfg, tokenizer))
    tokens_per_epoch = sum(len(d) for d in docs)
    steps = max(1, cfg.pretrain_epochs * tokens_per_epoch // (cfg.pretrain_batch_size * cfg.max_length))
    batches = pack_epochs(docs, cfg.pretrain_batch_size, cfg.max_length, steps, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.pretrain_lr, total_steps=steps)
    model.train()
    train_loop(model, batches, optimizer, scheduler, on_step=on_step and (lambda s: on_step(s, steps)))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "world.json").write_text(
        json.dumps({"version": WORLD_VERSION, "world": dataclasses.asdict(cfg)}, indent=2)
    )


def model_config(cfg: WorldConfig, tokenizer=None):
    """The transformers config of the world's base model (a small Llama)."""
    from transformers import LlamaConfig

    tokenizer = tokenizer or make_tokenizer()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 8 // 3 // 8 * 8,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def make_tokenizer():
    """A word-level `tokenizers` tokenizer, saved so that `AutoTokenizer.from_pretrained` loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Every text starts with <bos>, as a user's Llama tokenizer does; <eos> is added by packing.
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
