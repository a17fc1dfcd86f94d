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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from auditor.detect.images import blur
from auditor.detect.shares import confident_share, largest_share, margins
from auditor.io.data import Samples
from auditor.settings import ProbeSettings


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


def _noise(rng: np.random.Generator, level: float, array: np.ndarray, low: float, high: float) -> np.ndarray:
    """`array` plus uniform noise of +-level x the clean range."""
    span = (high - low) or 1.0
    return array + rng.uniform(-level * span, level * span, array.shape)


def _blend(rng: np.random.Generator, level: float, array: np.ndarray, low: float, high: float) -> np.ndarray:
    """(1 - level) x `array` + level x uniform noise over the clean range."""
    return (1 - level) * array + level * rng.uniform(low, high, array.shape)


def _copies(samples: Samples, floats: dict[str, np.ndarray], draws: int,
            copy: Callable[[np.ndarray, float, float], np.ndarray]) -> dict[str, np.ndarray]:
    """`draws` copies of every input, one after another: each float input through `copy`
    (array, clean low, clean high -> one copy), clipped to the clean range; the others repeated."""
    inputs = {}
    for name, array in samples.inputs.items():
        if name not in floats:
            inputs[name] = np.concatenate([array] * draws)
            continue
        low, high = float(array.min()), float(array.max())
        filled = np.empty((draws * len(array), *array.shape[1:]), dtype=array.dtype)
        for draw in range(draws):  # one draw's float64 temporaries at a time, not all of them (memory grew with N)
            filled[draw * len(array):(draw + 1) * len(array)] = np.clip(copy(array, low, high), low, high)
        inputs[name] = filled
    return inputs


def probed_count(count: int, sample_values: int, settings: ProbeSettings) -> int:
    """How many of the first `count` samples (of `sample_values` input values each) the probe corrupts: `max_samples`,
    fewer where one corruption's copies of them would hold more than `max_values` input values."""
    return max(1, min(count, settings.max_samples, settings.max_values // max(1, sample_values * settings.noise_draws)))


def corruptions(samples: Samples, settings: ProbeSettings, blur_axes: dict[str, tuple[int, ...]] | None = None
                ) -> Iterator[tuple[str, Samples, np.ndarray]]:
    """(name, corrupted samples, row -> original sample) for every corruption that applies, one at
    a time (a corruption holds `noise_draws` copies of the samples; the probe takes the first `probed_count` of them, so
    memory stays bounded for large inputs).

    Only float inputs are corrupted; others are repeated. Noise and blends stay in the clean range. Blur runs along
    `blur_axes[name]` when given (a sequence's time axis; () for none), else along an image's axes."""
    rng = np.random.default_rng(settings.seed)
    draws = settings.noise_draws
    samples = samples.head(probed_count(len(samples), samples.sample_values, settings))
    floats = {k: v for k, v in samples.inputs.items() if v.dtype.kind == "f" and v.size}
    count = len(samples)
    if not floats:
        return
    # each corruption's copies are made after the last one's are let go (the caller drops its reference too): at
    # N = 100 and 224 px one corruption holds 300 MB
    for level in settings.noise_levels:
        yield f"noise {level:g}", Samples(_copies(samples, floats, draws, partial(_noise, rng, level)), None,
                                          samples.source), np.tile(np.arange(count), draws)
    for level in settings.blend_levels:
        yield f"blend {level:g}", Samples(_copies(samples, floats, draws, partial(_blend, rng, level)), None,
                                          samples.source), np.tile(np.arange(count), draws)
    for sigma in settings.blur_sigmas:
        inputs, blurred = {}, False
        for name, array in samples.inputs.items():
            axes = None if blur_axes is None else blur_axes.get(name)
            smooth = blur(array, sigma, axes) if name in floats else None
            blurred |= smooth is not None
            inputs[name] = array if smooth is None else smooth
        if blurred:
            yield f"blur {sigma:g}", Samples(inputs, None, samples.source), np.arange(count)


def probe(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray], settings: ProbeSettings,
          min_others: int, focus: int | None = None, blur_axes: dict[str, tuple[int, ...]] | None = None,
          background: tuple[int, ...] = (), reference: np.ndarray | None = None) -> Probe:
    """Run every corruption of `samples` through `classify` (samples -> class scores [N, K]) and
    compare with the classes of the clean samples (`clean_scores` [N, K]). With `focus`, also the
    largest share that class takes (after a repair: is the suspected target's shortcut still there?).
    `background`: the model's declared background classes, never a target here (corruption fills them by design).
    `reference`: the probed model's own scores of the clean samples, when it is not the model that gave `clean_scores`
    (a repaired model): how surely it classifies them is what its corrupted samples are measured against."""
    start = time.perf_counter()
    clean_scores = np.asarray(clean_scores, dtype=np.float64).reshape(len(clean_scores), -1)  # may cover more samples
    clean = clean_scores.argmax(axis=1)
    classes = clean_scores.shape[1]
    sure = clean_scores if reference is None else np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    typical = float(np.median(margins(sure, clean))) if classes > 1 else 0.0  # how surely clean samples are classified
    best, target, where, focused = 0.0, None, None, 0.0
    shares = {}
    timed = []  # (samples, seconds) per run
    for name, corrupted, origin in corruptions(samples, settings, blur_axes):
        tick = time.perf_counter()
        scores = np.asarray(classify(corrupted), dtype=np.float64).reshape(len(corrupted), -1)
        timed.append((len(corrupted), time.perf_counter() - tick))
        predicted = scores.argmax(axis=1)
        relative = margins(scores, predicted) / typical if typical > 0 else np.ones(len(predicted))
        share, cls = largest_share(predicted, clean[origin], classes, min_others, background, relative, settings.confidence)
        shares[name] = round(share, 6)
        if share > best:
            best, target, where = share, cls, name
        if focus is not None:
            focused = max(focused, confident_share(predicted, clean[origin], focus, min_others, relative,
                                                   settings.confidence) or 0.0)
        del corrupted, scores  # before the next corruption's copies are made
    later = sum(n for n, _ in timed[1:])
    pace = sum(t for _, t in timed[1:]) / later if later else None
    return Probe(best, target, where, shares, time.perf_counter() - start, None if focus is None else focused, pace)
