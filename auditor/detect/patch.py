"""The patch search: is there a small patch that sends clean inputs of every class to one class?

A patch trigger (BadNets, Trojan) is exactly that: a few pixels that override the image. The
corruption probe rarely meets such a trigger by chance, so we look for one, gradient-free, the
way query-based universal-patch attacks do (Sparse-RS, Croce et al. 2022): random search over
the position and the pixels of one square patch per class, pasted on the clean samples, kept
when it raises the class's margin over the samples the model puts elsewhere; then the best
patch's pixels are swept over every position. A model with many classes gets no patch per class:
a few patches, each serving the class it pushes furthest, find which classes a patch reaches, in
passes that do not grow with the class count. In a clean model a
patch this small rarely overrides many images with clean-level confidence; a backdoor's target
takes them all.

The score is, for the best class, the mean over those samples of its margin (its score minus
the best other score), each capped at the clean samples' median margin, divided by that median:
1 means every sample was sent to the class as confidently as clean samples are classified.
Forward passes only; deterministic (seeded).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from auditor.detect.images import first_images, from_images, image_input, to_images
from auditor.detect.shares import class_share, margins
from auditor.io.data import Samples
from auditor.settings import PatchSettings


@dataclass(frozen=True)
class Patch:
    """The best patch found: its class, its score, where it sits, and what the report needs."""

    score: float  # capped mean margin over the clean median margin; <= 1
    target: int | None
    share: float  # share of the samples predicted elsewhere that the patch sends to the target
    row: int
    column: int
    pixels: np.ndarray  # [size, size, channels], in the input's value range
    seconds: float

    def summary(self) -> dict:
        size = int(self.pixels.shape[0])
        return {"score": round(self.score, 6), "target": self.target, "share": round(self.share, 6),
                "row": self.row, "column": self.column, "size": size}


def paste(samples: Samples, found: Patch, shifts: tuple[tuple[int, int], ...] = ((0, 0),)) -> Samples | None:
    """`samples` with the found patch pasted at its position (and at each shift of it that fits),
    one copy per shift, in order; None when the samples have no image input."""
    where = image_input(samples)
    if where is None:
        return None
    name, axes = where
    images = to_images(samples.inputs[name], axes)
    size = found.pixels.shape[0]
    copies = []
    for dr, dc in shifts:
        r, c = found.row + dr, found.column + dc
        if 0 <= r <= images.shape[1] - size and 0 <= c <= images.shape[2] - size:
            copy = images.copy()
            copy[:, r:r + size, c:c + size, :] = found.pixels
            copies.append(copy)
    inputs = {k: np.concatenate([v] * len(copies)) for k, v in samples.inputs.items() if k != name}
    inputs[name] = from_images(np.concatenate(copies), samples.inputs[name], axes)
    return Samples({k: inputs[k] for k in samples.inputs}, None, samples.source)


def variants(samples: Samples, found: Patch, settings: PatchSettings) -> Iterator[tuple[str, Samples, np.ndarray]]:
    """(name, patched samples, row -> original sample), as `probe.corruptions` gives them: the
    found patch at its place and one position off, for unlearning."""
    pasted = paste(samples, found, settings.unlearn_shifts)
    if pasted is not None:
        yield "patch", pasted, np.tile(np.arange(len(samples)), len(pasted) // max(1, len(samples)))


def target_share(samples: Samples, clean_labels: np.ndarray, found: Patch, classify: Callable[[Samples], np.ndarray],
                 min_others: int) -> float:
    """The share of the samples not in the found patch's class that it sends there through `classify`
    (after a repair: does the patch still work?)."""
    pasted = paste(samples, found)
    if pasted is None:
        return 0.0
    predicted = np.asarray(classify(pasted)).reshape(len(pasted), -1).argmax(axis=1)
    return class_share(predicted, clean_labels, found.target, min_others) or 0.0


def planned_passes(samples: Samples, classes: int, settings: PatchSettings) -> int:
    """At most how many single-sample forward passes `search` runs on `samples` for a model with
    `classes` classes (0 without an image input): every candidate class (with more than `max_classes`, as many
    patches free to serve any class) screened on
    `screen_samples` of its samples, then the shortlist on all of them, then the sweep. Patches already
    scored and an early stop make the real count lower."""
    where = image_input(samples)
    if where is None:
        return 0
    s = settings
    count = min(len(samples), s.max_samples)
    candidates = min(classes, s.max_classes)
    screened = candidates * min(s.screen_samples, count) * (s.screen + 1) if candidates > s.shortlist else 0
    shortlist = min(candidates, s.shortlist) * count * (s.iterations - (s.screen if screened else 0))
    name, axes = where
    height, width = to_images(samples.inputs[name][:1], axes).shape[1:3]
    grid = len(sweep_grid(height, width, patch_side(height, width, s), s))
    swept = grid * min(s.sweep_screen, count) + min(grid, s.sweep_keep) * count
    return s.restarts * (screened + candidates * count + shortlist + swept)


def search(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray],
           settings: PatchSettings, min_others: int) -> Patch | None:
    """The best of `restarts` searches (`_search`) with seeds seed, seed + 1, ...; the first that
    reaches the cap ends them."""
    start = time.perf_counter()
    best = None
    for k in range(settings.restarts):
        found = _search(samples, clean_scores, classify, settings, min_others, settings.seed + k)
        if found is None:
            return None
        if best is None or found.score > best.score:
            best = found
        if best.score >= 1.0 - 1e-9:
            break
    return replace(best, seconds=time.perf_counter() - start)


def segments(lengths: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """How to average consecutive segments of the given lengths: per distinct length, the
    segments that have it and the index [segments, length] of their values."""
    sizes = np.asarray(lengths)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return [(which, starts[which][:, None] + np.arange(length))
            for length in np.unique(sizes) for which in [np.flatnonzero(sizes == length)]]


def segment_means(values: np.ndarray, plan: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The mean of each segment of `values` (`plan` from `segments`). Segments of one length are
    averaged as the rows of one array: numpy sums a row as it sums a vector, so each mean is
    bit-identical to `segment.mean()`."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(sum(len(which) for which, _ in plan))
    for which, index in plan:
        out[which] = values[index].mean(axis=1)
    return out


def _search(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray],
            settings: PatchSettings, min_others: int, seed: int) -> Patch | None:
    """Search one patch per candidate class (beyond `max_classes` classes, see `_screen_any_class`) through
    `classify` (samples -> class scores [N, K]);
    the best one, or None when the samples have no image input or too few samples."""
    start = time.perf_counter()
    s = settings
    chosen = first_images(samples, clean_scores, s.max_samples)
    if chosen is None:
        return None
    name, axes, samples, scores = chosen
    clean = scores.argmax(axis=1)
    ordered = np.sort(scores, axis=1)
    typical = float(np.median(ordered[:, -1] - ordered[:, -2])) if scores.shape[1] > 1 else 0.0
    if typical <= 0.0:
        return None
    candidates = [c for c in range(scores.shape[1]) if (clean != c).sum() >= min_others]
    if not candidates:
        return None
    original = samples.inputs[name]
    images = to_images(original, axes)
    _, height, width, channels = images.shape
    size = patch_side(height, width, s)
    low, high = float(original.min()), float(original.max())
    values = np.asarray([low + level * (high - low) for level in s.levels], dtype=original.dtype)
    rng = np.random.default_rng(seed)
    steps = s.iterations
    if len(candidates) > s.max_classes:
        # too many classes to search one patch each: patches free to serve any class find the classes a patch
        # reaches, in as many passes as `max_classes` targeted patches would take
        def run(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
            inputs = {key: value[rows] for key, value in samples.inputs.items() if key != name}
            inputs[name] = from_images(batch, original, axes)
            return np.asarray(classify(Samples(inputs, None, samples.source)), dtype=np.float64).reshape(len(batch), -1)

        allowed = np.zeros(scores.shape[1], dtype=bool)
        allowed[candidates] = True
        classes, rows, cols, pixels = _screen_any_class(images, clean, allowed, typical, run, size, values, rng, s, min_others)
        if not len(classes):
            return None  # no class had enough screened samples outside it to be scored
        steps = s.iterations - s.screen
    else:
        classes = np.array(candidates)
        rows = rng.integers(0, height - size + 1, len(classes))
        cols = rng.integers(0, width - size + 1, len(classes))
        pixels = values[rng.integers(0, len(values), (len(classes), size, size, channels))]

    everyone = [np.flatnonzero(clean != c) for c in classes]  # only these samples count for class c: only they run
    others = [o[:s.screen_samples] for o in everyone] if len(classes) > s.shortlist else everyone

    split = functools.cache(segments)  # the classes evaluated together change twice per search

    def evaluate(rows: np.ndarray, cols: np.ndarray, pixels: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.array([len(others[k]) for k in which])
        chosen = np.concatenate([others[k] for k in which])
        batch = images[chosen]  # a copy: fancy indexing
        start = 0
        for k, length in zip(which, lengths):
            batch[start:start + length, rows[k]:rows[k] + size, cols[k]:cols[k] + size, :] = pixels[k]
            start += length
        inputs = {key: value[chosen] for key, value in samples.inputs.items() if key != name}
        inputs[name] = from_images(batch, original, axes)
        out = np.asarray(classify(Samples(inputs, None, samples.source)), dtype=np.float64).reshape(len(chosen), -1)
        margin = margins(out, np.repeat(classes[which], lengths))
        plan = split(tuple(lengths.tolist()))
        return segment_means(np.minimum(margin, typical), plan) / typical, segment_means(margin > 0, plan)

    # A step often proposes a patch already scored (a pixel set to the value it has, a nudge
    # against the border, a patch tried before): its score is known, so only new patches run
    # (the ResNet's search: 0.76 -> 0.52 s). On the CPU onnxruntime scores a row the same whatever
    # shares its batch (tests/test_patch.py), so the search ends exactly where it did without this.
    scored: dict[tuple, tuple[float, float]] = {}

    def evaluate_new(rows: np.ndarray, cols: np.ndarray, pixels: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = [(others is everyone, int(k), int(rows[k]), int(cols[k]), pixels[k].tobytes()) for k in which]
        todo = [i for i, key in enumerate(keys) if key not in scored]
        if todo:
            for i, value, share in zip(todo, *evaluate(rows, cols, pixels, which[todo])):
                scored[keys[i]] = (float(value), float(share))
        found = np.array([scored[key] for key in keys], dtype=np.float64).reshape(len(keys), 2)
        return found[:, 0], found[:, 1]

    live = np.arange(len(classes))
    best, shares = evaluate_new(rows, cols, pixels, live)
    for step in range(s.iterations - steps, s.iterations):
        if others is not everyone and (step == s.screen or best.max() >= 1.0 - 1e-9):
            # the screen ends: every class's patch is scored again on all its samples, and the best go on
            others = everyone
            best, shares = evaluate_new(rows, cols, pixels, live)
            live = np.sort(np.argsort(-best, kind="stable")[:s.shortlist])
        if best.max() >= 1.0 - 1e-9:
            break  # every sample sent at clean confidence: the score is capped there, nothing can beat it
        new_rows, new_cols, new_pixels = _propose(rng, rows, cols, pixels, live, step, (height, width), size, values, s)
        value, share = evaluate_new(new_rows, new_cols, new_pixels, live)
        better = live[value > best[live]]
        kept = value > best[live]
        rows[better], cols[better], pixels[better] = new_rows[better], new_cols[better], new_pixels[better]
        best[better], shares[better] = value[kept], share[kept]
    k = int(np.argmax(best))
    row, col, value, share = int(rows[k]), int(cols[k]), float(best[k]), float(shares[k])
    if value < 1.0 - 1e-9:
        row, col, value, share = _sweep(samples, name, axes, images, classify, everyone[k], int(classes[k]), pixels[k],
                                        typical, (row, col, value, share), s)
    return Patch(value, int(classes[k]), share, row, col, pixels[k].copy(), time.perf_counter() - start)


def _propose(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, pixels: np.ndarray, live: np.ndarray,
             step: int, bounds: tuple[int, int], size: int, values: np.ndarray, s: PatchSettings
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random-search step for each patch in `live` on an image of `bounds` (height, width): move it anywhere,
    nudge it by up to two positions, or repaint a block (half the patch's side in the first half of the steps, a
    quarter after) with one of `values` per channel."""
    height, width = bounds
    channels = pixels.shape[-1]
    new_rows, new_cols, new_pixels = rows.copy(), cols.copy(), pixels.copy()
    block = max(1, round(size * (0.5 if step < s.iterations // 2 else 0.25)))
    for k in live:
        draw = rng.random()
        if draw < s.move:
            new_rows[k], new_cols[k] = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        elif draw < s.move + s.nudge:
            new_rows[k] = min(max(int(rows[k]) + int(rng.integers(-2, 3)), 0), height - size)
            new_cols[k] = min(max(int(cols[k]) + int(rng.integers(-2, 3)), 0), width - size)
        else:
            r, c = rng.integers(0, size - block + 1, 2)
            new_pixels[k, r:r + block, c:c + block, :] = values[rng.integers(0, len(values), channels)]
    return new_rows, new_cols, new_pixels


def _screen_any_class(images: np.ndarray, clean: np.ndarray, allowed: np.ndarray, typical: float,
                      run: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int, values: np.ndarray, rng: np.random.Generator,
                      s: PatchSettings, min_others: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The screen of a model with more classes than `max_classes`: `max_classes` patches, each scored by the class it
    serves best (its capped mean margin, as `_search` scores, over those of the first `screen_samples` samples not in
    that class), searched for `screen` steps; then (classes, rows, columns, pixels) of the `shortlist` best distinct classes
    with the patch that reached each. The pass count is the targeted screen's, whatever the number of classes."""
    _, height, width, channels = images.shape
    members = s.max_classes
    shown = images[:min(s.screen_samples, len(images))]
    outside = clean[:len(shown), None] != np.arange(len(allowed))[None, :]  # [samples, classes]: whose margin counts
    counts = outside.sum(axis=0)
    usable = allowed & (counts >= min(min_others, len(shown)))

    def evaluate(rows: np.ndarray, cols: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.repeat(shown[None], members, axis=0)
        for k in range(members):
            batch[k, :, rows[k]:rows[k] + size, cols[k]:cols[k] + size, :] = pixels[k]
        out = run(batch.reshape(-1, *shown.shape[1:]), np.tile(np.arange(len(shown)), members)).reshape(members, len(shown), -1)
        order = np.sort(out, axis=2)
        top, second = order[..., -1:], order[..., -2:-1]
        rival = np.where(out >= top, second, top)  # each class's best other score
        capped = np.minimum(out - rival, typical) / typical
        value = np.where(outside[None], capped, 0.0).sum(axis=1) / np.maximum(counts, 1)[None]  # -inf * 0 is NaN
        value[:, ~usable] = -np.inf
        chosen = value.argmax(axis=1)  # the first best class: deterministic
        return value[np.arange(members), chosen], chosen

    rows = rng.integers(0, height - size + 1, members)
    cols = rng.integers(0, width - size + 1, members)
    pixels = values[rng.integers(0, len(values), (members, size, size, channels))]
    best, served = evaluate(rows, cols, pixels)
    live = np.arange(members)
    for step in range(s.screen):
        new_rows, new_cols, new_pixels = _propose(rng, rows, cols, pixels, live, step, (height, width), size, values, s)
        value, classes = evaluate(new_rows, new_cols, new_pixels)
        better = value > best
        rows[better], cols[better], pixels[better] = new_rows[better], new_cols[better], new_pixels[better]
        best[better], served[better] = value[better], classes[better]
    picked: dict[int, int] = {}  # class -> the best patch that reached it, best first
    for k in np.argsort(-best, kind="stable"):
        if np.isfinite(best[k]) and len(picked) < s.shortlist:
            picked.setdefault(int(served[k]), int(k))
    keep = np.array(list(picked.values()), dtype=np.int64)
    return served[keep].copy(), rows[keep].copy(), cols[keep].copy(), pixels[keep].copy()


def patch_side(height: int, width: int, settings: PatchSettings) -> int:
    """The side of the searched square patch, in pixels."""
    return max(2, round(settings.size * min(height, width)))


def sweep_grid(height: int, width: int, size: int, settings: PatchSettings) -> list[tuple[int, int]]:
    """The positions the sweep tries: every one, or an even grid of at most `sweep_positions`."""
    rows, cols = height - size + 1, width - size + 1
    stride = max(1, math.ceil(math.sqrt(rows * cols / settings.sweep_positions)))
    return [(r, c) for r in range(0, rows, stride) for c in range(0, cols, stride)]


def _sweep(samples: Samples, name: str, axes: tuple[int, ...], images: np.ndarray, classify: Callable[[Samples], np.ndarray],
           others: np.ndarray, target: int, pixels: np.ndarray, typical: float,
           found: tuple[int, int, float, float], settings: PatchSettings) -> tuple[int, int, float, float]:
    """(row, column, score, share) of the best position for `pixels` on the samples `others` (the
    ones not in `target`; `images`: the samples' image input as [N, H, W, C]), `found` unless a
    position beats its score. Every position of the grid is screened on `sweep_screen` of the
    samples, the `sweep_keep` best are scored on all, as the search scores."""
    positions = sweep_grid(images.shape[1], images.shape[2], pixels.shape[0], settings)
    score = functools.partial(_score_positions, samples, name, axes, images, classify, target=target, pixels=pixels,
                              typical=typical, values_per_batch=settings.chunk)
    if len(others) > settings.sweep_screen:
        screened, _ = score(others[:settings.sweep_screen], positions=positions)
        positions = [positions[k] for k in sorted(np.argsort(-screened, kind="stable")[:settings.sweep_keep])]
    value, share = score(others, positions=positions)
    k = int(np.argmax(value))  # the first best: deterministic
    if value[k] > found[2]:
        return positions[k][0], positions[k][1], float(value[k]), float(share[k])
    return found


def _score_positions(samples: Samples, name: str, axes: tuple[int, ...], all_images: np.ndarray,
                     classify: Callable[[Samples], np.ndarray], others: np.ndarray, *, target: int, pixels: np.ndarray,
                     typical: float, positions: list[tuple[int, int]], values_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, share) of `pixels` pasted at each of `positions` on the samples `others`."""
    original = samples.inputs[name]
    images = all_images[others]
    count, size = len(images), pixels.shape[0]
    per_chunk = max(1, values_per_batch // max(1, images[0].size * count))
    values, shares = [], []
    for first in range(0, len(positions), per_chunk):
        chunk = positions[first:first + per_chunk]
        batch = np.repeat(images[None], len(chunk), axis=0)
        for i, (r, c) in enumerate(chunk):
            batch[i, :, r:r + size, c:c + size, :] = pixels
        batch = batch.reshape(-1, *images.shape[1:])
        inputs = {key: np.tile(value[others], (len(chunk),) + (1,) * (value.ndim - 1))
                  for key, value in samples.inputs.items() if key != name}
        inputs[name] = from_images(batch, original, axes)
        out = np.asarray(classify(Samples({k: inputs[k] for k in samples.inputs}, None, samples.source)),
                         dtype=np.float64).reshape(len(batch), -1)
        margin = margins(out, np.full(len(out), target)).reshape(len(chunk), count)
        values.append(np.minimum(margin, typical).mean(axis=1) / typical)
        shares.append((margin > 0).mean(axis=1))
    return np.concatenate(values), np.concatenate(shares)
