"""Replicates: leaders trained again with other seeds, tagged, hidden from the sampler, topped up."""

import copy

import optuna
import optuna_dashboard
import yaml
from conftest import TINY_SPACE, invoke, optimize

from lorasweep.analysis import rows_of
from lorasweep.confirm import queue_replicates
from lorasweep.replicates import REPLICATE_OF, REPLICATE_SEED, WithoutReplicates
from lorasweep.search_space import load_space
from lorasweep.study import best_trials, queue_arm

X = optuna.distributions.FloatDistribution(0.0, 1.0)
KIND = optuna.distributions.CategoricalDistribution(["a", "b"])


def history(storage: str, name: str, replicates: bool) -> optuna.Study:
    """Twelve searched trials on (x, kind); with `replicates`, five replicates of trial 0 besides,
    with values far from its own (what other seeds of a noisy configuration may give)."""
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    for i in range(12):
        x, kind = (i * 0.37) % 1, "ab"[i % 2]
        values = [x if kind == "a" else 1 - x, (x - 0.3) ** 2]
        params, distributions = {"x": x, "kind": kind}, {"x": X, "kind": KIND}
        study.add_trial(optuna.create_trial(params=params, distributions=distributions, values=values))
    if replicates:
        first = study.trials[0]
        for seed in range(1, 6):
            attrs = {REPLICATE_OF: 0, REPLICATE_SEED: seed}
            study.add_trial(
                optuna.create_trial(
                    params=first.params,
                    distributions=first.distributions,
                    values=[0.99, 0.0],
                    user_attrs=attrs,
                )
            )
    return study


def draws(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> list[tuple]:
    study.sampler = sampler
    drawn = []
    for _ in range(4):
        trial = study.ask()
        drawn.append((trial.suggest_float("x", 0.0, 1.0), trial.suggest_categorical("kind", ["a", "b"])))
        study.tell(trial, [0.5, 0.5])
    return drawn


def tpe() -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=3, n_startup_trials=4, multivariate=True, group=True, constant_liar=True
    )


def test_the_sampler_draws_as_if_replicates_were_not_there(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    without = draws(history(url, "without", replicates=False), WithoutReplicates(tpe()))
    hidden = draws(history(url, "hidden", replicates=True), WithoutReplicates(tpe()))
    assert hidden == without
    seen = draws(history(url, "seen", replicates=True), tpe())  # Optuna's own sampler sees them
    assert seen != without


def test_optimize_replicates_each_arms_leader_and_confirm_tops_up(tmp_path, cache_dir, prepared):
    space = copy.deepcopy(TINY_SPACE) | {"compare": "method"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    url = optimize(tmp_path, "space.yaml", "--n-trials", "4", "--replicates", "2")
    study = optuna.load_study(study_name="default", storage=url)
    searched, replicas = study.trials[:4], study.trials[4:]
    leaders = {t.user_attrs[REPLICATE_OF] for t in replicas}
    n = len(study.trials)
    assert (
        n == 4 + 2 * len(leaders) and [t.state.name for t in study.trials] == ["COMPLETE"] * n
    )  # none pruned
    # each method's top learner is replicated, and so is its leader at equal forgetting
    for method in ("lora", "full"):
        own = [t for t in searched if t.params["method"] == method]
        assert max(own, key=lambda t: t.values[0]).number in leaders
        assert 1 <= len(leaders & {t.number for t in own}) <= 2
    for leader in leaders:
        mine = [t for t in replicas if t.user_attrs[REPLICATE_OF] == leader]
        assert sorted(t.user_attrs[REPLICATE_SEED] for t in mine) == [1, 2]  # the leader ran seed 0
        for t in mine:
            assert t.params == searched[leader].params
            assert t.user_attrs["config"]["seed"] == t.user_attrs["seed"] == t.user_attrs[REPLICATE_SEED]
            assert t.user_attrs["arm"] == searched[leader].params["method"]
        # another seed trains another model: the seeds do not all give the same numbers
        assert len({(t.values[0], t.values[1]) for t in [searched[leader], *mine]}) > 1
    assert all(REPLICATE_OF not in t.user_attrs for t in best_trials(study))
    # arms count configurations: 2 and 2 searched, whatever their replicates
    space_ = load_space(tmp_path / "space.yaml")
    queue_arm(study, space_)
    assert study.trials[-1].user_attrs["arm"] == "lora"

    note = optuna_dashboard.get_note(study)
    assert "Verdict on method" in note and "3 seeds" in note

    confirm = ("confirm", "--storage", url, "--artifact-dir", str(tmp_path / "artifacts"))
    again = invoke(*confirm, "--seeds", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "no replicate to add: each leader has 2 already" in again.stdout
    more = invoke(*confirm, "--seeds", "3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    study = optuna.load_study(study_name="default", storage=url)
    added = [t for t in study.trials if t.user_attrs.get(REPLICATE_SEED) == 3]
    assert sorted(t.user_attrs[REPLICATE_OF] for t in added) == sorted(leaders)
    assert "4 seeds" in more.stdout
    # the arm trial queued above runs first (Optuna starts the oldest), then the replicates
    assert "after 1 trial queued before them" in more.stdout
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * (n + 1 + len(leaders))
    # asking for fewer replicates than a configuration has adds none (the arm trial that just ran
    # may have become a leader itself: ask for the ones replicated above)
    replicated = [r for r in rows_of(study) if r.number in leaders]
    assert queue_replicates(study, replicated, 2) == []

    # a replicate queued by a confirm that was stopped before it ran is run by the next one
    leader = min(leaders)
    study.enqueue_trial(study.trials[leader].params, user_attrs={REPLICATE_OF: leader, REPLICATE_SEED: 9})
    resumed = invoke(*confirm, "--seeds", "4", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="default", storage=url)
    ninth = [t for t in study.trials if t.user_attrs.get(REPLICATE_SEED) == 9]
    assert [t.state.name for t in ninth] == ["COMPLETE"]
    assert not [t for t in study.trials if t.state.name == "WAITING"]  # and nothing else was started


def test_confirm_rejects_bad_input_in_one_line(tmp_path):
    result = invoke("confirm", "--storage", f"sqlite:///{tmp_path}/none.db", "--top", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --top is 0; allowed: an integer >= 1"
    url = f"sqlite:///{tmp_path}/plain.db"
    optuna.create_study(study_name="plain", storage=url)
    result = invoke("confirm", "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert "study 'plain' has no recorded search space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
