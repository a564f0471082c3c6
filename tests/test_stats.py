"""headstart.stats: intervals that hold their 95%, ties called ties, chance called chance, the cheapest of a tie.

Everything here runs on synthetic predictions (numpy only, seconds in all). The simulated runs follow a latent
model with the three sources of variation a comparison has: image i is right for run s when
difficulty_i + seed_effect_s + noise_is > 0. Hard images are hard for every seed, a seed's luck moves all of its
answers together, and the rest is per-image, per-run noise; the true accuracy (over new images and new seeds) is
known in closed form, so an interval can be checked against it.
"""

from __future__ import annotations

import dataclasses
import json
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from headstart.errors import HeadstartError
from headstart.stats import (Cost, RunPredictions, choose_metric, mcnemar, metric_interval, paired_difference,
                             verdict)

NOISE_SD = 0.5  # per-image, per-run noise of the latent model, in units of the image-difficulty spread


def simulated_runs(rng, strategy: str, accuracy: float, n_images: int, seeds: int, seed_sd: float,
                   difficulty: np.ndarray | None = None) -> list[RunPredictions]:
    """`seeds` runs of a two-class strategy whose true accuracy is `accuracy`, on `n_images` shared test images.

    Pass `difficulty` to give two strategies the same test images (the same hard ones).
    """
    spread = np.sqrt(1 + seed_sd**2 + NOISE_SD**2)
    if difficulty is None:
        difficulty = rng.normal(NormalDist().inv_cdf(accuracy) * spread, 1.0, n_images)
    latent = difficulty + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, NOISE_SD, (seeds, n_images))
    y_true = np.arange(n_images) % 2  # the labels do not matter here, only which answers are right
    return [RunPredictions(strategy, s, y_true, np.where(latent[s] > 0, y_true, 1 - y_true), np.arange(n_images))
            for s in range(seeds)]


def fixed_runs(strategy: str, y_true, y_pred, seeds: int = 3, ids=None) -> list[RunPredictions]:
    """`seeds` runs that all predict `y_pred`: no seed variation at all."""
    ids = np.arange(len(y_true)) if ids is None else ids
    return [RunPredictions(strategy, s, np.asarray(y_true), np.asarray(y_pred), ids) for s in range(seeds)]


def with_accuracy(y_true: np.ndarray, accuracy: float, rng) -> np.ndarray:
    """Predictions that are right on exactly round(accuracy × n) randomly chosen images (two classes)."""
    wrong = rng.permutation(len(y_true))[: len(y_true) - round(accuracy * len(y_true))]
    y_pred = y_true.copy()
    y_pred[wrong] = 1 - y_true[wrong]
    return y_pred


# ---- the interval -------------------------------------------------------------------------------------------


def test_interval_contains_the_true_accuracy_in_about_95_percent_of_repeats():
    """150 test images, 3 seeds whose accuracies spread by ~3.7 points: both sources of error are real."""
    rng = np.random.default_rng(0)
    truth, repeats = 0.8, 200
    hits = 0
    for repeat in range(repeats):
        runs = simulated_runs(rng, "linear", truth, n_images=150, seeds=3, seed_sd=0.15)
        interval = metric_interval(runs, n_boot=400, seed=repeat)
        hits += interval.low <= truth <= interval.high
    assert 0.90 <= hits / repeats <= 0.99


def test_interval_counts_the_test_set_error_even_when_seeds_agree_exactly():
    """Three identical runs have a seed standard deviation of 0; 120 right of 150 is still ±6.4 points."""
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 150)
    interval = metric_interval(fixed_runs("linear", y_true, with_accuracy(y_true, 0.8, rng)))
    binomial_half_width = 1.96 * np.sqrt(0.8 * 0.2 / 150)
    assert interval.estimate == pytest.approx(0.8)
    assert interval.high - interval.low == pytest.approx(2 * binomial_half_width, rel=0.15)


def test_interval_widens_when_seeds_disagree_which_a_binomial_interval_would_miss():
    """Same pooled accuracy (0.8 over 450 predictions), but one run at 0.7, one at 0.8, one at 0.9."""
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 150)
    agreeing = fixed_runs("a", y_true, with_accuracy(y_true, 0.8, rng))
    spread = [RunPredictions("b", s, y_true, with_accuracy(y_true, acc, rng), np.arange(150))
              for s, acc in enumerate((0.7, 0.8, 0.9))]
    narrow, wide = metric_interval(agreeing), metric_interval(spread)
    assert narrow.estimate == pytest.approx(wide.estimate)
    assert wide.high - wide.low > 1.3 * (narrow.high - narrow.low)


