"""The claims' verdicts with seed noise, on constructed configurations (docs/claims.md)."""

from lorasweep.analysis import Row, variant
from lorasweep.findings import CONFIRMS, CONTRADICTS, NOISE, NOT_ENOUGH, UNMEASURED, findings


def row(number, method, lr, seeds, rank=None, targets=None, replay=0.0) -> Row:
    """A configuration with (learn, forget) per seed; its values are the means."""
    learns, forgets = tuple(s[0] for s in seeds), tuple(s[1] for s in seeds)
    return Row(
        number,
        method,
        lr,
        rank,
        targets,
        replay,
        sum(learns) / len(learns),
        sum(forgets) / len(forgets),
        0,
        0,
        0.0,
        learn_seeds=learns,
        forget_seeds=forgets,
    )


def by_claim(rows, tolerance=None) -> dict:
    return {f.claim: f for f in findings(rows, tolerance)}


ALL_LINEAR = "All-linear LoRA learns more than q,v-only at equal rank"
RATIO = "Best LoRA LR is about 10x the best full-FT LR"
FULL_LR = "Within full, a higher LR forgets more"


def test_a_difference_within_seed_noise_gets_no_verdict():
    # seed noise: learn sd 0.05 (pooled over the two replicated configurations, 4 dof)
    a = row(0, "lora", 3e-3, [(0.60, 0.5), (0.70, 0.5), (0.65, 0.5)], 16, "all-linear")
    q = row(1, "lora", 3e-3, [(0.55, 0.5), (0.65, 0.5), (0.60, 0.5)], 16, "qv")
    found = by_claim([a, q])[ALL_LINEAR]
    assert found.verdict == NOISE
    assert found.evidence == "rank 16: 0.650 vs 0.600 (within noise)"
    assert (
        found.uncertainty
        == "learn seed noise sd 0.050 over 2 replicated configurations (4 degrees of freedom)"
    )
    # margin t(4) * 0.05 * sqrt(2/3) = 0.113: a difference of 0.2 is beyond it
    far = row(1, "lora", 3e-3, [(0.40, 0.5), (0.50, 0.5), (0.45, 0.5)], 16, "qv")
    assert by_claim([a, far])[ALL_LINEAR].verdict == CONFIRMS
    assert (
        by_claim([far, row(0, "lora", 3e-3, [(0.2, 0.5)], 16, "all-linear")])[ALL_LINEAR].verdict
        == CONTRADICTS
    )


def test_without_replicates_the_verdict_is_single_seed_and_says_so():
    a = row(0, "lora", 3e-3, [(0.65, 0.5)], 16, "all-linear")
    q = row(1, "lora", 3e-3, [(0.60, 0.5)], 16, "qv")
    found = by_claim([a, q])[ALL_LINEAR]
    assert (found.verdict, found.uncertainty) == (CONFIRMS, UNMEASURED)


def test_best_lr_ratio_is_a_range_when_several_lrs_tie_within_noise():
    noisy = [(0.63, 0.5), (0.67, 0.5)]  # sd 0.028 on both replicated configurations
    full = [
        row(0, "full", 1e-4, [(0.2, 0.1)]),
        row(1, "full", 3e-4, noisy),
        row(2, "full", 1e-3, [(0.66, 0.6)]),
    ]
    lora = [
        row(3, "lora", 1e-3, [(0.2, 0.2)]),
        row(4, "lora", 3e-3, noisy),
        row(5, "lora", 1e-2, [(0.3, 1.0)]),
    ]
    found = by_claim(full + lora)[RATIO]
    # full's best (0.66 at 1e-3) ties with 3e-4 (0.65): the ratio is 3x to 10x, inside [3, 30]
    assert found.verdict == CONFIRMS
    assert found.evidence.endswith("LoRA 3.0e-03, full 3.0e-04..1.0e-03, ratio 3.0x to 10.0x")
    lora[2] = row(5, "lora", 1e-1, [(0.64, 1.0)])  # LoRA's best could be 1e-1 too: 3x to 333x
    assert by_claim(full + lora)[RATIO].verdict == NOISE


def test_a_correlation_is_judged_by_its_interval():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    rising = [row(i, "full", lr, [(0.5, 0.1 * i)]) for i, lr in enumerate(lrs)]
    found = by_claim(rising)[FULL_LR]
    assert found.verdict == CONFIRMS and found.uncertainty.startswith("95% interval +")
    wobbly = [row(i, "full", lr, [(0.5, f)]) for i, (lr, f) in enumerate(zip(lrs, [0.1, 0.3, 0.2, 0.5, 0.4]))]
    assert by_claim(wobbly)[FULL_LR].verdict == NOISE  # rho 0.8 over 5 points: interval spans 0


def lora_row(number, seeds, **config) -> Row:
    found = row(
        number, "lora", config.get("learning_rate", 3e-3), seeds, config.get("rank", 16), "all-linear"
    )
    found.config = {"method": "lora", "rank": 16, "alpha": 32.0, "schedule": "cosine", **config}
    return found


