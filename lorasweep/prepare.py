"""What every trial on one base model and data set reads and never changes, loaded once per process.

`prepare(config)` loads the base model (building the embedded world's on first use), tokenises
the data and measures the base model itself, once for each combination of the config fields that
shape this (`TrialConfig.prepare_fields`); every later trial with the same fields starts from the
in-memory copy.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorasweep.config import TrialConfig
from lorasweep.corpus import Corpus, load_corpus
from lorasweep.data import Batch, loss_batches, probe_batches, tokenize_documents
from lorasweep.evaluate import answer_length, exact_match, generated_match, loss_of, mean_loss, row_losses
from lorasweep.modeling import load_base, resolve_device, resolve_dtype, weights_fingerprint
from lorasweep.token_store import TokenStore, token_store
from lorasweep.validation import ConfigError
from lorasweep.world import Probe, default_cache_dir, ensure_base_model

EVAL_BATCH_SIZE = 128
HELDOUT_TOKENS_MAX = 2_000_000  # of held-out general text: more and evaluation dominates a trial
EVAL_CONTEXT = 1024  # longest evaluation row, in tokens: longer held-out documents are cut


@dataclass
class Prepared:
    """What every trial on one base model and data set reads and never changes."""

    base: torch.nn.Module  # on the CPU; each trial copies it to `device`
    tokenizer: object
    base_dir: str | Path  # what `from_pretrained` loads the base from (QLoRA reloads it)
    device: torch.device
    corpus: Corpus
    base_fingerprint: str  # of the base model's weights
    train_docs: TokenStore  # domain text, memory-mapped
    replay_docs: TokenStore  # general text for replay, disjoint from general_heldout
    domain_probes: list  # batches for teacher-forced scoring, or the user's probes to generate on
    domain_heldout: list[Batch]
    general_probes: list[Batch]
    general_heldout_docs: list[list[int]]  # the forgetting measure, cut to the evaluation context
    general_heldout: list[Batch]
    base_metrics: dict[str, float] = field(default_factory=dict)
    base_general_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # the base's NLL, tokens per row
    _checkpoint_sets: dict[float, tuple[list, list[Batch], float]] = field(default_factory=dict)

    def learn(self, model: torch.nn.Module, probes: list) -> float:
        if self.corpus.user_probes:
            return generated_match(model, self.tokenizer, probes, EVAL_BATCH_SIZE)
        return exact_match(model, probes)

    def checkpoint_sets(self, fraction: float) -> tuple[list, list[Batch], float]:
        """Domain probes, general held-out text and the base's loss on that text, for intermediate
        evaluations: the first `fraction` of each (the world's people come in random order, a
        user's files in file order), so evaluating during training stays cheap. The final
        evaluation always uses every probe and document.
        """
        if fraction not in self._checkpoint_sets:
            probes = self.corpus.domain_probes[: max(1, round(fraction * len(self.corpus.domain_probes)))]
            docs = max(1, round(fraction * len(self.general_heldout_docs)))
            nll, tokens = self.base_general_rows
            self._checkpoint_sets[fraction] = (
                _probe_set(self.corpus, self.tokenizer, probes),
                loss_batches(self.general_heldout_docs[:docs], EVAL_BATCH_SIZE, self.tokenizer.pad_token_id),
                float(nll[:docs].sum() / tokens[:docs].sum()),
            )
        return self._checkpoint_sets[fraction]


def _probe_set(corpus: Corpus, tokenizer, probes: list[Probe]) -> list:
    """The world's probes as batches (teacher-forced scoring); a user's as they are (generation)."""
    return probes if corpus.user_probes else probe_batches(tokenizer, probes, EVAL_BATCH_SIZE)


_PREPARED: dict[tuple, Prepared] = {}


def prepare(
    config: TrialConfig,
    cache_dir: Path | None = None,
    on_build_step: Callable[[int, int], None] | None = None,
    on_tokens: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
    measured: tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Prepared:
    """Load the base model and data of `config` (building the world's base model on first use).

    The training texts (domain and replay) are tokenised once into token stores under
    `cache_dir`/tokens and memory-mapped (token_store.py); `on_tokens(documents, tokens)` follows
    a store's build.

    Done once per process for each value of the config's `prepare_fields` (device and dtype as
    they resolve on this machine, so `auto` and what it means share one copy). A shard of a
    sharded trial passes its own `device`, and the base's measures (`base_metrics`,
    `base_general_rows`) its parent took, which it then does not take again.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    device = device or resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    shaping = config.prepare_fields() | {"device": str(device), "dtype": str(dtype)}
    key = (str(cache_dir.resolve()), repr(sorted(shaping.items())))
    if key not in _PREPARED:
        hub_offline()
        corpus = load_corpus(config, cache_dir)  # before the model: a bad data file fails fast
        if config.model is None:
            base_dir: str | Path = ensure_base_model(config.world, cache_dir, on_build_step)
        else:
            base_dir = config.model
        base, tokenizer = load_base(base_dir, dtype, config.trust_remote_code, config.attn_implementation)
        context = min(getattr(base.config, "max_position_embeddings", None) or EVAL_CONTEXT, EVAL_CONTEXT)
        _check_probes_fit(corpus, tokenizer, context)
        general_docs = _chunks(_heldout_documents(tokenizer, corpus.general_heldout, config), context)

        def stored(texts: list[str], part: str) -> TokenStore:
            key = corpus.parts.get(part) or f"{corpus.fingerprint}/{part}"  # the world: its own
            return token_store(lambda: texts, tokenizer, cache_dir, key, on_tokens)

        prepared = Prepared(
            base=base,
            tokenizer=tokenizer,
            base_dir=base_dir,
            device=device,
            corpus=corpus,
            base_fingerprint=weights_fingerprint(base_dir),
            train_docs=stored(corpus.domain_train, "domain_train"),
            replay_docs=stored(corpus.replay, "replay"),
            domain_probes=_probe_set(corpus, tokenizer, corpus.domain_probes),
            domain_heldout=_loss_batches(tokenizer, corpus.domain_heldout, context),
            general_probes=probe_batches(tokenizer, corpus.general_probes, EVAL_BATCH_SIZE),
            general_heldout_docs=general_docs,
            general_heldout=loss_batches(general_docs, EVAL_BATCH_SIZE, tokenizer.pad_token_id),
        )
        # measured once: forget of every trial is relative to these
        if measured is None:
            on_device = base if device.type == "cpu" else copy.deepcopy(base).to(device)
            rows = row_losses(on_device, prepared.general_heldout)  # scored once: the loss is theirs
            measured = evaluate_model(on_device, prepared, general_rows=rows), rows
            del on_device
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the device's memory is the trials' (memory.check_fits)
        prepared.base_metrics, prepared.base_general_rows = measured
        _PREPARED[key] = prepared
    return _PREPARED[key]


