"""A whole sweep: lorasweep vs `transformers.Trainer.hyperparameter_search` (issue 7, item 2).

    python benchmarks/sweep_vs_trainer.py                       # 3 rounds, alternating; the table
    python benchmarks/sweep_vs_trainer.py --steps 5 --rounds 1  # a quick look

The same 8-trial question on the embedded default, asked both ways, each as a fresh process (so
both pay their imports, the base model load and the study):
- lorasweep: `lorasweep optimize --n-trials 8` on the space below (its defaults otherwise: the
  learning curve evaluated at eval_points, fused AdamW, no pruner);
- Trainer: `Trainer.hyperparameter_search(backend="optuna", n_trials=8)` with `model_init(trial)`
  building LoRA (rank from the trial) or full FT on a copy of the same in-memory base model,
  `hp_space` giving the same parameters, and the same learn and forget computed after training
  (lorasweep's own evaluation code, in a callback, so both sides pay the same final evaluation).
The Trainer draws with Optuna's RandomSampler(seed=0); lorasweep's study gets those 8 draws
enqueued before the clock starts, so both train the same 8 configurations: same steps, batch (16 x 64 tokens), cosine schedule with 10% warmup, clipping at
1.0, weight decay and fp32; the Trainer gets fused AdamW too (`optim="adamw_torch_fused"`) and the
very same token batches (lorasweep's packer and seed). Wall time per sweep, median over rounds,
and where it goes: in trials (Optuna's start and end times, summed over trials), of that in
evaluation (lorasweep: its learning-curve points and the final evaluation of completed trials;
Trainer: the final evaluation), and outside trials (imports, base model, study, sampler).

`--workers` and `--pruner` change the lorasweep side only: its workers share the cores the command
has (one torch thread each), and the dominance pruner stops dominated trials at an intermediate
evaluation. The Trainer side then runs as a Trainer user runs it on those cores (one process, a
torch thread per core). Both sides share the base-model cache under results/cache.

Run it on cores nothing else uses: two torch processes on the same cores slow each other ~10x.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "results" / "cache"
TRIALS = 8
STEPS = 146  # the default space's 150k training tokens at 16 x 64
LORA_LR = (3.0e-4, 3.0e-2)
FULL_LR = (3.0e-5, 3.0e-3)
RANK = (4, 64)


def space(steps: int) -> dict:
    """The question as a lorasweep space: its params drawn in the order `hp_space` draws them."""
    return {
        "config": {
            "max_steps": steps,
            "batch_size": 16,
            "max_length": 64,
            "schedule": "cosine",
            "warmup_ratio": 0.1,
            "target_modules": "all-linear",
            "alpha_ratio": 2.0,
        },
        "params": {
            "method": {"choices": ["lora", "full"]},
            "rank": {"type": "int", "low": RANK[0], "high": RANK[1], "log": True, "when": {"method": "lora"}},
            "lora_learning_rate": {
                "field": "learning_rate",
                "low": LORA_LR[0],
                "high": LORA_LR[1],
                "log": True,
                "when": {"method": "lora"},
            },
            "full_learning_rate": {
                "field": "learning_rate",
                "low": FULL_LR[0],
                "high": FULL_LR[1],
                "log": True,
                "when": {"method": "full"},
            },
        },
        "sampler": {"name": "random"},
    }


def hp_space(trial) -> dict:
    """The same draws as the space above; `learning_rate` is what Trainer sets on its arguments."""
    method = trial.suggest_categorical("method", ["lora", "full"])
    if method == "lora":
        trial.suggest_int("rank", *RANK, log=True)
        return {"learning_rate": trial.suggest_float("lora_learning_rate", *LORA_LR, log=True)}
    return {"learning_rate": trial.suggest_float("full_learning_rate", *FULL_LR, log=True)}


def peer_draws() -> list[dict]:
    """The 8 configurations the Trainer side's RandomSampler(seed=0) draws, as Optuna params."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(TRIALS):
        trial = study.ask()
        hp_space(trial)
        study.tell(trial, 0.0)
    return [t.params for t in study.trials]