def test_two_settings_learn_alike_only_when_the_interval_is_within_the_margin():
    claim = "On small data, LoRA rank 8 and rank 32 learn alike"
    r8 = lora_row(0, [(0.70, 0.5), (0.71, 0.5), (0.72, 0.5)], rank=8)
    r32 = lora_row(1, [(0.70, 0.5), (0.72, 0.5), (0.71, 0.5)], rank=32)
    found = by_claim([r8, r32])[claim]
    assert found.verdict == CONFIRMS  # the same mean, sd 0.01: the interval is well within ±0.05
    assert found.evidence == "rank 8: 0.710 (trial 0, 3 seeds) vs 32: 0.710 (trial 1, 3 seeds)"
    assert found.uncertainty == "95% interval of the difference -0.023 to +0.023"
    far = lora_row(1, [(0.50, 0.5), (0.52, 0.5), (0.51, 0.5)], rank=32)
    assert by_claim([r8, far])[claim].verdict == CONTRADICTS  # 0.2 apart, surely more than 0.05
    noisy = lora_row(1, [(0.60, 0.5), (0.80, 0.5), (0.70, 0.5)], rank=32)
    assert by_claim([r8, noisy])[claim].verdict == NOISE
    single = by_claim([lora_row(0, [(0.7, 0.5)], rank=8), lora_row(1, [(0.7, 0.5)], rank=32)])[claim]
    assert single.verdict == "not enough trials" and "lorasweep confirm" in single.evidence
    # alpha: read as alpha / rank from the resolved config
    alpha = "Alpha = rank and alpha = 2 x rank learn alike at their best LRs"
    ratios = [lora_row(0, [(0.70, 0.5), (0.71, 0.5)], alpha=16.0), lora_row(1, [(0.71, 0.5)], alpha=32.0)]
    assert by_claim(ratios)[alpha].evidence.startswith("alpha/rank 1.0: 0.705 (trial 0, 2 seeds) vs 2.0")
    # warmup: the shortest against the longest warmup of one method
    warmup = [lora_row(i, [(0.7, 0.5), (0.72, 0.5)], warmup_ratio=w) for i, w in enumerate([0.0, 0.1, 0.3])]
    assert by_claim(warmup)["Warmup length matters little at the full budget"].evidence.startswith(
        "warmup_ratio 0.0: 0.710 (trial 0, 2 seeds) vs 0.3: 0.710 (trial 2, 2 seeds)"
    )


def test_lawa_early_is_judged_on_the_paired_gain_over_seeds():
    claim = "LAWA beats the final weights early, at a constant LR"
    early = lora_row(0, [(0.50, 0.5), (0.52, 0.5), (0.48, 0.5)], schedule="constant", train_tokens=37500)
    early.lawa_learn_seeds = (0.58, 0.61, 0.55)  # +0.08, +0.09, +0.07
    late = lora_row(1, [(0.70, 0.5)], schedule="constant", train_tokens=150000)
    late.lawa_learn_seeds = (0.69,)
    found = by_claim([early, late])[claim]
    assert found.verdict == CONFIRMS
    assert found.evidence == "trial 0 (37500 tokens): LAWA 0.580 vs final 0.500 over 3 seeds"
    early.lawa_learn_seeds = (0.50, 0.52, 0.48)  # no gain at all
    assert by_claim([early, late])[claim].verdict == CONTRADICTS


def test_sqrt_scaling_is_judged_on_the_spread_over_batch_sizes():
    claim = "LR scaled by sqrt(batch ratio) holds learn across batch sizes"
    rows = []
    for i, (scaling, batch, learn) in enumerate(
        [("none", 8, 0.70), ("none", 64, 0.40), ("sqrt", 8, 0.69), ("sqrt", 64, 0.66)]
    ):
        rows.append(lora_row(i, [(learn, 0.5)], lr_scaling=scaling, batch_size=batch))
    found = by_claim(rows)[claim]
    assert (found.verdict, found.uncertainty) == (CONFIRMS, UNMEASURED)
    assert found.evidence == "learn range over batch sizes: sqrt 0.030, none 0.300"
    rows[0] = lora_row(0, [(0.70, 0.5), (0.50, 0.5)], lr_scaling="none", batch_size=8)  # sd 0.14
    assert by_claim(rows)[claim].verdict == NOISE


def test_lora_with_another_init_lora_plus_or_a_peft_type_is_a_method_of_its_own():
    assert variant({"method": "lora", "init_lora_weights": "default"}) == "lora"
    assert variant({"method": "lora", "loraplus_lr_ratio": 1.0}) == "lora"  # LoRA+ at ratio 1 is plain
    assert (
        variant({"method": "lora", "init_lora_weights": "pissa", "loraplus_lr_ratio": 16.0})
        == "lora pissa lora+16"
    )
    assert variant({"method": "dora", "init_lora_weights": "gaussian"}) == "dora gaussian"
    assert variant({"method": "peft", "peft_config": {"peft_type": "OFT", "r": 8}}) == "peft OFT"
    # the claims read plain LoRA: a PiSSA configuration does not make all-linear beat q,v
    pissa = row(0, "lora pissa", 3e-3, [(0.90, 0.5)], 16, "all-linear")
    qv = row(1, "lora", 3e-3, [(0.60, 0.5)], 16, "qv")
    assert by_claim([pissa, qv])[ALL_LINEAR].verdict == NOT_ENOUGH
    assert "Within lora pissa, a higher LR forgets more" in by_claim([pissa, qv])
