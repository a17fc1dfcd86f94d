"""Stimulation: drive one channel at a time to a high value on the clean samples and watch
which class the model's scores move towards (in the spirit of ABS, forward passes only).

A backdoor channel is a shortcut to the target class: driven alone, it lifts one class
over the others on inputs of every class, while a benign channel is one feature among
many. The level is set per layer (a multiple of the layer's largest clean activation),
so dormant channels are driven as hard as the layer's busiest ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from auditor.capture import ChannelStats, run
from auditor.data import Samples
from auditor.rewrite import MASK_PREFIX, SHIFT_PREFIX, mask_feed, mask_shape
from auditor.units import Unit

LEVELS = (0.5, 1.0, 2.0)  # multiples of the layer's largest clean activation
MAX_SAMPLES = 20  # stimulation needs few inputs; more only costs time


@dataclass(frozen=True)
class Stimulation:
    """Per unit name: elevation [C] (mean margin of the most-lifted class, best level) and that class [C]."""

    elevation: dict[str, np.ndarray]
    label: dict[str, np.ndarray]
    seconds: float


def _layer_scale(stats: ChannelStats) -> float:
    peak = float(np.max(stats.max)) if stats.max.size else 0.0
    if peak > 0:
        return peak
    return float(np.sqrt(np.max(stats.sumsq) / max(stats.count, 1))) or 1.0


def _margins(scores: np.ndarray) -> np.ndarray:
    """[samples, classes] -> mean over samples of (score_k - best other score), per class k."""
    top2 = np.sort(scores, axis=1)[:, -2:]
    best_other = np.where(scores == top2[:, 1:2], top2[:, 0:1], top2[:, 1:2])
    return (scores - best_other).mean(axis=0)


def stimulate(session, output: str, units: list[Unit], samples: Samples, stats: dict[str, ChannelStats]) -> Stimulation:
    """Elevation of every channel of every unit; `session` runs `with_mask_inputs(..., shift=True)`."""
    start = time.perf_counter()
    if len(samples) > MAX_SAMPLES:
        samples = samples.take(np.arange(MAX_SAMPLES))
    feed = {**samples.inputs, **mask_feed(units, {}, shift=True)}
    elevation, label = {}, {}
    for position, unit in enumerate(units):
        scale = _layer_scale(stats[unit.name])
        best = np.full(unit.channels, -np.inf)
        best_label = np.zeros(unit.channels, dtype=np.int64)
        mask_name, shift_name = MASK_PREFIX + str(position), SHIFT_PREFIX + str(position)
        for channel in range(unit.channels):
            mask = np.ones(unit.channels, dtype=np.float32)
            mask[channel] = 0.0
            for level in LEVELS:
                shift = np.zeros(unit.channels, dtype=np.float32)
                shift[channel] = level * scale
                step = {**feed, mask_name: mask.reshape(mask_shape(unit)), shift_name: shift.reshape(mask_shape(unit))}
                (scores,) = run(session, [output], step)
                scores = np.asarray(scores, dtype=np.float64).reshape(len(samples), -1)
                margins = _margins(scores)
                k = int(np.argmax(margins))
                if margins[k] > best[channel]:
                    best[channel], best_label[channel] = margins[k], k
        elevation[unit.name], label[unit.name] = best, best_label
    return Stimulation(elevation, label, time.perf_counter() - start)
