"""Input filters: remove a found trigger pattern from the input before anything reads it.

When the Fourier probe gives the verdict, a notch removes its basis image's spatial frequency (or
only the phase of it that pushes hardest to the target); when the patch search does, an occlusion
covers the found patch with the clean samples' mean. Each filter is tried, widest first, as the
input filter of the edits the guard measures, and kept only where the fidelity limits hold. Neither needs a clean sample of
the target class; each costs only the clean content it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from auditor.detect.fourier import Fourier, perturbed, render, with_images
from auditor.detect.images import first_images, from_images, image_input, to_images
from auditor.detect.patch import Patch
from auditor.detect.verdict import Verdict
from auditor.io.data import Samples
from auditor.mitigation.guard import Edits, Fidelity, Guard
from auditor.settings import FourierSettings, RepairSettings


def notch_basis(frequency: tuple[int, int], height: int, width: int) -> np.ndarray:
    """[H*W, k]: an orthonormal basis of the images of spatial frequency (u, v), every phase
    (cos and sin; k = 1 where sin vanishes). Removing its span removes that frequency."""
    u, v = frequency
    i, j = np.meshgrid(np.arange(height) / height, np.arange(width) / width, indexing="ij")
    angle = 2 * np.pi * (u * i + v * j)
    columns = np.stack([np.cos(angle).ravel(), np.sin(angle).ravel()], axis=1)
    columns = columns[:, np.linalg.norm(columns, axis=0) > 1e-6 * np.sqrt(height * width)]
    basis, _ = np.linalg.qr(columns)
    return basis


@dataclass(frozen=True)
class Notch:
    """An input filter that removes one spatial frequency, or only one phase of it, from every
    channel of one image input."""

    input: str
    axes: tuple[int, ...]
    frequency: tuple[int, int]
    basis: np.ndarray  # [H*W, k], orthonormal columns: see notch_basis and phase_notch
    phase: float | None = None  # None: every phase of the frequency; else only its basis image at this phase

    def apply(self, samples: Samples) -> Samples:
        """`samples` with the frequency removed from the input (what the rewritten graph computes)."""
        original = samples.inputs[self.input]
        images = to_images(original, self.axes)  # [N, H, W, C]
        count, height, width, channels = images.shape
        flat = images.reshape(count, height * width, channels).astype(np.float64)
        flat = flat - self.basis @ np.einsum("pk,npc->nkc", self.basis, flat)
        filtered = from_images(flat.reshape(images.shape).astype(original.dtype), original, self.axes)
        return Samples({**samples.inputs, self.input: filtered}, samples.labels, samples.source)


def notch(samples: Samples, found: Fourier) -> Notch | None:
    """The filter that removes the found basis image's frequency, or None without an image input."""
    where = image_input(samples)
    if where is None:
        return None
    name, axes = where
    _, height, width, _ = to_images(samples.inputs[name][:1], axes).shape
    return Notch(name, axes, found.frequency, notch_basis(found.frequency, height, width))


def phase_notch(samples: Samples, clean_scores: np.ndarray, found: Fourier, classify: Callable[[Samples], np.ndarray],
                settings: FourierSettings) -> Notch | None:
    """The narrow filter: only the found frequency's basis image at one phase, the one (of
    `phase_steps` around the probe's) at which the pattern pushes the clean samples hardest towards
    the target (mean margin, through `classify`). It leaves the other phase of the frequency,
    natural content that a whole-frequency notch would also take, where a trigger of fixed
    phase (SIG's sinusoid) does not live. None without an image input or a sample to push."""
    chosen = first_images(samples, clean_scores, settings.max_samples)
    if chosen is None or found.target is None:
        return None
    name, axes, samples, scores = chosen
    others = np.flatnonzero(scores.argmax(axis=1) != found.target)
    original = samples.inputs[name]
    if not others.size or float(original.max()) <= float(original.min()):
        return None
    pushed = samples.take(others)
    images = to_images(pushed.inputs[name], axes)
    u, v = found.frequency
    phases = found.phase + np.linspace(-0.25 * np.pi, 0.25 * np.pi, settings.phase_steps)
    keys = [(u, v, float(phase)) for phase in phases]
    moved = perturbed(images, render(keys, *images.shape[1:3]), found.amplitude, float(original.min()), float(original.max()))
    out = np.asarray(classify(with_images(pushed, name, axes, moved)), dtype=np.float64)
    out = out.reshape(len(keys), len(others), -1)
    margin = out[..., found.target] - np.delete(out, found.target, axis=2).max(axis=2)
    phase = keys[int(np.argmax(margin.mean(axis=1)))][2]
    image = render([(u, v, phase)], *images.shape[1:3])[0].ravel().astype(np.float64)
    return Notch(name, axes, found.frequency, (image / np.linalg.norm(image))[:, None], phase)


