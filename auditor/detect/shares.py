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


def largest_share(predicted: np.ndarray, clean: np.ndarray, classes: int, min_others: int,
                  skip: tuple[int, ...] = ()) -> tuple[float, int | None]:
    """max over classes c (but those in `skip`) of `class_share`, and that class."""
    best, target = 0.0, None
    for c in range(classes):
        if c in skip:
            continue
        share = class_share(predicted, clean, c, min_others)
        if share is not None and share > best:
            best, target = share, c
    return best, target


def margins(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row's margin: the score of its class `own[i]` minus its best other score."""
    every = np.arange(len(scores))
    rival = scores.copy()
    rival[every, own] = -np.inf
    return scores[every, own] - rival.max(axis=1)


