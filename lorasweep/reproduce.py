"""Take a recorded trial out of a study: run it again, or export what it trained.

    lorasweep reproduce --trial 7                # re-run, metrics beside the recorded ones
    lorasweep reproduce --best --tolerance 0.02  # on a GPU, where kernels are not bit-exact
    lorasweep export --best --out winner/        # the adapter (or full model), trial.yaml, model card

Both read the trial's recorded config and train it again through `run_trial`: a sweep keeps no
weights (hundreds of trials would not fit on disk), and on CPU training is deterministic, so the
re-run is the trial. The recorded fingerprints of the data and base weights say whether the
inputs are still the ones the trial saw.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lorasweep.config import TrialConfig, write_trial_yaml
from lorasweep.records import RERUN_ATTRS, TrialResult, recorded_metrics, require, trial_gaps
from lorasweep.study import best_trials, load_study
from lorasweep.validation import ConfigError

if TYPE_CHECKING:
    # torch, lorasweep.prepare and .trial load in seconds: imported where a trial trains, so a
    # trial that cannot run again is answered at once
    import torch

    from lorasweep.prepare import Prepared

COMPARED = ("learn", "forget", "general_loss", "domain_loss", "general_qa_acc")


def recorded_trial(
    study: optuna.Study, number: int | None, best: bool, purpose: str = "reproduce"
) -> optuna.trial.FrozenTrial:
    """Trial `number`, or with `best` the best feasible trial (constrained) or the front's top learner.

    It must have recorded what training it again needs (its config, and its metrics to compare
    with); else a one-line ConfigError names what it lacks, before anything loads.
    """
    if (number is None) == (not best):
        raise ConfigError("give either --trial N or --best")
    name = study.study_name
    if best:
        trials = best_trials(study)
        if not trials:
            raise ConfigError(f"study '{name}' has no completed (feasible) trial yet")
        frozen = trials[0]
    else:
        trials = study.get_trials(deepcopy=False)
        if not trials:
            raise ConfigError(f"--trial {number}: study '{name}' has no trials yet")
        if not 0 <= number < len(trials):
            raise ConfigError(f"--trial {number}: study '{name}' has trials 0..{len(trials) - 1}")
        frozen = trials[number]
    require(name, frozen, RERUN_ATTRS, purpose)
    return frozen


def trial_config(frozen: optuna.trial.FrozenTrial) -> TrialConfig:
    """The config a trial from `recorded_trial` recorded, with the thread count it ran with."""
    try:
        config = TrialConfig.from_dict(
            frozen.user_attrs["config"], f"trial {frozen.number}'s recorded config"
        )
    except ConfigError as err:
        # lorasweep recorded it valid: a field it no longer knows or allows is a version difference
        raise ConfigError(f"{err} (recorded by another lorasweep version)") from None
    if config.threads == 0 and frozen.user_attrs.get("threads"):
        # the thread count the trial ran with: CPU reductions split by thread are not bit-equal
        config = dataclasses.replace(config, threads=int(frozen.user_attrs["threads"]))
    return config


def rerun_target(
    storage: str, study: str | None, number: int | None, best: bool, purpose: str, trust_remote_code: bool
) -> tuple[optuna.trial.FrozenTrial, TrialConfig]:
    """The chosen trial of the study and the config it recorded, checked before anything loads:
    a trial whose model ships Python code runs again only with `trust_remote_code`."""
    frozen = recorded_trial(load_study(storage, study), number, best, purpose)
    config = trial_config(frozen)
    if config.trust_remote_code and not trust_remote_code:
        # the study may come from someone else: its record alone does not run a model's own code
        raise ConfigError(
            f"trial {frozen.number} recorded trust_remote_code: true (its model ships Python code); "
            f"pass --trust-remote-code to {purpose} it"
        )
    return frozen, config


def changed_inputs(frozen: optuna.trial.FrozenTrial, prepared: Prepared) -> tuple[list[str], list[str]]:
    """(what differs from the trial's recorded fingerprints, what the trial did not record)."""
    changed = []
    for attr, now, what in (
        ("data_fingerprint", prepared.corpus.fingerprint, "data"),
        ("base_fingerprint", prepared.base_fingerprint, "base model weights"),
    ):
        then = frozen.user_attrs.get(attr)
        if then is not None and then != now:
            changed.append(f"the {what} changed since trial {frozen.number} ({attr} {then} -> {now})")
    # an older lorasweep recorded neither fingerprints nor the thread count: the re-run goes ahead
    unrecorded = {
        "data_fingerprint": "cannot check whether the data changed (older lorasweep)",
        "base_fingerprint": "cannot check whether the base model weights changed (older lorasweep)",
    }
    if not frozen.user_attrs["config"].get("threads"):
        unrecorded["threads"] = (
            "the re-run uses this machine's thread count; on CPU the last digits may differ"
        )
    return changed, [str(gap) for gap in trial_gaps([frozen], unrecorded)]


def known_differences(config: TrialConfig, device: torch.device) -> list[str]:
    """Known reasons a trial recorded by an earlier lorasweep cannot give the same numbers here."""
    found = []
    if config.method == "qlora" and device.type == "cpu":
        found.append(
            "a qlora trial recorded on a CPU with AVX512-BF16 before 2026-11-30 ran bitsandbytes' "
            "repacked 4-bit path, which trains differently; lorasweep now runs the portable path on "
            "every CPU (README, 'Reproducing and exporting the best trial')"
        )
    return found


def compare(
    frozen: optuna.trial.FrozenTrial, result: TrialResult, tolerance: float
) -> list[tuple[str, float, float, bool]]:
    """(metric, recorded, now, within tolerance) for every compared metric both runs have."""
    rows = []
    for key, then in recorded_metrics(frozen, COMPARED).items():
        now = getattr(result, key)
        if now is not None:
            now = float(now)
            ok = math.isclose(then, now, rel_tol=0.0, abs_tol=tolerance) if tolerance else then == now
            rows.append((key, then, now, ok))
    return rows


def export_trial(
    frozen: optuna.trial.FrozenTrial,
    out: Path,
    merge: bool = False,
    cache_dir: Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrialResult:
    """Train the trial again and write its weights, `trial.yaml` and a model card into `out`.

    Adapter trials give a PEFT adapter (`adapter_model.safetensors`, `adapter_config.json`) that
    plain `PeftModel.from_pretrained(base, out)` loads; with `merge`, the adapter merged into the
    base, saved as a full model. Full fine-tuning gives the full model.
    """
    config = trial_config(frozen)
    if merge and config.method == "qlora":
        raise ConfigError(
            "--merge: a qlora trial's base is quantised, and merging into 4-bit weights loses the "
            "adapter's precision; export the adapter and merge it into the unquantised base"
        )
    if not merge and config.method == "dora" and mutates_base(config):
        raise ConfigError(
            f"a dora trial started with init_lora_weights '{config.init_lora_weights}' cannot be "
            "converted into an adapter on the original base (DoRA's magnitudes belong to the changed "
            "base); export it with --merge"
        )
    out.mkdir(parents=True, exist_ok=True)

    def save(model, prepared: Prepared) -> None:
        if merge and config.method != "full":
            model = model.merge_and_unload()
        if config.method != "full" and not merge and mutates_base(config):
            save_on_original_base(model, prepared, config, out)
        else:
            model.save_pretrained(out, safe_serialization=True)
        prepared.tokenizer.save_pretrained(out)

    from lorasweep.trial import run_trial

    result = run_trial(config, on_step=on_step, cache_dir=cache_dir, on_trained=save)
    write_trial_yaml(frozen.user_attrs["config"], out / "trial.yaml")
    (out / "README.md").write_text(model_card(frozen, result, merge))
    return result


def mutates_base(config: TrialConfig) -> bool:
    """PiSSA, OLoRA, CorDA and LoRA-GA start the adapter from components of the base weights (or of
    their inputs or gradients) and take them out of the base: the trained adapter belongs to that
    changed base."""
    return config.init_lora_weights.startswith(("pissa", "olora", "corda", "lora_ga"))


def save_on_original_base(model, prepared: Prepared, config: TrialConfig, out: Path) -> None:
    """The adapter as a plain LoRA adapter (rank 2r) on the original base, which plain PEFT loads
    (PEFT's conversion: the trained adapter minus the one the trial started from)."""
    import tempfile

    import torch

    from lorasweep.modeling import trial_model
    from lorasweep.trial import init_batches

    with tempfile.TemporaryDirectory() as initial_dir:
        # as run_trial starts the trial: the same seed, batches and device (a randomised SVD draws
        # from the device's generator), so the same initial adapter
        torch.manual_seed(config.seed)
        batches = init_batches(prepared, config)
        initial, _ = trial_model(prepared.base, config, prepared.base_dir, prepared.device, batches)
        initial.save_pretrained(initial_dir, safe_serialization=True)
        model.save_pretrained(
            out, safe_serialization=True, path_initial_model_for_weight_conversion=initial_dir
        )


def _adapter_line(config: dict, result: TrialResult) -> str:
    if config["method"] == "full":
        return ""
    if config["method"] == "peft":
        return f"PEFT config {config['peft_config']}, targets {result.target_modules_resolved}, "
    return f"rank {config['rank']}, alpha {config['alpha']:g}, targets {result.target_modules_resolved}, "


def model_card(frozen: optuna.trial.FrozenTrial, result: TrialResult, merge: bool) -> str:
    config = result.config  # resolved by this run (alpha set), whichever version recorded the trial
    adapter = config["method"] != "full" and not merge
    what = (
        "PEFT adapter"
        if adapter
        else "merged model"
        if config["method"] != "full"
        else "fully fine-tuned model"
    )
    lines = [
        f"# lorasweep trial {frozen.number}: {config['method']} ({what})",
        "",
        f"Exported by `lorasweep export` from trial {frozen.number} of an Optuna study, trained again from",
        "its recorded config (`trial.yaml`, runnable with `lorasweep run --config trial.yaml`).",
        "",
        "| metric | recorded in the study | this export's run |",
        "|---|---|---|",
    ]
    for key, then, now, _ in compare(frozen, result, tolerance=float("inf")):
        lines.append(f"| {key} | {then:.4f} | {now:.4f} |")
    lines += [
        "",
        "learn: exact match on held-out probes about the new knowledge; forget: increase of the loss",
        "on held-out general text over the base model (nats/token).",
        "",
        "## Provenance",
        "",
        f"- base model: `{result.base_model}` (weights sha256 {result.base_fingerprint})",
        f"- data fingerprint: {result.data_fingerprint}",
        f"- method {config['method']}, learning rate {config['learning_rate']:g}, "
        + _adapter_line(config, result)
        + f"{result.train_steps} steps, seed {config['seed']}, {result.dtype} on {result.device}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result.versions.items()),
        "",
        "## Loading",
        "",
        "```python",
    ]
    if adapter:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{result.base_model}")',
            'model = PeftModel.from_pretrained(base, "<this directory>")',
            'tokenizer = AutoTokenizer.from_pretrained("<this directory>")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("<this directory>")',
            'tokenizer = AutoTokenizer.from_pretrained("<this directory>")',
        ]
    return "\n".join([*lines, "```", ""])
