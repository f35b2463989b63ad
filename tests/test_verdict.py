"""The verdict's wording and numbers, on studies built from constructed trials."""

import copy

import optuna
import pytest
import yaml
from conftest import TINY_SPACE

from lorasweep.replicates import REPLICATE_OF, REPLICATE_SEED
from lorasweep.search_space import load_space
from lorasweep.study import open_study
from lorasweep.verdict import summary, verdict

METHOD = optuna.distributions.CategoricalDistribution(["lora", "full"])


def study_of(tmp_path, name: str, **top) -> optuna.Study:
    space = copy.deepcopy(TINY_SPACE) | {"compare": "method", "baselines": []} | top
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return open_study(name, f"sqlite:///{tmp_path}/s.db", load_space(path), seed=0)


def configuration(study, method: str, lr: float, seeds: list[tuple[float, float]]) -> int:
    """A searched trial and its replicates: (learn, forget) per seed, the searched one first."""
    config = {"method": method, "learning_rate": lr, "rank": 4, "alpha": 8, "target_modules": "all-linear"}
    number = len(study.trials)
    for i, values in enumerate(seeds):
        attrs = {"config": {**config, "seed": i}}
        if i:
            attrs |= {REPLICATE_OF: number, REPLICATE_SEED: i}
        study.add_trial(
            optuna.create_trial(
                params={"method": method},
                distributions={"method": METHOD},
                values=list(values),
                user_attrs=attrs,
            )
        )
    return number


def test_a_study_with_one_arm_missing_says_what_it_needs(tmp_path):
    study = study_of(tmp_path, "one_arm")
    configuration(study, "lora", 3e-3, [(0.61, 0.57)])
    found = verdict(study)
    assert found.winner is None and found.missing == ["full FT"]
    assert found.lines == [
        "Verdict on method (learn and forget as mean ± sd over seeds):",
        "- LoRA: lora r=4 a=8 all-linear lr=3.0e-03 (trial 0, 1 seed, not replicated): learn 0.610, forget +0.570",
        "- full FT: no completed configuration yet",
        "",
        "Every arm needs a completed configuration: lorasweep optimize adds trials.",
        "Seed noise is not measured on every arm: lorasweep confirm replicates the leaders.",
    ]
    empty = verdict(study_of(tmp_path, "empty"))
    assert empty.arms == [] and "no completed configuration" in empty.lines[-1]


FULL = [(0.79, 0.61), (0.83, 0.65), (0.84, 0.63)]  # learn 0.820 ± 0.026, forget +0.630 ± 0.020
LORA = [(0.61, 0.55), (0.64, 0.57), (0.66, 0.58)]  # learn 0.637 ± 0.025, forget +0.567 ± 0.015


def test_replicated_arms_name_a_winner_only_beyond_seed_noise(tmp_path):
    study = study_of(tmp_path, "trade_off")
    configuration(study, "full", 1e-3, FULL)
    lora = configuration(study, "lora", 3e-3, LORA)
    found = verdict(study)
    assert [a.name for a in found.arms] == ["full FT", "LoRA"]
    assert found.arms[0].learn.text() == "0.820 ± 0.026" and found.arms[0].learn.n == 3
    assert found.lines[1:4] == [
        (
            "Compared at equal forgetting: each at its best learner with forget <= +0.567, the least any "
            "arm's top learner forgets."
        ),
        "- full FT: full lr=1.0e-03 (trial 0, 3 seeds): learn 0.820 ± 0.026, forget +0.630 ± 0.020",
        "- LoRA: lora r=4 a=8 all-linear lr=3.0e-03 (trial 3, 3 seeds): learn 0.637 ± 0.025, forget +0.567 ± 0.015",
    ]
    # full FT has no configuration that forgets as little as LoRA's: it learns more and forgets
    # more, both beyond noise
    assert found.winner is None
    assert found.lines[5] == (
        "No single winner, a trade-off: full FT learns more than LoRA by +0.183 (Welch's t-test "
        "p = 0.000974, beyond seed noise) and forgets more by 0.063 (p = 0.014, beyond seed noise); "
        "a forget tolerance (--forget-tolerance) picks one."
    )
    assert summary(found)["arms"][1] | {"learn_sd": None, "forget_sd": None} == {
        "arm": "LoRA",
        "trial": lora,
        "seeds": 3,
        "learn_mean": pytest.approx(0.63667, abs=1e-5),
        "learn_sd": None,
        "forget_mean": pytest.approx(0.56667, abs=1e-5),
        "forget_sd": None,
        "diverged": 0,
    }
    tolerant = verdict(study, tolerance=0.6)  # within forget <= 0.6 only LoRA has a configuration
    assert tolerant.missing == ["full FT"] and "within forget <= 0.6" in tolerant.lines[0]

    # a LoRA trial that learned more by forgetting far more sets a higher bar: full FT meets it,
    # and at equal forgetting learn decides
    configuration(study, "lora", 1e-2, [(0.70, 1.1)])
    configuration(study, "lora", 5e-3, [(0.68, 0.56)])  # one lucky seed within the bar
    found = verdict(study)
    assert found.bar == 0.63 and found.winner == "full FT"
    assert found.lines[5] == (
        "full FT wins at equal forgetting: full FT learns more than LoRA by +0.183 (Welch's t-test "
        "p = 0.000974, beyond seed noise) and forgets more by 0.063 (p = 0.014, beyond seed noise); "
        "both within forget <= +0.630."
    )
    assert found.lines[6].startswith("LoRA's trial 7 learned 0.680 with one seed, more than the mean above")

    dominant = study_of(tmp_path, "dominant")  # learns more beyond noise, forgets as much
    configuration(dominant, "full", 1e-3, [(0.79, 0.58), (0.83, 0.56), (0.84, 0.57)])
    configuration(dominant, "lora", 3e-3, LORA)
    found = verdict(dominant)
    assert found.winner == "full FT"
    assert found.lines[5].startswith("full FT wins: full FT learns more than LoRA by +0.183")
    assert found.lines[5].endswith("forgets more by 0.003 (p = 0.77, within seed noise).")

    close = study_of(tmp_path, "close")
    configuration(close, "full", 1e-3, [(0.70, 0.61), (0.60, 0.65)])
    configuration(close, "lora", 3e-3, [(0.66, 0.55), (0.62, 0.57)])
    found = verdict(close)
    assert found.winner is None
    assert found.lines[-1].startswith(
        "No winner: full FT learns more than LoRA by +0.010 (Welch's t-test p = "
    )
