"""How many samples a class takes: the statistic every detector reads its evidence from."""

from __future__ import annotations

import numpy as np


def class_share(predicted: np.ndarray, clean: np.ndarray, c: int, min_others: int) -> float | None:
    """The share of samples not predicted c when clean that are predicted c now (None: fewer than
    `min_others` such samples)."""
    others = clean != c
    if others.sum() < min_others:
        return None
    return float((predicted[others] == c).mean())


def confident_share(predicted: np.ndarray, clean: np.ndarray, c: int, min_others: int, relative: np.ndarray | None = None,
                    confidence: float = 0.0) -> float | None:
    """`class_share`, discounted when the samples c takes are classified with less confidence than clean samples are:
    times min(1, their median `relative` margin / `confidence`). A shortcut sends samples as confidently as the model
    classifies clean ones; a natural sink (where a clean model puts inputs it can no longer read) takes them unsure.
    Without `relative` margins (or with `confidence` 0) it is `class_share`."""
    share = class_share(predicted, clean, c, min_others)
    if not share or relative is None or confidence <= 0.0:
        return share
    taken = (clean != c) & (predicted == c)
    return share * min(1.0, float(np.median(relative[taken])) / confidence)


def largest_share(predicted: np.ndarray, clean: np.ndarray, classes: int, min_others: int, skip: tuple[int, ...] = (),
                  relative: np.ndarray | None = None, confidence: float = 0.0) -> tuple[float, int | None]:
    """max over classes c (but those in `skip`) of `confident_share`, and that class."""
    best, target = 0.0, None
    for c in range(classes):
        if c in skip:
            continue
        share = confident_share(predicted, clean, c, min_others, relative, confidence)
        if share is not None and share > best:
            best, target = share, c
    return best, target


def margins(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row's margin: the score of its class `own[i]` minus its best other score."""
    every = np.arange(len(scores))
    rival = scores.copy()
    rival[every, own] = -np.inf
    return scores[every, own] - rival.max(axis=1)