def test_same_predictions_and_seed_give_the_same_interval():
    runs = simulated_runs(np.random.default_rng(3), "full", 0.8, 100, 3, 0.1)
    assert metric_interval(runs, seed=7) == metric_interval(runs, seed=7)


# ---- balanced accuracy -----------------------------------------------------------------------------------------


def test_imbalanced_test_set_is_scored_by_balanced_accuracy_as_sklearn_computes_it():
    """90 images of one class, 10 of the other; a model that finds 3 of the 10 looks good only on accuracy."""
    rng = np.random.default_rng(4)
    y_true = np.array([0] * 90 + [1] * 10)
    runs = []
    for seed in range(3):
        y_pred = np.zeros(100, dtype=int)
        y_pred[90 + rng.choice(10, 3 + seed, replace=False)] = 1
        y_pred[rng.choice(90, 2, replace=False)] = 1
        runs.append(RunPredictions("linear", seed, y_true, y_pred, np.arange(100)))
    assert choose_metric(y_true) == "balanced_accuracy"
    interval = metric_interval(runs, metric="balanced_accuracy")
    reference = np.mean([balanced_accuracy_score(r.y_true, r.y_pred) for r in runs])
    accuracy = np.mean([accuracy_score(r.y_true, r.y_pred) for r in runs])
    assert interval.estimate == pytest.approx(reference)
    assert accuracy - interval.estimate > 0.2
    assert verdict(runs + fixed_runs("scratch", y_true, np.zeros(100, dtype=int))).metric == "balanced_accuracy"


def test_balanced_test_set_is_scored_by_accuracy():
    assert choose_metric(np.array([0] * 70 + [1] * 83)) == "accuracy"


# ---- the paired difference and the tie rule -------------------------------------------------------------------


def test_predictions_that_differ_on_one_of_150_images_are_tied():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, 150)
    a = with_accuracy(y_true, 0.9, rng)
    b = a.copy()
    b[np.flatnonzero(a == y_true)[0]] = 1 - y_true[np.flatnonzero(a == y_true)[0]]  # b misses one more image
    result = verdict(fixed_runs("lp-ft", y_true, a) + fixed_runs("linear", y_true, b), num_classes=2)
    assert result.winner is None
    assert set(result.tied) == {"lp-ft", "linear"}
    difference = result.differences["linear"]
    assert difference.difference == pytest.approx(1 / 150)
    assert difference.low <= 0 <= difference.high and difference.p_value > 0.05


def test_095_against_070_on_300_images_is_a_win():
    rng = np.random.default_rng(6)
    y_true = rng.integers(0, 2, 300)
    runs = [RunPredictions(name, s, y_true, with_accuracy(y_true, acc, rng), np.arange(300))
            for name, acc in (("full", 0.95), ("scratch", 0.70)) for s in range(3)]
    result = verdict(runs, num_classes=2)
    assert result.winner == "full" and result.tied == ["full"]
    assert result.differences["scratch"].low > 0.15 and result.differences["scratch"].p_value < 0.01
    assert result.sentence.startswith("full wins")
    assert json.loads(json.dumps(dataclasses.asdict(result)))["winner"] == "full"  # summary.json takes it as is


@pytest.mark.parametrize("seed_sd", [0.15, 0.3], ids=["seed-sd-3.7-points", "seed-sd-7.3-points"])
def test_two_equally_good_strategies_rarely_produce_a_winner(seed_sd):
    """Same true accuracy, same test images, 3 seeds each: a "winner" is a false claim, at most ~5% of the time.

    With seeds that scatter by 7 points, three of them say little about the mean: the interval must widen to
    match (a plain bootstrap of three values does not, and names a false winner 13% of the time).
    """
    rng = np.random.default_rng(7)
    claims = 0
    repeats = 150
    for repeat in range(repeats):
        difficulty = rng.normal(NormalDist().inv_cdf(0.8) * np.sqrt(1 + seed_sd**2 + NOISE_SD**2), 1.0, 150)
        runs = (simulated_runs(rng, "a", 0.8, 150, 3, seed_sd, difficulty)
                + simulated_runs(rng, "b", 0.8, 150, 3, seed_sd, difficulty))
        claims += verdict(runs, num_classes=2, n_boot=400, seed=repeat).winner is not None
    assert claims / repeats <= 0.10


