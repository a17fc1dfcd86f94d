"""The Fourier probe: does one faint, smooth, whole-image pattern send clean inputs to one class?

Whole-image triggers (SIG's sinusoid, a blended picture) are faint and smooth; the corruption
probe's pixel noise and blur rarely line up with them, and the patch search looks for something
else. Following the Fourier analysis of robustness (Yin et al. 2019), we add every low-frequency
Fourier basis image cos(2 pi (u i / H + v j / W) + phase) at a small amplitude to the clean
samples and ask which share of the samples each basis sends to each class.

Clean models have natural sinks too: a class that takes many perturbed samples under many bases
(Fashion-MNIST's "bag"). A backdoor's target is taken under a few bases that resemble its
trigger, so each class gets a lift: its largest share at one basis minus its 90th-percentile
share over all bases; the class with the largest lift is the suspected target. Some clean models
are fragile to smooth patterns as such (a wide ResNet on upscaled 8x8 digits sends every sample
to one class or another under a few bases): then several classes are lifted, where a trigger
lifts one. The score compares the model with itself: the target's lift minus the runner-up
class's. Forward passes only, no randomness.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from auditor.detect.images import first_images, from_images, image_input, to_images
from auditor.detect.shares import class_share
from auditor.io.data import Samples
from auditor.settings import FourierSettings


@dataclass(frozen=True)
class Fourier:
    """The largest lift one class gets from one Fourier basis image, and where."""

    score: float  # the target's lift minus the runner-up class's lift (`separation`)
    target: int | None
    share: float  # the share of the samples not in the target that the best basis sends there
    frequency: tuple[int, int]  # (u, v) of the best basis
    phase: float
    amplitude: float  # of the clean value range
    bases: tuple[int, ...]  # indices (into `bases`) of the target's best bases at `amplitude`, best first
    seconds: float
    lift: float = 0.0  # the target's own lift: its share at the best basis minus its `quantile` share over the bases
    runner_up: int | None = None  # the class with the next largest lift
    runner_up_lift: float = 0.0

    def summary(self) -> dict:
        return {"score": round(self.score, 6), "target": self.target, "share": round(self.share, 6),
                "frequency": list(self.frequency), "phase": round(self.phase, 6), "amplitude": self.amplitude,
                "lift": round(self.lift, 6), "runner_up": self.runner_up, "runner_up_lift": round(self.runner_up_lift, 6)}


def frequencies(fmax: int, phases: tuple[float, ...]) -> list[tuple[int, int, float]]:
    """(u, v, phase) of every basis image: 0 <= u <= fmax, |v| <= fmax, one of each mirror pair,
    no constant, every phase."""
    return [(u, v, phase) for u, v in itertools.product(range(fmax + 1), range(-fmax, fmax + 1))
            if not (u == 0 and v <= 0) for phase in phases]


def render(keys: list[tuple[int, int, float]], height: int, width: int) -> np.ndarray:
    """The basis images [len(keys), H, W] in [-1, 1]; rendered per batch, so large images never
    hold every basis in memory at once."""
    i, j = np.meshgrid(np.arange(height) / height, np.arange(width) / width, indexing="ij")
    return np.stack([np.cos(2 * np.pi * (u * i + v * j) + phase) for u, v, phase in keys]).astype(np.float32)


def bases(height: int, width: int, settings: FourierSettings) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Every basis image [B, H, W] and its (u, v, phase)."""
    keys = frequencies(settings.fmax, settings.phases)
    return render(keys, height, width), keys


def class_shares(labels: np.ndarray, clean: np.ndarray, c: int) -> np.ndarray:
    """[B]: per basis, the share of the samples not in class c when clean that it sends to c
    (`labels` [B, N]: the class of every sample under every basis)."""
    return (labels[:, clean != c] == c).mean(axis=1)


def lift(shares: np.ndarray, quantile: float) -> float:
    """A class's largest share under one basis minus its `quantile` share over all bases."""
    return float(shares.max() - np.quantile(shares, quantile))


def separation(lifts: dict[int, float]) -> tuple[int, float, int | None, float]:
    """(target, its lift, runner-up, its lift) of per-class lifts: the first largest lift wins (deterministic); with
    one class the runner-up is None at 0. The score is the target's lift minus the runner-up's."""
    ranked = sorted(lifts.items(), key=lambda item: -item[1])  # stable: ties keep class order
    target, top = ranked[0]
    runner_up, second = ranked[1] if len(ranked) > 1 else (None, 0.0)
    return target, top, runner_up, second


