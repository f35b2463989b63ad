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
Both draw with Optuna's RandomSampler(seed=0) in the same parameter order, so they train the same
8 configurations: same steps, batch (16 x 64 tokens), cosine schedule with 10% warmup, clipping at
1.0, weight decay and fp32; the Trainer gets fused AdamW too (`optim="adamw_torch_fused"`) and the
very same token batches (lorasweep's packer and seed). Wall time per sweep, median over rounds.

Run it on cores nothing else uses: two torch processes on the same cores slow each other ~10x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
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


def run_lorasweep(steps: int, workdir: Path) -> dict:
    (workdir / "space.yaml").write_text(yaml.safe_dump(space(steps), sort_keys=False))
    url = f"sqlite:///{workdir}/lorasweep.db"
    command = ["lorasweep", "optimize", "--space", "space.yaml", "--storage", url]
    command += ["--n-trials", str(TRIALS), "--seed", "0", "--artifact-dir", str(workdir / "artifacts")]
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True, capture_output=True)
    wall = time.perf_counter() - start
    import optuna

    trials = optuna.load_study(study_name="default", storage=url).trials
    return {"wall_s": wall, "trials": [(t.params, t.values) for t in trials]}


def run_trainer(steps: int, workdir: Path) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "peer", "--steps", str(steps), "--workdir", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    return {"wall_s": wall, "trials": json.loads(out.stdout.strip().splitlines()[-1])}


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
    from lorasweep.trial import evaluate_model, prepare

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = TrialConfig(batch_size=16, max_length=64, max_steps=steps)
    prepared = prepare(config)
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

    class Measure(TrainerCallback):
        """learn and forget after training, with lorasweep's evaluation: the sweep's objective."""

        def on_train_end(self, args, state, control, model=None, **kwargs):
            metrics = evaluate_model(model.eval(), prepared)
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
    trials = optuna.load_study(study_name="trainer", storage=storage).trials
    print(json.dumps([(t.params, t.values) for t in trials]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "peer"])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.mode == "peer":
        peer(args.steps, args.workdir)
        return
    walls: dict[str, list[float]] = {"lorasweep": [], "Trainer": []}
    for i in range(args.rounds):
        arms = [("lorasweep", run_lorasweep), ("Trainer", run_trainer)]
        for name, run in arms if i % 2 == 0 else arms[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                result = run(args.steps, Path(tmp))
            walls[name].append(result["wall_s"])
            configs = [params for params, _ in result["trials"]]
            print(f"round {i + 1} {name}: {result['wall_s']:.1f} s; configs {configs}", flush=True)
    lorasweep, peer_wall = statistics.median(walls["lorasweep"]), statistics.median(walls["Trainer"])
    print("| sweep (8 trials) | lorasweep s | Trainer.hyperparameter_search s | ratio |")
    print("|---|---|---|---|")
    print(
        f"| {args.steps} steps each | {lorasweep:.0f} | {peer_wall:.0f} | **{lorasweep / peer_wall:.2f}x** |"
    )


if __name__ == "__main__":
    main()