def test_pairing_on_the_same_images_is_more_precise_than_two_separate_intervals():
    """Two strategies right and wrong on mostly the same images: the hard images cancel in the difference."""
    rng = np.random.default_rng(8)
    y_true = rng.integers(0, 2, 200)
    a = with_accuracy(y_true, 0.8, rng)
    b = a.copy()
    flip = rng.choice(np.flatnonzero(a == y_true), 6, replace=False)
    b[flip] = 1 - y_true[flip]
    runs_a, runs_b = fixed_runs("a", y_true, a), fixed_runs("b", y_true, b)
    paired = paired_difference(runs_a, runs_b)
    separate = metric_interval(runs_a), metric_interval(runs_b)
    assert paired.difference == pytest.approx(6 / 200)
    assert paired.high - paired.low < 0.5 * (separate[0].high - separate[0].low)
    assert paired.low > 0  # and therefore significant, which the two overlapping intervals would not show
    assert separate[1].high > separate[0].low


def test_images_are_matched_by_id_not_by_position():
    rng = np.random.default_rng(9)
    y_true = rng.integers(0, 2, 120)
    a, b = with_accuracy(y_true, 0.9, rng), with_accuracy(y_true, 0.8, rng)
    order = rng.permutation(120)
    ids = np.array([f"img{i:03d}.png" for i in range(120)])
    in_order = paired_difference(fixed_runs("a", y_true, a, ids=ids), fixed_runs("b", y_true, b, ids=ids))
    shuffled = paired_difference(fixed_runs("a", y_true, a, ids=ids),
                                 fixed_runs("b", y_true[order], b[order], ids=ids[order]))
    assert shuffled == in_order


def test_interval_excludes_zero_exactly_when_p_is_below_005():
    rng = np.random.default_rng(10)
    y_true = rng.integers(0, 2, 150)
    base = with_accuracy(y_true, 0.75, rng)
    for extra_right in range(0, 12):
        better = base.copy()
        fixed = np.flatnonzero(base != y_true)[:extra_right]
        better[fixed] = y_true[fixed]
        d = paired_difference(fixed_runs("a", y_true, better, seeds=1), fixed_runs("b", y_true, base, seeds=1))
        assert (d.low > 0) == (d.p_value < 0.05)


def test_bootstrap_agrees_with_mcnemar_on_clear_cases():
    """One run each. 14 discordant images split 13:1 — both tests reject; split 6:4 — neither does."""
    rng = np.random.default_rng(11)
    y_true = rng.integers(0, 2, 200)
    for a_only, b_only, significant in ((13, 1, True), (6, 4, False)):
        a = with_accuracy(y_true, 0.8, rng)
        b = a.copy()
        right, wrong = np.flatnonzero(a == y_true), np.flatnonzero(a != y_true)
        b[right[:a_only]] = 1 - y_true[right[:a_only]]
        b[wrong[:b_only]] = y_true[wrong[:b_only]]
        run_a, run_b = RunPredictions("a", 0, y_true, a, np.arange(200)), RunPredictions("b", 0, y_true, b,
                                                                                          np.arange(200))
        exact = mcnemar(run_a, run_b)
        assert (exact.a_only_right, exact.b_only_right) == (a_only, b_only)
        assert (exact.p_value < 0.05) == significant
        assert (paired_difference([run_a], [run_b]).p_value < 0.05) == significant


# ---- cross-validation folds -----------------------------------------------------------------------------------


def test_folds_are_scored_on_their_pooled_out_of_fold_predictions():
    rng = np.random.default_rng(12)
    y_true = rng.integers(0, 2, 150)
    y_pred = with_accuracy(y_true, 0.84, rng)
    folds = [RunPredictions("linear", f, y_true[idx], y_pred[idx], idx)
             for f, idx in enumerate(np.array_split(rng.permutation(150), 5))]
    interval = metric_interval(folds)
    assert interval.estimate == pytest.approx(0.84) and interval.runs == 1 and interval.images == 150
    assert interval.low < 0.84 < interval.high


def test_folds_that_predict_an_image_twice_or_never_are_refused():
    y_true = np.zeros(10, dtype=int)
    whole = fixed_runs("full", y_true, y_true, seeds=1)
    overlapping = [RunPredictions("linear", 0, y_true[:5], y_true[:5], np.arange(5)),
                   RunPredictions("linear", 1, y_true[:6], y_true[:6], np.arange(4, 10))]
    with pytest.raises(HeadstartError, match="exactly once"):
        verdict(overlapping + whole)
    missing = [RunPredictions("linear", 0, y_true[:5], y_true[:5], np.arange(5)),
               RunPredictions("linear", 1, y_true[:4], y_true[:4], np.arange(5, 9))]
    with pytest.raises(HeadstartError, match="different images"):
        verdict(missing + whole)


def test_strategies_tested_on_different_images_are_refused():
    y_true = np.zeros(10, dtype=int)
    with pytest.raises(HeadstartError, match="different images"):
        paired_difference(fixed_runs("a", y_true, y_true), fixed_runs("b", y_true, y_true, ids=np.arange(1, 11)))


