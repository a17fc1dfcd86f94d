"""The model-level verdict: how far the classifier head can be pushed towards each class.

A backdoor gives its target class a shortcut: features that, once lit, win over every other
class. Within the box of feature values the clean samples reach at the head's input, we ask
for each class k how large a logit margin (logit k minus the best other) the head allows;
the target of a backdoor stands out among the classes (the maximum-margin statistic of
MM-BD, applied at the head with clean ranges instead of optimised inputs, so it needs no
gradients and no trigger). The score is the robust z-score of the largest margin among
the classes' margins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditor.graph.index import GraphIndex
from auditor.graph.units import Unit, head_affine


@dataclass(frozen=True)
class Margin:
    """Largest reachable margin per class [K], the class with the largest, and its robust z-score."""

    margins: np.ndarray
    target: int
    score: float


def reachable_margins(matrix: np.ndarray, bias: np.ndarray, low: np.ndarray, high: np.ndarray, steps: int) -> np.ndarray:
    """For each class k, max over h in [low, high] of min over j != k of (w_k - w_j) h + (b_k - b_j).

    A concave piecewise-linear maximisation: projected subgradient ascent from the box centre
    with a decaying step, deterministic, keeping the best value seen."""
    classes = len(matrix)
    width = np.maximum(high - low, 0.0)
    out = np.full(classes, -np.inf)
    for k in range(classes):
        others = np.delete(np.arange(classes), k)
        h = low + width / 2
        for step in range(steps):
            logits = matrix @ h + bias
            rival = others[np.argmax(logits[others])]
            out[k] = max(out[k], float(logits[k] - logits[rival]))
            direction = matrix[k] - matrix[rival]
            norm = float(np.abs(direction).max())
            if norm == 0.0:
                break
            h = np.clip(h + width * direction / norm / (1.0 + step / 10.0), low, high)
        logits = matrix @ h + bias
        out[k] = max(out[k], float(logits[k] - np.max(logits[others])))
    return out


def margin(index: GraphIndex, unit: Unit, low: np.ndarray, high: np.ndarray, steps: int) -> Margin | None:
    """The verdict statistic for `unit` (the classifier head) given its input's clean range [F]."""
    affine = head_affine(index, unit)
    if affine is None or len(affine[0]) < 3 or affine[0].shape[1] != len(high):
        return None
    margins = reachable_margins(*affine, np.asarray(low, np.float64), np.asarray(high, np.float64), steps)
    target = int(np.argmax(margins))
    center = float(np.median(margins))
    spread = 1.4826 * float(np.median(np.abs(margins - center)))
    spread = spread if spread > 1e-12 else float(np.mean(np.abs(margins - center))) or 1.0
    return Margin(margins=margins, target=target, score=(float(margins[target]) - center) / spread)