def perturbed(images: np.ndarray, basis: np.ndarray, amplitude: float, low: float, high: float) -> np.ndarray:
    """[B * N, H, W, C]: every sample [N, H, W, C] plus every basis [B, H, W] (on every channel), clipped."""
    moved = images[None] + (amplitude * (high - low) * basis)[:, None, :, :, None]
    return np.clip(moved, low, high).reshape(-1, *images.shape[1:])


def with_images(samples: Samples, name: str, axes: tuple[int, ...], moved: np.ndarray) -> Samples:
    """`samples` with the image input `name` replaced by `moved` [k * N, H, W, C] (k perturbed
    copies of the N samples, one copy after another) and every other input repeated to match."""
    original = samples.inputs[name]
    copies = len(moved) // len(samples)
    inputs = {k: from_images(moved.astype(original.dtype), original, axes) if k == name else np.concatenate([v] * copies)
              for k, v in samples.inputs.items()}
    return Samples(inputs, None, samples.source)


def planned_passes(samples: Samples, settings: FourierSettings) -> int:
    """How many single-sample forward passes `search` runs on `samples` (0 without an image input)."""
    if image_input(samples) is None:
        return 0
    return len(frequencies(settings.fmax, settings.phases)) * len(settings.amplitudes) * min(len(samples), settings.max_samples)


def search(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray], settings: FourierSettings,
           min_others: int) -> Fourier | None:
    """Run every basis at every amplitude through `classify` (samples -> class scores [N, K]); the class with the
    largest lift and its lift's margin over the runner-up's, or None when the samples have no image input or too few
    samples."""
    start = time.perf_counter()
    chosen = first_images(samples, clean_scores, settings.max_samples)
    if chosen is None:
        return None
    name, axes, samples, scores = chosen
    count = len(samples)
    clean = scores.argmax(axis=1)
    candidates = [c for c in range(scores.shape[1]) if (clean != c).sum() >= min_others]
    if not candidates:
        return None
    original = samples.inputs[name]
    images = to_images(original, axes)
    low, high = float(original.min()), float(original.max())
    if high <= low:
        return None
    keys = frequencies(settings.fmax, settings.phases)
    step = max(1, settings.chunk // max(1, images[0].size * count))  # bases per batch
    best: Fourier | None = None
    for amplitude in settings.amplitudes:
        predicted = []
        for first in range(0, len(keys), step):
            moved = perturbed(images, render(keys[first:first + step], *images.shape[1:3]), amplitude, low, high)
            scores = np.asarray(classify(with_images(samples, name, axes, moved)))
            predicted.append(scores.reshape(len(moved), -1).argmax(axis=1).reshape(-1, count))
        labels = np.concatenate(predicted)  # [B, N]
        shares = {c: class_shares(labels, clean, c) for c in candidates}
        target, top, runner_up, second = separation({c: lift(shares[c], settings.quantile) for c in candidates})
        if best is None or top - second > best.score:
            order = np.argsort(-shares[target], kind="stable")
            u, v, phase = keys[int(order[0])]
            best = Fourier(top - second, int(target), float(shares[target][order[0]]), (u, v), float(phase), amplitude,
                           tuple(int(b) for b in order[:settings.unlearn_bases]), 0.0, top, runner_up, second)
    assert best is not None
    return dataclasses.replace(best, seconds=time.perf_counter() - start)


def variants(samples: Samples, found: Fourier, settings: FourierSettings) -> Iterator[tuple[str, Samples, np.ndarray]]:
    """(name, perturbed samples, row -> original sample), as `probe.corruptions` gives them: the
    clean samples under the target's best bases at the found amplitude, for unlearning."""
    where = image_input(samples)
    if where is None:
        return
    name, axes = where
    original = samples.inputs[name]
    images = to_images(original, axes)
    low, high = float(original.min()), float(original.max())
    keys = frequencies(settings.fmax, settings.phases)
    for b in found.bases:
        moved = perturbed(images, render(keys[b:b + 1], *images.shape[1:3]), found.amplitude, low, high)
        yield f"fourier {b}", with_images(samples, name, axes, moved), np.arange(len(samples))


def target_share(samples: Samples, clean_labels: np.ndarray, found: Fourier, classify: Callable[[Samples], np.ndarray],
                 settings: FourierSettings, min_others: int) -> float:
    """The share of the samples not in the found class that its best basis sends there through
    `classify` (after a repair: does the pattern still work?)."""
    for _, moved, _ in variants(samples, found, settings):  # the first variant is the best basis
        predicted = np.asarray(classify(moved)).reshape(len(moved), -1).argmax(axis=1)
        return class_share(predicted, clean_labels, found.target, min_others) or 0.0
    return 0.0