# ---- chance ---------------------------------------------------------------------------------------------------


def test_random_predictions_on_three_classes_beat_no_chance():
    rng = np.random.default_rng(13)
    y_true = rng.integers(0, 3, 150)
    runs = [RunPredictions(name, s, y_true, rng.integers(0, 3, 150), np.arange(150))
            for name in ("scratch", "linear") for s in range(3)]
    result = verdict(runs, costs={"scratch": Cost(50, 10**6), "linear": Cost(5, 3843)})
    assert result.chance == pytest.approx(1 / 3)
    assert result.above_chance == [] and result.recommended is None and result.winner is None
    assert "no strategy beats chance" in result.sentence


def test_each_strategy_says_whether_it_beats_chance():
    rng = np.random.default_rng(14)
    y_true = rng.integers(0, 3, 150)
    good = fixed_runs("linear", y_true, np.where(rng.random(150) < 0.8, y_true, (y_true + 1) % 3))
    guess = [RunPredictions("scratch", s, y_true, rng.integers(0, 3, 150), np.arange(150)) for s in range(3)]
    result = verdict(good + guess)
    assert result.above_chance == ["linear"] and result.winner == "linear"
    assert "no strategy beats chance" not in result.sentence


# ---- the cheapest of the tied ---------------------------------------------------------------------------------


def test_tie_recommends_the_cheaper_strategy_and_says_how_much_cheaper():
    rng = np.random.default_rng(15)
    y_true = rng.integers(0, 2, 150)
    lp_ft = with_accuracy(y_true, 0.9, rng)
    linear = lp_ft.copy()
    linear[np.flatnonzero(lp_ft == y_true)[:2]] = 1 - y_true[np.flatnonzero(lp_ft == y_true)[:2]]
    costs = {"lp-ft": Cost(seconds=2400, trainable_params=3_400_000), "linear": Cost(seconds=12, trainable_params=2562)}
    result = verdict(fixed_runs("lp-ft", y_true, lp_ft) + fixed_runs("linear", y_true, linear), costs=costs)
    assert result.best == "lp-ft" and result.recommended == "linear"
    assert result.sentence.startswith("linear and lp-ft are tied on this data")
    assert "linear is 200× cheaper" in result.sentence


def test_a_tie_whose_cheaper_members_do_not_beat_chance_names_the_reason_for_the_pick():
    # 60% against 56% on 153 two-class images (18 images told apart, 12 to 6): tied; only the best is clearly
    # above chance (50%), and the other is cheaper
    rng = np.random.default_rng(17)
    y_true = rng.integers(0, 2, 153)
    full = with_accuracy(y_true, 0.60, rng)
    linear = full.copy()
    right, wrong = np.flatnonzero(full == y_true)[:12], np.flatnonzero(full != y_true)[:6]
    linear[right] = 1 - y_true[right]
    linear[wrong] = y_true[wrong]
    costs = {"full": Cost(seconds=13, trainable_params=3_400_000), "linear": Cost(seconds=2, trainable_params=2562)}
    result = verdict(fixed_runs("full", y_true, full) + fixed_runs("linear", y_true, linear), costs=costs)
    assert set(result.tied) == {"full", "linear"} and result.above_chance == ["full"]
    assert result.recommended == "full"
    assert "the only one of them clearly above chance" in result.sentence
    assert "cheapest" not in result.sentence


def test_equally_fast_strategies_are_told_apart_by_their_trainable_parameters():
    rng = np.random.default_rng(16)
    y_true = rng.integers(0, 2, 150)
    y_pred = with_accuracy(y_true, 0.9, rng)
    costs = {"partial": Cost(seconds=60, trainable_params=900_000),
             "full": Cost(seconds=60, trainable_params=3_400_000)}
    result = verdict(fixed_runs("full", y_true, y_pred) + fixed_runs("partial", y_true, y_pred), costs=costs)
    assert result.recommended == "partial"
    assert "3.8× fewer parameters" in result.sentence


def test_the_verdict_reports_the_same_intervals_as_metric_interval_and_paired_difference():
    rng = np.random.default_rng(17)
    runs = {name: simulated_runs(rng, name, acc, 150, 3, 0.1) for name, acc in (("a", 0.9), ("b", 0.85), ("c", 0.8))}
    result = verdict([r for group in runs.values() for r in group], num_classes=2, seed=3)
    for name, group in runs.items():
        assert result.intervals[name] == metric_interval(group, seed=3)
    for name, difference in result.differences.items():
        assert difference == paired_difference(runs[result.best], runs[name], seed=3)
