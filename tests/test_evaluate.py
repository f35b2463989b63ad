import copy
from types import SimpleNamespace

import torch

from lorasweep.config import TrialConfig
from lorasweep.data import IGNORE, Batch
from lorasweep.evaluate import exact_match, mean_loss, row_losses
from lorasweep.modeling import trial_model
from lorasweep.prepare import evaluate_model


class FixedPredictions(torch.nn.Module):
    """Predicts, at every position, the token given in `predictions` (one row per input row)."""

    def __init__(self, predictions: torch.Tensor, vocab: int = 10):
        super().__init__()
        self.predictions = predictions
        self.vocab = vocab
        self.config = SimpleNamespace(vocab_size=vocab)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(self.predictions, self.vocab).float() * 10)


def probe_batch() -> Batch:
    # rows: prompt [1, 5] then a two-token answer [7, 8] and EOS 2; only answer + EOS are scored
    ids = torch.tensor([[1, 5, 7, 8, 2], [1, 5, 7, 8, 2], [1, 5, 7, 8, 2]])
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, 2]] * 3)
    return Batch(ids, torch.ones_like(ids), labels)


def test_exact_match_needs_every_answer_token_and_the_eos():
    # position t predicts token t+1; the last position predicts nothing
    predictions = torch.tensor(
        [
            [0, 7, 8, 2, 0],  # all right
            [0, 7, 3, 2, 0],  # second answer token wrong
            [0, 7, 8, 9, 0],  # answer right but does not stop
        ]
    )
    assert exact_match(FixedPredictions(predictions), [probe_batch()]) == 1 / 3


def test_exact_match_ignores_unscored_positions():
    predictions = torch.tensor([[4, 7, 8, 2, 4]] * 3)  # wrong only where nothing is scored
    assert exact_match(FixedPredictions(predictions), [probe_batch()]) == 1.0


def test_mean_loss_is_nats_per_scored_token():
    predictions = torch.tensor([[0, 7, 8, 2, 0]] * 3)
    model = FixedPredictions(predictions)
    logits = torch.nn.functional.one_hot(predictions, 10).float() * 10
    expected = -torch.log_softmax(logits[0, 1], -1)[7]  # every scored token is predicted alike
    assert abs(mean_loss(model, [probe_batch()]) - float(expected)) < 1e-6


def test_forget_of_unchanged_base_model_is_zero(prepared):
    again = evaluate_model(copy.deepcopy(prepared.base), prepared)
    assert again["general_loss"] - prepared.base_metrics["general_loss"] == 0.0
    # a fresh LoRA adapter starts as the identity (B = 0): nothing forgotten before training
    lora, _ = trial_model(prepared.base, TrialConfig(method="lora", rank=4, alpha=8.0), prepared.base_dir)
    assert evaluate_model(lora, prepared)["general_loss"] == prepared.base_metrics["general_loss"]


def test_batches_whose_logits_would_be_large_are_evaluated_a_few_rows_at_a_time(prepared, monkeypatch):
    from lorasweep import evaluate

    model = copy.deepcopy(prepared.base).eval()
    losses, hits = row_losses(model, prepared.general_heldout), exact_match(model, prepared.general_probes)
    calls = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or forward(*a, **k)
    )
    # logits of two rows at a time: a 128-row batch of a 128k vocabulary, scaled down
    length = prepared.general_heldout[0].input_ids.shape[1]
    monkeypatch.setattr(evaluate, "EVAL_LOGITS_BYTES", 2 * length * model.config.vocab_size * 4)
    chunked = row_losses(model, prepared.general_heldout)
    assert (
        calls
        and max(calls) == 2
        and sum(calls) == sum(b.input_ids.shape[0] for b in prepared.general_heldout)
    )
    # the same bits on a CPU, so a study recorded before chunking reproduces exactly
    assert torch.equal(chunked[0], losses[0]) and torch.equal(chunked[1], losses[1])
    assert exact_match(model, prepared.general_probes) == hits