def consumed(prepared: Prepared) -> None:
    """`prepared`'s base became a trial's model (a shard's: trial_model's own_base): no later
    `prepare` in this process hands it out again."""
    for key in [k for k, v in _PREPARED.items() if v is prepared]:
        del _PREPARED[key]


def _heldout_documents(tokenizer, texts: list[str], config: TrialConfig) -> list[list[int]]:
    """The held-out general text's token ids; one line and no tokenising past HELDOUT_TOKENS_MAX
    tokens, where every evaluation would outlast the training between two of them."""
    docs: list[list[int]] = []
    tokens = 0
    for start in range(0, len(texts), 1024):
        batch = tokenize_documents(tokenizer, texts[start : start + 1024])
        docs += batch
        tokens += sum(map(len, batch))
        if tokens > HELDOUT_TOKENS_MAX:
            suggested = max(1, len(docs) * HELDOUT_TOKENS_MAX // (4 * tokens))
            raise ConfigError(
                f"field 'general_heldout': {config.general_heldout:.15g} of {config.general} holds out "
                f"{len(texts):,} documents, over {HELDOUT_TOKENS_MAX:,} tokens: every evaluation would "
                f"outlast training; hold out a number of documents instead, e.g. general_heldout: {suggested} "
                "(a trial recorded with more cannot be re-run by this lorasweep)"
            )
    return docs


def hub_offline() -> None:
    """From the first load on, the Hugging Face libraries in this process never download: models and
    hub datasets come from the local cache only, for the CLI and for code that calls lorasweep,
    unless the user set HF_HUB_OFFLINE themselves.

    huggingface_hub and datasets read HF_HUB_OFFLINE when first imported: the variable covers a
    later import, and the flags of one that came earlier (a caller's own import) are set too.
    """
    if "HF_HUB_OFFLINE" in os.environ:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module in ("huggingface_hub.constants", "datasets.config"):
        if module in sys.modules:
            sys.modules[module].HF_HUB_OFFLINE = True


def _chunks(docs: list[list[int]], length: int) -> list[list[int]]:
    """Documents longer than the evaluation context, cut into pieces that fit."""
    return [doc[i : i + length] for doc in docs for i in range(0, len(doc), length)]


def _loss_batches(tokenizer, texts: list[str], context: int) -> list[Batch]:
    docs = _chunks(tokenize_documents(tokenizer, texts), context)
    return loss_batches(docs, EVAL_BATCH_SIZE, tokenizer.pad_token_id)


def _check_probes_fit(corpus: Corpus, tokenizer, context: int) -> None:
    for i, probe in enumerate(corpus.domain_probes, start=1):
        prompt = len(tokenizer(probe.prompt, add_special_tokens=True)["input_ids"])
        answer = max(answer_length(tokenizer, probe.prompt, a) for a in probe.answers)
        if prompt + answer + 1 > context:
            raise ConfigError(
                f"field 'probes': probe {i} takes {prompt + answer + 1} tokens with its answer; "
                f"the evaluation context is {context}"
            )


def evaluate_model(
    model: torch.nn.Module, prepared: Prepared, general_rows: tuple[torch.Tensor, torch.Tensor] | None = None
) -> dict[str, float]:
    """learn and the general loss (from `general_rows`, the model's row_losses of the general
    held-out text, where given); the world's held-out domain loss and general QA where it has them."""
    metrics = {
        "learn": prepared.learn(model, prepared.domain_probes),
        "general_loss": loss_of(general_rows or row_losses(model, prepared.general_heldout)),
    }
    if prepared.domain_heldout:
        metrics["domain_loss"] = mean_loss(model, prepared.domain_heldout)
    if prepared.general_probes:
        metrics["general_qa_acc"] = exact_match(model, prepared.general_probes)
    return metrics
