"""bench/calibrate.py: the verdict probability's fit and the numbers it is judged by."""

from __future__ import annotations

import numpy as np

from bench import calibrate
from bench.report import roc_auc


def test_the_balanced_fit_puts_one_half_midway_between_symmetric_kinds_whatever_their_counts() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(0.3, 0.1, 200)
    backdoored = 0.9 - (clean[:50] - 0.3)  # the mirror image of 50 of them about 0.6
    scores = np.concatenate([clean[:50], backdoored, clean[50:]])
    kinds = np.concatenate([np.zeros(50, bool), np.ones(50, bool), np.zeros(150, bool)])
    slope, intercept = calibrate.fit(scores[:100], kinds[:100])
    assert slope > 0 and abs(-intercept / slope - 0.6) < 1e-6  # symmetric data: one half at the midpoint
    slope_all, intercept_all = calibrate.fit(scores, kinds)  # three times the clean pairs: each kind still weighs half
    assert abs(-intercept_all / slope_all - 0.6) < 0.05
    assert calibrate.fit(scores, kinds) == (slope_all, intercept_all)  # deterministic


def test_separable_kinds_still_get_a_finite_fit() -> None:
    slope, intercept = calibrate.fit(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True]))
    assert np.isfinite(slope) and np.isfinite(intercept) and slope > 0
    p = calibrate.probability(np.array([0.1, 0.9]), slope, intercept)
    assert p[0] < 0.1 and p[1] > 0.9


def test_the_threshold_for_a_false_positive_rate_lets_through_only_that_share() -> None:
    clean = np.linspace(0.0, 0.95, 20)  # 5% of 20: one clean score may reach the threshold
    threshold = calibrate.fpr_threshold(clean, 0.05)
    assert (clean >= threshold).sum() == 1 and threshold > clean[-2]
    assert (clean >= calibrate.fpr_threshold(clean, 0.0)).sum() == 0


def test_cross_entropy_and_the_shared_auc() -> None:
    kinds = np.array([True, True, False, False])
    assert calibrate.cross_entropy(np.array([1.0, 1.0, 0.0, 0.0]), kinds, balanced=False) < 1e-5
    assert np.isclose(calibrate.cross_entropy(np.full(4, 0.5), kinds, balanced=True), np.log(2))
    assert roc_auc([0.9, 0.8], [0.1, 0.8]) == 0.875  # one tie counts half: what calibrate's AUCs use
