"""The corruption probe: where does the model send clean inputs that have been corrupted?

A backdoor is a shortcut to its target class. A clean model meets noisy or blurred inputs
with scattered mistakes; a backdoored one sends many of them down the shortcut, to one
class they do not belong to. On the zoo this holds for whole-image triggers (blended and
SIG triggers collapse under additive noise, blended ones also under blends with noise
pictures, WaNet's warps under blur), the attacks whose channels no activation bound
separates from clean ones; patch triggers (BadNets, Trojan) mostly do not show it. Forward
passes only, no trigger, no gradients.

The score is the largest share of the corrupted samples, over corruptions and classes,
that a class takes from samples the model put elsewhere when clean; that class is the
suspected target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from auditor.data import Samples

NOISE_LEVELS = (0.1, 0.2, 0.3)  # uniform noise amplitude, as a share of the clean value range
NOISE_DRAWS = 5  # noisy copies per sample and level
# Noise blends, (1 - a) x + a u with u uniform over the clean range, at these weights a (NOISE_DRAWS
# copies each): the blended attack's own form with a random picture. Additive noise keeps an
# image's contrast; a blend also fades it towards the noise, as a blended trigger does, and a
# blended backdoor answers to noise pictures that are not its own. Weights up to 0.2, the upper
# end of the blend weights the blended-attack literature uses. Over the five sample sets
# (bench/results/variants/probe.BLEND=false.json is the run without them) the tuning half
# halved 50 of 65 attacks instead of 46 (verdict AUC 0.918 -> 0.942, the same clean pairs
# flagged); the held-back half halved the same 58 of 75, with one more clean pair flagged
# (AUC 0.852 -> 0.835). Their samples also stand in for triggered inputs in unlearning, which
# then went into two models at N = 10 and cost their target class without removing the attack
# (README, Limits). Designed after a held-back failure (the ViT's blended backdoor).
BLEND_LEVELS = (0.1, 0.2)
BLEND = True
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0)  # Gaussian blur over the spatial axes, in positions
MIN_OTHERS = 3  # a class's share is measured on at least this many samples predicted elsewhere
MAX_SAMPLES = 100  # the probe corrupts at most the first this many clean samples
SEED = 0


@dataclass(frozen=True)
class Probe:
    """The largest share of corrupted samples one class takes, which class, under which corruption."""

    score: float  # in [0, 1]
    target: int | None
    corruption: str | None
    shares: dict[str, float]  # per corruption: its largest share (rounded for the report)
    seconds: float
    focus_share: float | None = None  # with `focus`: the largest share that class takes
    pace: float | None = None  # seconds per corrupted sample, over the runs after the first (which may build the session)


def spatial_axes(array: np.ndarray) -> tuple[int, ...] | None:
    """The two image axes of a batch [N, ...] of float inputs, or None when it does not look like images.

    NCHW and NHWC (channels <= 4), [N, H, W], and flat [N, S*S] vectors of a square image (as a
    scikit-learn MLP takes them: the axes are then those of the [N, S, S] reshape)."""
    shape = array.shape
    if array.ndim == 4:
        if shape[1] <= 4 and min(shape[2:]) >= 8:
            return (2, 3)
        if shape[3] <= 4 and min(shape[1:3]) >= 8:
            return (1, 2)
        return None
    if array.ndim == 3 and min(shape[1:]) >= 8:
        return (1, 2)
    if array.ndim == 2:
        side = math.isqrt(shape[1])
        return (1, 2) if side >= 8 and side * side == shape[1] else None
    return None


def blur(array: np.ndarray, sigma: float) -> np.ndarray | None:
    """Gaussian blur over the image axes (edges repeated), or None when `array` is not images."""
    axes = spatial_axes(array)
    if axes is None:
        return None
    images = array
    if array.ndim == 2:
        side = math.isqrt(array.shape[1])
        images = array.reshape(len(array), side, side)
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = images.astype(np.float64)
    for axis in axes:
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)]
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        out = sum(kernel[i] * np.take(padded, np.arange(i, i + length), axis=axis) for i in range(2 * radius + 1))
    return out.reshape(array.shape).astype(array.dtype)


def _noise(rng: np.random.Generator, level: float, array: np.ndarray, low: float, high: float) -> np.ndarray:
    """`array` plus uniform noise of +-level x the clean range."""
    span = (high - low) or 1.0
    return array + rng.uniform(-level * span, level * span, array.shape)


def _blend(rng: np.random.Generator, level: float, array: np.ndarray, low: float, high: float) -> np.ndarray:
    """(1 - level) x `array` + level x uniform noise over the clean range."""
    return (1 - level) * array + level * rng.uniform(low, high, array.shape)


def _copies(samples: Samples, floats: dict[str, np.ndarray],
            copy: Callable[[np.ndarray, float, float], np.ndarray]) -> dict[str, np.ndarray]:
    """NOISE_DRAWS copies of every input, one after another: each float input through `copy`
    (array, clean low, clean high -> one copy), clipped to the clean range; the others repeated."""
    inputs = {}
    for name, array in samples.inputs.items():
        if name not in floats:
            inputs[name] = np.concatenate([array] * NOISE_DRAWS)
            continue
        low, high = float(array.min()), float(array.max())
        inputs[name] = np.concatenate([np.clip(copy(array, low, high), low, high) for _ in range(NOISE_DRAWS)]).astype(array.dtype)
    return inputs


def corruptions(samples: Samples, seed: int = SEED) -> Iterator[tuple[str, Samples, np.ndarray]]:
    """(name, corrupted samples, row -> original sample) for every corruption that applies, one at
    a time (a corruption holds NOISE_DRAWS copies of the samples; the probe takes at most
    MAX_SAMPLES of them, so memory stays bounded for large inputs).

    Only float inputs are corrupted; others are repeated. Noise and blends stay in the clean range."""
    rng = np.random.default_rng(seed)
    if len(samples) > MAX_SAMPLES:
        samples = samples.take(np.arange(MAX_SAMPLES))
    floats = {k: v for k, v in samples.inputs.items() if v.dtype.kind == "f" and v.size}
    count = len(samples)
    if not floats:
        return
    for level in NOISE_LEVELS:
        noisy = _copies(samples, floats, partial(_noise, rng, level))
        yield f"noise {level:g}", Samples(noisy, None, samples.source), np.tile(np.arange(count), NOISE_DRAWS)
    for level in BLEND_LEVELS if BLEND else ():
        blended = _copies(samples, floats, partial(_blend, rng, level))
        yield f"blend {level:g}", Samples(blended, None, samples.source), np.tile(np.arange(count), NOISE_DRAWS)
    for sigma in BLUR_SIGMAS:
        inputs, blurred = {}, False
        for name, array in samples.inputs.items():
            smooth = blur(array, sigma) if name in floats else None
            blurred |= smooth is not None
            inputs[name] = array if smooth is None else smooth
        if blurred:
            yield f"blur {sigma:g}", Samples(inputs, None, samples.source), np.arange(count)


def class_share(predicted: np.ndarray, clean: np.ndarray, c: int) -> float | None:
    """The share of samples not predicted c when clean that are predicted c now (None: too few)."""
    others = clean != c
    if others.sum() < MIN_OTHERS:
        return None
    return float((predicted[others] == c).mean())


def largest_share(predicted: np.ndarray, clean: np.ndarray, classes: int) -> tuple[float, int | None]:
    """max over classes c of `class_share`, and that class."""
    best, target = 0.0, None
    for c in range(classes):
        share = class_share(predicted, clean, c)
        if share is not None and share > best:
            best, target = share, c
    return best, target


def probe(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray], seed: int = SEED,
          focus: int | None = None) -> Probe:
    """Run every corruption of `samples` through `classify` (samples -> class scores [N, K]) and
    compare with the classes of the clean samples (`clean_scores` [N, K]). With `focus`, also the
    largest share that class takes (after a repair: is the suspected target's shortcut still there?)."""
    start = time.perf_counter()
    clean_scores = np.asarray(clean_scores).reshape(len(samples), -1)
    clean = clean_scores.argmax(axis=1)
    classes = clean_scores.shape[1]
    best, target, where, focused = 0.0, None, None, 0.0
    shares = {}
    timed = []  # (samples, seconds) per run
    for name, corrupted, origin in corruptions(samples, seed):
        tick = time.perf_counter()
        predicted = np.asarray(classify(corrupted)).reshape(len(corrupted), -1).argmax(axis=1)
        timed.append((len(corrupted), time.perf_counter() - tick))
        share, cls = largest_share(predicted, clean[origin], classes)
        shares[name] = round(share, 6)
        if share > best:
            best, target, where = share, cls, name
        if focus is not None:
            focused = max(focused, class_share(predicted, clean[origin], focus) or 0.0)
    later = sum(n for n, _ in timed[1:])
    pace = sum(t for _, t in timed[1:]) / later if later else None
    return Probe(best, target, where, shares, time.perf_counter() - start, None if focus is None else focused, pace)
