"""Standardise signals within each layer, combine them per method, and reach a verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditor.fourier import Fourier
from auditor.margin import Margin
from auditor.patch import Patch
from auditor.probe import Probe
from auditor.signals import Signals

# Signal weights per method. `sus` combines; `clp` and `fp` are the baselines run through
# the same stages (CLP: weight alone, data-free; Fine-Pruning: activation alone).
METHODS: dict[str, dict[str, float]] = {
    "sus": {"activation": 1.0, "weight": 1.0, "relationship": 1.0, "bn_drift": 1.0},
    "clp": {"weight": 1.0},
    "fp": {"activation": 1.0},
}
# Model-level score: mean of the top fraction of a layer's channel scores, max over layers.
TOP_FRACTION = 0.05
DEFAULT_THRESHOLD = {"sus": 3.0, "clp": 3.0, "fp": 3.0}
# `sus` judges the model by the corruption probe (auditor.probe): the largest share of corrupted
# clean samples one class takes. Chosen on the zoo's tuning half over five disjoint sets of ten
# clean samples (bench/verdict.py): at 0.6 it flagged 52% of the backdoored models and 7% of the
# clean ones; at 0.4, 68% and 30% (clean models have natural sink classes too).
PROBE_THRESHOLD = 0.6
# The patch search (auditor.patch) flags at this score; its score is rescaled by
# PROBE_THRESHOLD / PATCH_THRESHOLD so that one threshold serves both tests. Chosen on the tuning
# half over the same five sample sets and four variants of the search (random streams, steps,
# pixel levels): 0.8 to 0.9 were within 0.01 of the best mean balanced accuracy, and 0.9 kept
# false alarms lowest where a clean MNIST MLP met a patch that turns its digits into a 5 (up to
# 0.98). With the shipped search: 75% of the backdoored and 7% of the clean (model, set) pairs
# flagged there (the probe alone: 48% and 7%).
PATCH_THRESHOLD = 0.9
# The Fourier probe (auditor.fourier) flags at this lift, rescaled like the patch search's score.
# Chosen with its frequency cap (7) and amplitude (0.1 of the range) as the variant with the
# highest mean verdict AUC on the tuning half over the same five sample sets (`python -m
# bench.fourier_probe`): 0.909 against 0.901 without it (0.6 tied; 0.7 is the stricter).
FOURIER_THRESHOLD = 0.7
# The largest verdict score each search can reach (both scores are at most 1): a search is
# skipped when the scores already in hand reach it, since it could not change the verdict.
PATCH_REACH = PROBE_THRESHOLD / PATCH_THRESHOLD
FOURIER_REACH = PROBE_THRESHOLD / FOURIER_THRESHOLD
# The verdict bases that come with stand-ins for triggered inputs (corrupted, patched or perturbed
# clean samples): the ones head unlearning can fit on.
SHORTCUT_BASES = ("corruption", "patch", "fourier")
# Without a float input to corrupt, by the classifier head's reachable margins (auditor.margin),
# a robust z-score; also chosen on the tuning half.
MARGIN_THRESHOLD = 2.9


@dataclass(frozen=True)
class Suspicion:
    """Per-channel scores of one unit [C] and each standardised signal [C]."""

    score: np.ndarray
    z: dict[str, np.ndarray]


@dataclass(frozen=True)
class Verdict:
    """Model-level suspiciousness compared with the threshold."""

    score: float
    threshold: float
    suspicious: bool
    layer: str | None  # the unit that gave the score
    # "channels": top channel scores; "margin": the head's reachable margins; "corruption": the
    # corruption probe; "patch": the patch search; "fourier": the Fourier probe
    basis: str = "channels"
    target: int | None = None  # with "margin", "corruption", "patch" or "fourier": the suspected target class


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD), falling back to the mean absolute deviation, else 0."""
    values = np.asarray(values, dtype=np.float64)
    center = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - center))
    if spread <= 1e-12 * max(1.0, abs(center)):
        spread = 1.2533 * np.mean(np.abs(values - center))
    if spread <= 1e-12 * max(1.0, abs(center)):
        return np.zeros_like(values)
    return (values - center) / spread


def suspicion(signals: Signals, method: str) -> Suspicion:
    """Weighted mean of the robust z-scores of the signals the method uses and the unit has."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    weights = {name: w for name, w in METHODS[method].items() if name in signals.values and w}
    z = {name: robust_z(value) for name, value in signals.values.items()}
    total = sum(weights.values())
    score = sum(w * z[name] for name, w in weights.items()) / total
    return Suspicion(score=np.asarray(score, dtype=np.float64), z=z)


def layer_score(score: np.ndarray) -> float:
    count = max(1, round(TOP_FRACTION * len(score)))
    return float(np.sort(score)[::-1][:count].mean())


def probe_verdict(found: Probe, threshold: float, patched: Patch | None = None, waved: Fourier | None = None) -> Verdict:
    """The model's score is the largest share of corrupted clean samples that one class takes, or
    the patch search's or the Fourier probe's score rescaled to the same threshold, whichever is largest."""
    value, basis, target = found.score, "corruption", found.target
    if patched is not None:
        rescaled = max(0.0, patched.score) * PATCH_REACH
        if rescaled > value:
            value, basis, target = rescaled, "patch", patched.target
    if waved is not None:
        rescaled = max(0.0, waved.score) * FOURIER_REACH
        if rescaled > value:
            value, basis, target = rescaled, "fourier", waved.target
    return Verdict(score=value, threshold=threshold, suspicious=bool(value >= threshold), layer=None,
                   basis=basis, target=target)


def margin_verdict(found: Margin, head: str, threshold: float) -> Verdict:
    """The model's score is the robust z-score of its head's largest reachable class margin."""
    return Verdict(score=found.score, threshold=threshold, suspicious=bool(found.score >= threshold), layer=head,
                   basis="margin", target=found.target)


def verdict(scores: dict[str, np.ndarray], threshold: float) -> Verdict:
    """The model's score is its most suspicious layer's top-channel mean."""
    best_layer, best = None, float("-inf")
    for name, score in scores.items():
        value = layer_score(score)
        if value > best:
            best_layer, best = name, value
    if best_layer is None:
        best = 0.0
    return Verdict(score=best, threshold=threshold, suspicious=bool(best >= threshold), layer=best_layer)