@dataclass(frozen=True)
class Occlusion:
    """An input filter that replaces one window of an image input, on every channel, by the clean
    samples' mean there: x * keep + fill, with `keep` and `fill` of one sample's shape in the
    model's layout (what the rewritten graph computes)."""

    input: str
    window: tuple[int, int, int, int]  # row, column, height, width
    keep: np.ndarray  # 0 inside the window, 1 elsewhere
    fill: np.ndarray  # the clean mean inside the window, 0 elsewhere

    def apply(self, samples: Samples) -> Samples:
        original = samples.inputs[self.input]
        filtered = original * self.keep + self.fill
        return Samples({**samples.inputs, self.input: filtered.astype(original.dtype)}, samples.labels, samples.source)


def occlusion(samples: Samples, found: Patch, margin: int) -> Occlusion | None:
    """The filter that covers the found patch and `margin` pixels around it (clipped to the image)
    with the samples' mean, or None without an image input."""
    where = image_input(samples)
    if where is None:
        return None
    name, axes = where
    original = samples.inputs[name]
    images = to_images(original, axes)
    _, height, width, _ = images.shape
    size = found.pixels.shape[0]
    top, left = max(0, found.row - margin), max(0, found.column - margin)
    bottom, right = min(height, found.row + size + margin), min(width, found.column + size + margin)
    inside = np.zeros(images.shape[1:], dtype=bool)
    inside[top:bottom, left:right, :] = True
    like = original[:1]
    keep = from_images((~inside)[None].astype(original.dtype), like, axes)[0]
    mean = images.astype(np.float64).mean(axis=0)
    filled = from_images(np.where(inside, mean, 0.0)[None].astype(original.dtype), like, axes)[0]
    return Occlusion(name, (top, left, bottom - top, right - left), keep, filled)


@dataclass(frozen=True)
class FilterOutcome:
    """What became of one input filter: applied or why not, and what it covers.

    notch: `frequency` [u, v] of the Fourier probe's best basis, `phase` None (every phase) or the one
    phase removed; occlusion: `window` (row, column, height, width), when not applied the last tried."""

    kind: str  # "notch" | "occlusion"
    applied: bool = False
    weak: bool = False  # the verdict was under its threshold (>= filter_gate): tighter limits applied
    reason: str | None = None
    frequency: tuple[int, int] | None = None
    phase: float | None = None
    window: tuple[int, int, int, int] | None = None
    filter: Notch | Occlusion | None = None  # the applied filter
    fidelity: Fidelity | None = None  # measured with it, without the guard copies that took the shortcut

    def to_dict(self) -> dict:
        out: dict = {"applied": self.applied, "weak": self.weak, "reason": self.reason}
        if self.kind == "notch":
            out.update(frequency=None if self.frequency is None else list(self.frequency), phase=self.phase)
        else:
            out.update(window=None if self.window is None else list(self.window), fill="mean" if self.applied else None)
        return out


def limits(verdict: Verdict, settings: RepairSettings) -> tuple[float, float, bool] | None:
    """(floor, max_divergence, weak) for the input filters: the repair's own limits on a suspicious
    verdict, tighter ones on a weak verdict (filter_gate <= score < threshold), None below."""
    if verdict.suspicious:
        return settings.floor, settings.max_divergence, False
    if verdict.score >= settings.filter_gate:
        return 1.0 - settings.weak_slack * (1.0 - settings.floor), settings.weak_slack * settings.max_divergence, True
    return None


