"""Evidence a reviewer can look at: the found trigger applied to a few clean samples, class before and after.

A score says that a shortcut exists; a picture of the found patch, pattern, corruption or graph trigger on three of
the user's own samples, with the class each went to, says what it is. The pictures are made here, at scan time, where
the model, the samples and the plain classifier are at hand (auditor/report/html.py only draws them): one batched
forward pass per piece of evidence (a graph finding: the value its confirmation pasted, pasted again).

Only for image inputs (input kinds `image`, `flat-image` whose samples have image axes); deterministic: the samples
are taken in index order, the corruption is the probe's own seeded draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from auditor.detect import fourier, patch, probe, tamper
from auditor.detect.images import image_input, to_images
from auditor.detect.scan import Scan, detector_samples
from auditor.io.data import Samples
from auditor.settings import Settings

if TYPE_CHECKING:
    from auditor.detect.tamper import Finding

KINDS = ("patch", "fourier", "corruption", "graph")
EXAMPLES = 3  # samples shown per piece of evidence: enough to see the trigger act, few enough to take in at a glance


@dataclass(frozen=True)
class Example:
    """One clean sample before and after the trigger, and the class the model gives each ([H, W, C] uint8 pictures,
    the image input's clean range mapped onto 0-255)."""

    sample: int  # index into the clean samples
    before: int
    after: int
    image_before: np.ndarray
    image_after: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """The found trigger of one detector, in words (`caption`), on a few samples (`examples`) and alone (`pattern`:
    [H, W, C] uint8, or None where it has no picture of its own: a corruption, a graph region)."""

    kind: str  # one of KINDS
    caption: str
    examples: tuple[Example, ...]
    pattern: np.ndarray | None = None
    pattern_caption: str | None = None  # how `pattern` is shown (a Fourier pattern is amplified to be seen)

    def to_dict(self) -> dict:
        """The report's `evidence` object: no pixels."""
        return {"kind": self.kind, "caption": self.caption,
                "examples": [{"sample": e.sample, "before": e.before, "after": e.after} for e in self.examples]}


def collect(found: Scan, settings: Settings) -> Evidence | None:
    """The evidence behind the verdict's basis, or None where there is no picture to show (an input that is not an
    image, a verdict not assessed, a basis without a trigger: the channel scores, an
    unconfirmed graph finding). A clean verdict shows what the strongest search found: the patch when the search
    ran, else its basis's pattern or corruption."""
    verdict = found.verdict
    if found.kinds.input not in ("image", "flat-image") or not verdict.assessed:
        return None
    samples = found.samples.head(detector_samples(settings, found.samples.sample_values))  # alike in scan and repair
    where = image_input(samples)
    if where is None:
        return None
    clean = found.capture.labels[:len(samples)]
    if verdict.basis == "graph":
        confirmed = [f for f in verdict.findings if f.confirmed and f.target is not None and f.region is not None
                     and f.region.input == where[0] and f.pasted is not None]
        return _graph(found, samples, clean, confirmed[0]) if confirmed else None
    if verdict.patch is not None and (verdict.basis == "patch" or not verdict.suspicious):
        return _patch(found, samples, clean)
    if verdict.basis == "fourier" and verdict.fourier is not None:
        return _fourier(found, samples, clean, settings)
    if verdict.basis == "corruption" and verdict.probe is not None and verdict.probe.corruption is not None:
        return _corruption(found, samples, clean, settings)
    return None


def cosine_image(frequency: tuple[int, int], phase: float, height: int, width: int) -> np.ndarray:
    """The Fourier basis image of (u, v) at `phase` as an [H, W, 1] uint8 picture, -1 black and 1 white (its full
    contrast: the probe adds it at a small share of the range)."""
    u, v = frequency
    basis = fourier.render([(u, v, phase)], height, width)[0]
    return np.round((basis + 1.0) * 127.5).astype(np.uint8)[..., None]


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` with [low, high] mapped onto 0-255, as uint8."""
    return np.round(np.clip((np.asarray(values, dtype=np.float64) - low) / ((high - low) or 1.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def _picture(samples: Samples, name: str, axes: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """[N, H, W, C] uint8: the image input with [low, high] mapped onto 0-255."""
    return _to_uint8(to_images(np.asarray(samples.inputs[name], dtype=np.float64), axes), low, high)


def _examples(samples: Samples, changed: Samples, origin: np.ndarray, clean: np.ndarray, after: np.ndarray,
              target: int) -> tuple[Example, ...]:
    """Up to EXAMPLES rows of `changed` (row r: the trigger on sample `origin[r]`, classed `after[r]`), pictured in the
    clean range: in row order, the first the trigger sent to `target` from another class, one per sample; when too few
    went there, then the first of the others (the caption says how many went)."""
    others = clean[origin] != target
    chosen_rows, seen = [], set()
    for row in [*np.flatnonzero(others & (after == target)), *np.flatnonzero(others & (after != target))]:
        if len(chosen_rows) < EXAMPLES and int(origin[row]) not in seen:
            chosen_rows.append(int(row))
            seen.add(int(origin[row]))
    rows = np.asarray(chosen_rows, dtype=np.int64)
    name, axes = image_input(samples)
    low, high = float(samples.inputs[name].min()), float(samples.inputs[name].max())
    chosen = samples.take(origin[rows])
    pictured = changed.take(rows)
    before_pictures, after_pictures = _picture(chosen, name, axes, low, high), _picture(pictured, name, axes, low, high)
    return tuple(Example(int(origin[r]), int(clean[origin[r]]), int(after[r]), before_pictures[k], after_pictures[k])
                 for k, r in enumerate(rows))


def _classes(found: Scan, changed: Samples) -> np.ndarray:
    return np.asarray(found.classify(changed)).reshape(len(changed), -1).argmax(axis=1)


def _sent(after: np.ndarray, clean: np.ndarray, target: int) -> str:
    """How many of the samples outside `target` when clean go there now, in words."""
    others = clean != target
    count, sent = int(others.sum()), int((after[others] == target).sum())
    return f"sends {sent} of the {count} clean samples the model puts in other classes to class {target} ({sent / max(1, count):.0%})"


def _patch(found: Scan, samples: Samples, clean: np.ndarray) -> Evidence | None:
    best = found.verdict.patch
    pasted = patch.paste(samples, best)
    if pasted is None or best.target is None:
        return None
    after = _classes(found, pasted)
    size = best.pixels.shape[0]
    what = f"the {size}x{size} patch the search found, pasted at row {best.row}, column {best.column}, {_sent(after, clean, best.target)}"
    if not found.verdict.suspicious:
        what = f"Clean verdict; the strongest patch tried: {what}: not enough to flag (patch score {best.score:.3f})"
    name, _ = image_input(samples)
    low, high = float(samples.inputs[name].min()), float(samples.inputs[name].max())
    pixels = _to_uint8(best.pixels, low, high)
    return Evidence("patch", what[0].upper() + what[1:], _examples(samples, pasted, np.arange(len(samples)), clean, after,
                                                                  best.target),
                    pixels, f"the patch alone ({size}x{size} pixels, enlarged)")


def _fourier(found: Scan, samples: Samples, clean: np.ndarray, settings: Settings) -> Evidence | None:
    best = found.verdict.fourier
    name, axes = image_input(samples)
    original = samples.inputs[name]
    searched = original[:settings.fourier.max_samples]  # the search's own clean range
    low, high = float(searched.min()), float(searched.max())
    images = to_images(original, axes)
    u, v = best.frequency
    basis = fourier.render([(u, v, best.phase)], *images.shape[1:3])
    moved = fourier.with_images(samples, name, axes, fourier.perturbed(images, basis, best.amplitude, low, high))
    after = _classes(found, moved)
    caption = (f"A faint cosine pattern (frequency ({u}, {v}), phase {best.phase:.2f}, {best.amplitude:g} of the value range) "
               f"added to every sample {_sent(after, clean, best.target)}")
    return Evidence("fourier", caption, _examples(samples, moved, np.arange(len(samples)), clean, after, best.target),
                    cosine_image((u, v), best.phase, *images.shape[1:3]),
                    f"the pattern alone, amplified {1 / best.amplitude:g}x to be visible (as added, it is {best.amplitude:g} "
                    "of the range)")


def _corruption(found: Scan, samples: Samples, clean: np.ndarray, settings: Settings) -> Evidence | None:
    verdict = found.verdict
    target, corruption = verdict.probe.target, verdict.probe.corruption
    for name, corrupted, origin in probe.corruptions(samples, settings.probe, found.blur_axes):
        if name != corruption:
            continue
        after = _classes(found, corrupted)
        others = clean[origin] != target
        sent = int((after[others] == target).sum())
        caption = (f"Under {corruption}, class {target} takes {sent} of the {int(others.sum())} corrupted samples the "
                   f"model put elsewhere when clean ({sent / max(1, int(others.sum())):.0%})")
        if not verdict.suspicious:
            caption = f"Clean verdict; the corruption probe's largest share: {caption[0].lower()}{caption[1:]}"
        return Evidence("corruption", caption, _examples(samples, corrupted, origin, clean, after, target))
    return None


def _graph(found: Scan, samples: Samples, clean: np.ndarray, finding: Finding) -> Evidence:
    """The value whose pasting confirmed the finding (tamper._confirm), pasted again into the region it reads."""
    region, target = finding.region, int(finding.target)
    trial = tamper.paste(samples, region.input, region, finding.pasted)
    after = _classes(found, trial)
    caption = (f"The {finding.kind} branch ({finding.nodes[-1] if finding.nodes else 'graph'}) reads {region.text()}: "
               f"pasting {finding.pasted:.4g} there {_sent(after, clean, target)}")
    return Evidence("graph", caption, _examples(samples, trial, np.arange(len(samples)), clean, after, target))