def run_lorasweep(steps: int, workdir: Path, workers: int, pruner: str) -> dict:
    import optuna

    from lorasweep.search_space import load_space
    from lorasweep.study import open_study

    (workdir / "space.yaml").write_text(
        yaml.safe_dump({**space(steps), "pruner": {"name": pruner}}, sort_keys=False)
    )
    url = f"sqlite:///{workdir}/lorasweep.db"
    study = open_study("default", url, load_space(workdir / "space.yaml"), seed=0)
    for params in peer_draws():
        study.enqueue_trial(params)
    command = ["lorasweep", "optimize", "--space", "space.yaml", "--storage", url, "--cache-dir", str(CACHE)]
    command += ["--n-trials", str(TRIALS), "--seed", "0", "--artifact-dir", str(workdir / "artifacts")]
    command += ["--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name="default", storage=url).trials
    eval_s = sum(t.user_attrs.get("eval_s", 0.0) for t in trials)
    return {"wall_s": wall, **phases(trials, wall, eval_s)}


def run_trainer(steps: int, workdir: Path) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "peer", "--steps", str(steps), "--workdir", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    import optuna

    trials = optuna.load_study(study_name="trainer", storage=f"sqlite:///{workdir}/trainer.db").trials
    return {"wall_s": wall, **phases(trials, wall, float(out.stdout.strip().splitlines()[-1]))}


def phases(trials: list, wall: float, eval_s: float) -> dict:
    """Where a sweep's time went, from Optuna's record of its trials."""
    in_trials = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return {
        "trials": [(t.params, t.state.name, t.values) for t in trials],
        "trial_s": in_trials,
        "eval_s": eval_s,
        "outside_s": wall - in_trials,  # negative when workers' trials overlap: not measurable
    }


def peer(steps: int, workdir: Path) -> None:
    """The sweep as a Trainer user writes it; prints each trial's (params, values) as JSON."""
    import copy

    import optuna
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lorasweep.config import TrialConfig
    from lorasweep.data import pack_epochs
    from lorasweep.modeling import target_modules
    from lorasweep.prepare import evaluate_model, prepare

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = TrialConfig(batch_size=16, max_length=64, max_steps=steps)
    prepared = prepare(config, CACHE)
    rows = [row for batch in pack_epochs(prepared.train_docs, 16, 64, steps, config.seed) for row in batch]
    dataset = [{"input_ids": row, "labels": row} for row in rows]

    def model_init(trial):
        model = copy.deepcopy(prepared.base).train()
        if trial is not None:
            hp_space(trial)  # Trainer builds the model before it applies hp_space; a draw repeats
        if trial is None or trial.params["method"] == "full":
            return model
        rank = trial.params["rank"]
        modules = target_modules(prepared.base, "all-linear")
        lora = LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=modules, task_type="CAUSAL_LM"
        )
        return get_peft_model(model, lora)

    eval_s = 0.0

    class Measure(TrainerCallback):
        """learn and forget after training, with lorasweep's evaluation: the sweep's objective."""

        def on_train_end(self, args, state, control, model=None, **kwargs):
            nonlocal eval_s
            start = time.perf_counter()
            metrics = evaluate_model(model.eval(), prepared)
            eval_s += time.perf_counter() - start
            trainer.objective = (
                metrics["learn"],
                metrics["general_loss"] - prepared.base_metrics["general_loss"],
            )

    args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        per_device_train_batch_size=16,
        max_steps=steps,
        lr_scheduler_type="cosine",
        warmup_steps=round(0.1 * steps),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch_fused",
        seed=config.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model_init=model_init, args=args, train_dataset=dataset, callbacks=[Measure()])
    storage = f"sqlite:///{workdir}/trainer.db"  # as lorasweep records its trials: fair, and readable
    trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda _metrics: trainer.objective,
        n_trials=TRIALS,
        direction=["maximize", "minimize"],
        backend="optuna",
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name="trainer",
    )
    print(eval_s)


def seconds(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f} s" if value >= 0 else "- (trials overlap)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "peer"])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--workers", type=int, default=1, help="lorasweep's --workers")
    parser.add_argument("--pruner", default="none", choices=["none", "dominance"], help="lorasweep's pruner")
    args = parser.parse_args()
    if args.mode == "peer":
        peer(args.steps, args.workdir)
        return
    results: dict[str, list[dict]] = {"lorasweep": [], "Trainer": []}
    arms = [
        ("lorasweep", lambda workdir: run_lorasweep(args.steps, workdir, args.workers, args.pruner)),
        ("Trainer", lambda workdir: run_trainer(args.steps, workdir)),
    ]
    for i in range(args.rounds):
        for name, run in arms if i % 2 == 0 else arms[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                result = run(Path(tmp))
            results[name].append(result)
            print(
                f"round {i + 1} {name}: {result['wall_s']:.1f} s (in trials {result['trial_s']:.1f} s, "
                f"evaluation {result['eval_s']:.1f} s, outside trials {seconds(result['outside_s'])}); "
                f"trials {result['trials']}",
                flush=True,
            )
    medians = {
        name: {
            key: statistics.median(r[key] for r in runs)
            for key in ("wall_s", "trial_s", "eval_s", "outside_s")
        }
        for name, runs in results.items()
    }
    ours, theirs = medians["lorasweep"], medians["Trainer"]
    print(f"| {TRIALS} trials, {args.steps} steps each | lorasweep | Trainer.hyperparameter_search | ratio |")
    print("|---|---|---|---|")
    for key, label in [
        ("wall_s", "wall time"),
        ("trial_s", "in trials (trial-seconds)"),
        ("eval_s", "of which in evaluation"),
        ("outside_s", "outside trials"),
    ]:
        ratio = f"{ours[key] / theirs[key]:.2f}x" if ours[key] >= 0 and theirs[key] > 0 else "-"
        print(f"| {label} | {seconds(ours[key], 0)} | {seconds(theirs[key], 0)} | {ratio} |")


if __name__ == "__main__":
    main()