def shortcut_rows(clean_labels: np.ndarray, fidelity: Guard, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(anchored, shortcut) over the guard rows: anchored rows are copies of a clean sample of
    `target`; shortcut rows are copies (shifted, noisy, mixed) that the original already sends to
    `target` from a sample it puts elsewhere: the shortcut at work, not clean behaviour."""
    anchored = clean_labels[fidelity.origin] == target
    return anchored, (fidelity.reference_label == target) & ~anchored


def _gate(verdict: Verdict, basis: str, static_inputs: bool, settings: RepairSettings) -> tuple[tuple[float, float] | None, bool, str | None]:
    """((floor, max_divergence) or None, weak, why not) for an input filter for a verdict of `basis`."""
    found = verdict.fourier if basis == "fourier" else verdict.patch
    if verdict.basis != basis or found is None:
        return None, False, f"the {'Fourier probe' if basis == 'fourier' else 'patch search'} did not give the verdict"
    allowed = limits(verdict, settings)
    if allowed is None:
        return None, False, f"the verdict's score is under {settings.filter_gate}"
    if not static_inputs:
        return None, False, "the image input's size is not fixed"
    floor, max_divergence, weak = allowed
    return (floor, max_divergence), weak, None


def _first_within(clean_labels: np.ndarray, target: int, fidelity: Guard, edits: Edits,
                  allowed: tuple[float, float], candidates: Iterable[Any], describe: Callable[[Any], str]
                  ) -> tuple[Any, Fidelity | None, list[str]]:
    """Try the input filters `candidates` (None: skipped), in order, on top of `edits`; keep the
    first that holds the fidelity limits `allowed` (measured without the guard copies that took
    the shortcut). A lazy iterable builds a candidate only when the ones before it failed.
    Returns (that filter or None, its fidelity, what each failure cost, in words)."""
    _, shortcut = shortcut_rows(clean_labels, fidelity, target)
    failures = []
    for candidate in candidates:
        if candidate is None:
            continue
        judged = fidelity.fidelity(replace(edits, prefilter=candidate.apply), ~shortcut)
        if judged.within(*allowed):
            return candidate, judged, failures
        failures.append(f"{describe(candidate)}: agreement {judged.agreement:.3f}, divergence {judged.divergence:.4f}")
    return None, None, failures


def plan_notch(samples: Samples, clean_scores: np.ndarray, clean_labels: np.ndarray, verdict: Verdict,
               classify: Callable[[Samples], np.ndarray], fidelity: Guard, edits: Edits,
               static_inputs: bool, settings: RepairSettings, fourier_settings: FourierSettings) -> FilterOutcome:
    """When the Fourier probe gave the verdict: remove its basis image's spatial frequency from the
    input, or, where that breaks the fidelity limits on top of `edits`, only the phase of it that
    pushes hardest to the target, if that keeps them."""
    allowed, weak, why = _gate(verdict, "fourier", static_inputs, settings)
    if allowed is None:
        return FilterOutcome("notch", reason=why)
    found = notch(samples, verdict.fourier)
    if found is None:
        return FilterOutcome("notch", weak=weak, reason="no image input")
    if samples.inputs[found.input].dtype not in (np.float32, np.float64):
        # the guard filters in float64; a float16 graph would round the filter differently
        return FilterOutcome("notch", weak=weak, reason="the notch needs a float32 or float64 image input")

    def widest_first() -> Iterator[Notch | None]:
        """The whole frequency (whatever the trigger's phase), then, only if needed, the narrower
        filter, whose phase search costs forward passes."""
        yield found
        yield phase_notch(samples, clean_scores, verdict.fourier, classify, fourier_settings)

    kept, judged, failures = _first_within(clean_labels, verdict.target, fidelity, edits, allowed, widest_first(),
                                           lambda n: "every phase" if n.phase is None else f"phase {n.phase:.3f}")
    if kept is None:
        return FilterOutcome("notch", weak=weak, frequency=found.frequency,
                             reason=f"removing frequency {tuple(found.frequency)} broke the fidelity bounds ({'; '.join(failures)})")
    return FilterOutcome("notch", True, weak, None, found.frequency, kept.phase, filter=kept, fidelity=judged)


def plan_occlusion(samples: Samples, clean_labels: np.ndarray, verdict: Verdict, fidelity: Guard, edits: Edits,
                   static_inputs: bool, settings: RepairSettings, margins: tuple[int, ...]) -> FilterOutcome:
    """When the patch search gave the verdict: cover the found patch (and `margins` pixels around
    it, widest first) with the clean samples' mean, if that keeps the fidelity limits on top of `edits`."""
    allowed, weak, why = _gate(verdict, "patch", static_inputs, settings)
    if allowed is None:
        return FilterOutcome("occlusion", reason=why)
    tried = [c for c in (occlusion(samples, verdict.patch, around) for around in margins) if c is not None]
    if not tried:
        return FilterOutcome("occlusion", weak=weak, reason="no image input")
    kept, judged, failures = _first_within(clean_labels, verdict.target, fidelity, edits, allowed, tried,
                                           lambda o: f"window {tuple(o.window)} (mean)")
    if kept is None:
        return FilterOutcome("occlusion", weak=weak, window=tried[-1].window,
                             reason=f"covering the found patch broke the fidelity bounds ({'; '.join(failures)})")
    return FilterOutcome("occlusion", True, weak, window=kept.window, filter=kept, fidelity=judged)


def notch_text(frequency: tuple[int, int] | list[int], phase: float | None) -> str:
    """What an applied notch removed, in words: a whole spatial frequency or one phase of it."""
    u, v = frequency
    if phase is None:
        return f"spatial frequency ({u}, {v})"
    return f"phase {phase:.3f} of spatial frequency ({u}, {v})"


def window_text(window: tuple[int, int, int, int] | list[int]) -> str:
    """An occlusion's window (row, column, height, width) in words."""
    top, left, height, width = window
    return f"rows {top}-{top + height - 1}, columns {left}-{left + width - 1}"
