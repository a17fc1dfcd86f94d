"""Head unlearning: teach the classifier head that corrupted clean inputs are not the target.

When the corruption probe finds a shortcut (noisy or blurred clean samples sent to one class
t), the patch search a patch that sends clean samples to t, or the Fourier probe a faint cosine
pattern that does, those corrupted, patched or perturbed samples stand in for triggered
inputs: they travel the backdoor's path without anyone knowing the trigger. We refit row t of
the dense head (its weights and bias, nothing else), on the features the repaired model gives
the head, so that

- on the corrupted samples the model still sends to t, the head gives what the original gave
  on their clean sources (the shortcut no longer pays), and
- on the clean samples and the guard's augmented copies, what the original gave (a
  distillation, each predicted class weighted equally),

with an L2 penalty that keeps the row near the original. The samples of class t weigh at least
`unlearn.anchor_weight` (3) times as much as the corrupted ones. Unless the clean samples cover every
class, only downwards: the bias and the weight of every feature that is never negative may only
decrease (`take_only`), so the correction can take target score away from an input but never
give any, whatever its class, including the classes the guard never sees. Numpy only: a few hundred steps of
accelerated gradient descent on a convex problem, deterministic.

Class t's clean accuracy rests on the clean samples the model puts in t: with none, nothing
holds the row in place (on the zoo's five sample sets, where a correction without one halved
the attack, class t lost 51 to 96 points of its own accuracy; docs/EXPERIMENTS.md). So unlearning needs at least one
such sample and says so otherwise. Even with one, the correction costs class t more than the
overall accuracy shows, and the guard, which fits on those few samples, cannot see it: they weigh
more than the corrupted samples, and the benchmark measures class t's own accuracy.

The fidelity guard chooses how hard to unlearn (`unlearn.ladder`, cross-fitted over halves of the
samples): `plan_unlearning` runs that search, measuring each correction with the guard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from auditor.detect import fourier, patch, probe
from auditor.detect.verdict import SHORTCUT_BASES, Verdict
from auditor.io.data import Samples
from auditor.mitigation.filters import shortcut_rows
from auditor.mitigation.guard import Edits, Fidelity, Guard, distribution
from auditor.settings import Settings


@dataclass(frozen=True)
class Correction:
    """What to add to the head's output: features @ matrix.T + bias (row `target` only)."""

    target: int
    matrix: np.ndarray  # [K, F]
    bias: np.ndarray  # [K]
    surrogates: int  # corrupted samples the repaired model still sent to the target
    anchors: int  # clean samples the original puts in the target class


def fit_row(matrix: np.ndarray, bias: np.ndarray, features: np.ndarray, targets: np.ndarray, weights: np.ndarray,
            row: int, strength: float, steps: int,
            nonpositive: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The change (d_weights [F], d_bias) of head row `row` minimising the weighted cross-entropy of
    softmax(features @ (matrix + d).T + bias + d_bias) against soft `targets`, plus strength/2 |d|^2,
    with the entries of (d_weights, d_bias) flagged in `nonpositive` [F + 1] kept <= 0.

    Projected FISTA with step 1/L, L = the loss's gradient Lipschitz bound (softmax curvature <= 1/2)."""
    x = np.hstack([features, np.ones((len(features), 1))])
    base = x @ np.hstack([matrix, bias[:, None]]).T  # [N, K] logits of the original head
    w = weights / weights.sum()
    lipschitz = 0.5 * float(np.linalg.norm(x * np.sqrt(w)[:, None], 2)) ** 2 + strength
    step = 1.0 / lipschitz
    # Only column `row` moves, so its softmax share is a logistic function of that logit against
    # the log-sum-exp of the others, which stay fixed: O(N) per step instead of O(N K).
    others = np.delete(base, row, axis=1)
    rest = others.max(axis=1) + np.log(np.exp(others - others.max(axis=1, keepdims=True)).sum(axis=1))
    own, wanted, wx = base[:, row], targets[:, row], w[:, None] * x
    delta = np.zeros(x.shape[1])
    momentum, t = delta.copy(), 1.0
    for _ in range(steps):
        logit = own + x @ momentum
        share = np.exp(logit - np.logaddexp(logit, rest))
        gradient = (share - wanted) @ wx + strength * momentum
        updated = momentum - step * gradient
        if nonpositive is not None:
            updated[nonpositive] = np.minimum(updated[nonpositive], 0.0)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum = updated + (t - 1.0) / t_next * (updated - delta)
        delta, t = updated, t_next
    return delta[:-1], float(delta[-1])


def take_only(features: np.ndarray) -> np.ndarray:
    """[F + 1]: the entries of the row change kept <= 0, so that the correction can only take
    evidence for the target away, never add it: the bias, and the weight of every feature that is
    never negative (ReLU, pooling) on the samples seen. Ten samples cover a few classes, and the
    guard cannot see a class none of them shows: a free row change could send it into the target
    (on the zoo, one sent every sandal to 'bag', another every trouser to 'dress'). Features that
    take both signs (LayerNorm) stay free. When the samples cover every class, the guard sees them
    all and the fit may move both ways (`plan_unlearning` decides)."""
    return np.append(features.min(axis=0) >= 0.0, True) if len(features) else np.ones(features.shape[1] + 1, dtype=bool)


def balanced(labels: np.ndarray, classes: int) -> np.ndarray:
    """Weights that give every predicted class the same total, summing to 1."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


def correction(matrix: np.ndarray, bias: np.ndarray, target: int, clean_features: np.ndarray, clean_targets: np.ndarray,
               surrogate_features: np.ndarray, surrogate_targets: np.ndarray, anchors: int,
               weight: float, strength: float, steps: int, anchor_weight: float, downward: bool = True) -> Correction:
    """Fit the row-`target` correction from clean and surrogate features with their soft targets;
    with `downward`, one that only takes target evidence away (`take_only`)."""
    classes = matrix.shape[0]
    clean_labels = clean_targets.argmax(axis=1)
    clean_weights = balanced(clean_labels, classes)
    anchored = clean_labels == target
    if anchored.any():
        # the target class's own samples weigh at least `anchor_weight` times the corrupted ones: the
        # fit trades keeping them against removing the shortcut at that rate, not at 1 to (classes seen)
        clean_weights[anchored] *= max(1.0, anchor_weight * weight / clean_weights[anchored].sum())
    weights = np.concatenate([clean_weights,
                              weight * np.full(len(surrogate_features), 1.0 / max(len(surrogate_features), 1))])
    features = np.concatenate([clean_features, surrogate_features])
    d_weights, d_bias = fit_row(matrix, bias, features, np.concatenate([clean_targets, surrogate_targets]), weights, target,
                                strength, steps, nonpositive=take_only(features) if downward else None)
    out_matrix, out_bias = np.zeros_like(matrix), np.zeros_like(bias)
    out_matrix[target], out_bias[target] = d_weights, d_bias
    return Correction(target, out_matrix, out_bias, len(surrogate_features), anchors)


def surrogates(variants: Iterable[tuple[str, Samples, np.ndarray]], clean_labels: np.ndarray, target: int,
               classify: Callable[[Samples], np.ndarray]) -> tuple[list[Samples], np.ndarray]:
    """Of the `variants` of the clean samples ((name, samples, row -> source), as
    `probe.corruptions` or `patch.variants` give them), those `classify` (samples -> scores) sends
    to `target` from a clean sample it did not put there (one Samples per variant that has any),
    and their source samples."""
    kept, sources = [], []
    for _, corrupted, origin in variants:
        predicted = np.asarray(classify(corrupted)).reshape(len(corrupted), -1).argmax(axis=1)
        rows = np.flatnonzero((predicted == target) & (clean_labels[origin] != target))
        if rows.size:
            kept.append(corrupted.take(rows))
            sources.append(origin[rows])
    return kept, (np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64))


# Why unlearning did not apply, as a code (the report's `cause`); `reason` says it in words.
CAUSES = ("not_flagged", "no_dense_head", "single_output", "no_anchor", "bounds_removed", "per_token_head", "fidelity")


@dataclass(frozen=True)
class UnlearnOutcome:
    """What head unlearning did: applied (with the ladder step kept) or why not (`cause`, `reason`)."""

    applied: bool = False
    target: int | None = None
    cause: str | None = None  # one of CAUSES when not applied
    reason: str | None = None
    surrogates: int = 0  # stand-ins for triggered inputs fitted (corrupted samples + shortcut guard copies)
    anchors: int = 0  # clean samples the original puts in the target class
    weight: float | None = None  # of the stand-ins, at the ladder step kept
    strength: float | None = None  # the L2 penalty, at the ladder step kept
    shortcut_guard_samples: int = 0  # guard copies the original sent to the target from another class
    downward: bool | None = None  # some class had no clean sample: the row could only lose target evidence
    correction: Correction | None = field(default=None, repr=False)
    fidelity: Fidelity | None = None

    def to_dict(self) -> dict:
        return {"applied": self.applied, "target": self.target, "reason": self.reason, "cause": self.cause,
                "surrogates": self.surrogates, "anchors": self.anchors, "strength": self.strength, "weight": self.weight,
                "shortcut_guard_samples": self.shortcut_guard_samples, "downward": self.downward}


def plan_unlearning(verdict: Verdict, samples: Samples, clean_scores: np.ndarray, clean_labels: np.ndarray, fidelity: Guard,
                    edits: Edits, settings: Settings, blur_axes: dict[str, tuple[int, ...]] | None = None) -> UnlearnOutcome:
    """Head unlearning on top of `edits` (the bounds and the input filter), when a probe or search
    found a shortcut: the strongest correction on the ladder that keeps the fidelity limits,
    cross-fitted over halves of the samples."""
    target = verdict.target
    limits = settings.repair
    if verdict.basis not in SHORTCUT_BASES or target is None or not verdict.suspicious:
        return UnlearnOutcome(target=target, cause="not_flagged",
                              reason="neither the corruption probe, the patch search nor the Fourier probe found a shortcut")
    if fidelity.head is None:
        return UnlearnOutcome(target=target, cause="no_dense_head", reason="the classifier head is not a dense affine layer")
    clean = distribution(np.asarray(clean_scores).reshape(len(samples), -1))
    if fidelity.affine is not None and fidelity.affine[0].shape[0] != clean.shape[1]:
        return UnlearnOutcome(target=target, cause="single_output",
                              reason="a single-output (binary) head has no row per class to refit")
    anchored, shortcut = shortcut_rows(clean_labels, fidelity, target)
    anchors = int((clean_labels == target).sum())
    if anchors == 0:
        return UnlearnOutcome(target=target, cause="no_anchor", anchors=0,
                              reason=f"no clean sample is classified as class {target}: add some, or its accuracy is not protected")
    if verdict.basis == "patch":
        variants = patch.variants(samples, verdict.patch, settings.patch)
    elif verdict.basis == "fourier":
        variants = fourier.variants(samples, verdict.fourier, settings.fourier)
    else:
        variants = probe.corruptions(samples, settings.probe, blur_axes)
    kept, sources = surrogates(variants, clean_labels, target, lambda more: fidelity.classify(more, edits))
    # The guard copies that took the shortcut join the corrupted samples and leave the fidelity
    # measure, which would otherwise insist on keeping the shortcut.
    counts = {"target": target, "anchors": anchors, "surrogates": int(sources.size + shortcut.sum()),
              "shortcut_guard_samples": int(shortcut.sum())}
    if not kept:
        return UnlearnOutcome(**counts, cause="bounds_removed",
                              reason="the bounds and the input filter (notch or occlusion) removed the shortcut"
                              if edits.prefilter is not None else "the bounds alone removed the shortcut")
    guard_features = fidelity.features(fidelity.samples, edits)
    features = np.concatenate([*(fidelity.features(corrupted, edits) for corrupted in kept), guard_features[shortcut]])
    sources = np.concatenate([sources, fidelity.origin[shortcut]])
    matrix, bias = fidelity.affine
    if guard_features.shape[1] != matrix.shape[1]:
        return UnlearnOutcome(**counts, cause="per_token_head",
                              reason="the head reads more than one feature vector per sample (e.g. every token)")
    clean_rows = ~shortcut
    halves = 2 if len(samples) >= 4 else 0
    # a class no clean sample shows is outside the guard's sight: then the row may only go down
    downward = bool(np.unique(clean_labels).size < matrix.shape[0])
    counts["downward"] = downward
    steps = settings.unlearn

    def fit_and_judge(fit_rows: np.ndarray, fit_sources: np.ndarray, judged: np.ndarray, weight: float,
                      strength: float) -> tuple[Correction, Fidelity]:
        """Fit on the guard rows `fit_rows` and the corrupted samples from `fit_sources`; judge on `judged`."""
        fitted = correction(matrix, bias, target, guard_features[fit_rows], fidelity.reference[fit_rows],
                            features[fit_sources], clean[sources[fit_sources]], anchors, weight, strength, steps.steps,
                            steps.anchor_weight, downward)
        return fitted, fidelity.fidelity(replace(edits, correction=(fitted.matrix, fitted.bias)), judged, spare=target)

    every_source = np.ones(len(sources), dtype=bool)
    for weight, strength in steps.ladder:  # the strongest unlearning that keeps the fidelity limits
        # cross-fit as the bounds do: a correction fitted on one half of the samples (and their
        # copies) must keep the limits on the other half, with the half's slack. The samples of
        # the target class anchor it, and there are few: both halves fit on all of them.
        held = True
        for half in range(halves):
            mine = fidelity.origin % 2 == half
            other = clean_rows & ~mine & ~anchored
            if not other.any():
                continue  # nothing left to judge this half on
            fitted, judged = fit_and_judge(clean_rows & (mine | anchored), sources % 2 == half, other, weight, strength)
            if not judged.within(limits.floor, limits.max_divergence, settings.guard.half_slack):
                held = False
                break
        if not held:
            continue
        fitted, judged = fit_and_judge(clean_rows, every_source, clean_rows, weight, strength)
        # the correction must also keep loose limits on the copies of the target's own samples, where its cost shows
        corrected = replace(edits, correction=(fitted.matrix, fitted.bias))
        if judged.within(limits.floor, limits.max_divergence) and (not limits.anchor_slack or fidelity.fidelity(
                corrected, anchored & clean_rows).within(limits.floor, limits.max_divergence, limits.anchor_slack)):
            return UnlearnOutcome(True, **counts, weight=weight, strength=strength, correction=fitted, fidelity=judged)
    return UnlearnOutcome(**counts, cause="fidelity",
                          reason=f"every correction broke the fidelity bounds (at the weakest: agreement "
                                 f"{judged.agreement:.3f}, divergence {judged.divergence:.4f})")
