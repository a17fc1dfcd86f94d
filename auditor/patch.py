"""The patch search: is there a small patch that sends clean inputs of every class to one class?

A patch trigger (BadNets, Trojan) is exactly that: a few pixels that override the image. The
corruption probe rarely meets such a trigger by chance, so we look for one, gradient-free, the
way query-based universal-patch attacks do (Sparse-RS, Croce et al. 2022): random search over
the position and the pixels of one square patch per class, pasted on the clean samples, kept
when it raises the class's margin over the samples the model puts elsewhere; then the best
patch's pixels are swept over every position. In a clean model a
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

from auditor.data import Samples
from auditor.probe import MIN_OTHERS, class_share, spatial_axes

SIZE = 0.15  # side of the square patch, as a share of the image's shorter side (4 pixels of 28: 2% of the area)
ITERATIONS = 300  # random-search steps
SCREEN = 100  # steps over every class (on SCREEN_SAMPLES of its samples) before only the SHORTLIST best go on
SHORTLIST = 3
SCREEN_SAMPLES = 5  # while screening, a class's patch is pasted on at most this many of its samples
MAX_CLASSES = 10  # with more classes, the search screens the ones clean samples rank highest after their own
MAX_SAMPLES = 10  # the search pastes patches on at most the first this many clean samples
LEVELS = (0.0, 1.0)  # pixel values a patch may take, as shares of the clean value range
MOVE = 0.15  # share of steps that move a patch anywhere
NUDGE = 0.2  # share of steps that move a patch by up to two positions
SEED = 0
# Independent searches (seeds SEED, SEED + 1, ...), the best kept. The search's outcome depends on
# its random stream: on the zoo's BadNets models one seed finds the trigger where another ends on
# a natural sink class. Over the five sample sets (bench/results/variants/, with
# unlearn.ANCHOR_WEIGHT then 1), two restarts raised the verdict AUC on the held-back half from
# 0.85 to 0.89 but on the tuning half only from 0.918 to 0.921, with more false alarms there (7%
# to 10% of clean pairs) and a worse worst-case accuracy cost (2.6 to 4.9 points), for up to
# twice the search's time (the second search runs wherever the first stays under the cap); two
# searches of half the steps each did worse than one on both halves. Judged on the tuning half: one.
RESTARTS = 1
# After the search, the best patch's pixels are tried at every position (on a grid of at most
# SWEEP_POSITIONS on large images), and the best position kept. The random search moves a patch
# little once its pixels fit: on a model that reads the image in tokens (a ViT) or through strided
# filters, a trigger's pattern also works one token away from where it was trained, and the
# search can end there (the zoo's ViT BadNets: one token to the left). Over the five sample sets
# (bench/results/variants/patch.SWEEP=false.json is the run without it) it raised the score of 7
# BadNets (model, set) pairs, each with the right target, and of no clean one; the tuning half's
# outcomes stayed the same, the held-back half gained one halved attack. It was designed after
# reading a held-back failure, so for it the held-back half is not an untouched test.
SWEEP = True
SWEEP_POSITIONS = 625  # 25 x 25: every position of a 4-pixel patch on a 28-pixel image
SWEEP_SCREEN = 3  # samples every position is tried on; the SWEEP_KEEP best positions are scored on all
SWEEP_KEEP = 5
CHUNK = 1 << 24  # input values per batch of the sweep (bounds memory for large images)


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


def image_input(samples: Samples) -> tuple[str, tuple[int, ...]] | None:
    """The first float input that looks like images, and its image axes."""
    for name, array in samples.inputs.items():
        if array.dtype.kind == "f" and array.size:
            axes = spatial_axes(array)
            if axes is not None:
                return name, axes
    return None


def first_images(samples: Samples, clean_scores: np.ndarray, limit: int
                 ) -> tuple[str, tuple[int, ...], Samples, np.ndarray] | None:
    """The image input's name and axes, the first `limit` samples (what a search perturbs) and
    their clean class scores [count, K] in float64. None when the samples have no image input."""
    where = image_input(samples)
    if where is None:
        return None
    count = min(len(samples), limit)
    scores = np.asarray(clean_scores, dtype=np.float64).reshape(len(clean_scores), -1)[:count]
    return (*where, samples.take(np.arange(count)) if len(samples) > count else samples, scores)


def to_images(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """A batch in the model's layout as [N, H, W, C] (a copy where the layout needs one)."""
    if array.ndim == 2:
        side = math.isqrt(array.shape[1])
        return array.reshape(len(array), side, side, 1)
    if array.ndim == 3:
        return array[..., None]
    return np.transpose(array, (0, 2, 3, 1)) if axes == (2, 3) else array


def from_images(images: np.ndarray, like: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """[N, H, W, C] back to the layout of `like`."""
    if like.ndim == 2:
        return images.reshape(len(images), -1)
    if like.ndim == 3:
        return images[..., 0]
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))) if axes == (2, 3) else images


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


SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # where unlearning pastes the found patch, around its place
# The occlusion covers the found patch and this many pixels around it, widest first: the patch a
# search finds often sits a pixel beside the trigger it answers to (a convolution answers both).
OCCLUSION_MARGINS = (1, 0)
# What covers the window, tried in this order at each margin: the clean samples' mean there, then
# the mean of the ring of pixels just outside the window, on each sample and channel (an inpainting:
# the covered pixels take the colour of what surrounds them, so less clean content changes where
# the window sits on an object). Off: over the five sample sets (bench/results/variants/) the ring
# let the occlusion through on one tuning pair where the mean broke the bounds (its target class
# lost 14 points instead of 30 to the head unlearning that ran there), but on a held-back pair it
# covered a found patch beside the trigger: nothing was left for unlearning to fit, and the attack
# stayed (ASR 18% -> 100%). Tuning pairs halved: 46 of 65 either way.
OCCLUSION_RING = False


@dataclass(frozen=True)
class Occlusion:
    """An input filter that replaces one window of an image input, on every channel, by the clean
    samples' mean there (`fill`) or by the mean of the ring of pixels around the window on each
    sample (`ring`): `keep`, `fill` and `ring` have one sample's shape in the model's layout, and
    the filter is x * keep + fill, plus sum(x * ring over `axes`) * (1 - keep) with a ring (what the
    rewritten graph computes)."""

    input: str
    window: tuple[int, int, int, int]  # row, column, height, width
    keep: np.ndarray  # 0 inside the window, 1 elsewhere
    fill: np.ndarray  # the clean mean inside the window (0 with a ring), 0 elsewhere
    ring: np.ndarray | None = None  # 1 / (ring pixels) on the ring around the window, 0 elsewhere
    axes: tuple[int, ...] = ()  # the batch's image axes, summed over for the ring's mean

    @property
    def kind(self) -> str:
        return "mean" if self.ring is None else "ring"

    def apply(self, samples: Samples) -> Samples:
        original = samples.inputs[self.input]
        filtered = original * self.keep + self.fill
        if self.ring is not None:
            filtered = filtered + (original * self.ring).sum(axis=self.axes, keepdims=True) * (1 - self.keep)
        return Samples({**samples.inputs, self.input: filtered.astype(original.dtype)}, samples.labels, samples.source)


def fill_text(kind: str) -> str:
    """What an occlusion of `kind` ("mean" or "ring") puts in its window, in words."""
    return "the mean of the pixels around it" if kind == "ring" else "the clean samples' mean"


def window_text(window: tuple[int, int, int, int] | list[int]) -> str:
    """An occlusion's window (row, column, height, width) in words."""
    top, left, height, width = window
    return f"rows {top}-{top + height - 1}, columns {left}-{left + width - 1}"


def occlusion(samples: Samples, found: Patch, margin: int, fill: str = "mean") -> Occlusion | None:
    """The filter that covers the found patch and `margin` pixels around it (clipped to the image)
    with the samples' mean (`fill` "mean") or each sample's mean on the ring of pixels around the
    window ("ring"), or None without an image input (or, for a ring, without a pixel around it)."""
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
    window = (top, left, bottom - top, right - left)
    if fill == "ring":
        ring = np.zeros(images.shape[1:], dtype=bool)
        ring[max(0, top - 1):bottom + 1, max(0, left - 1):right + 1, :] = True
        ring &= ~inside
        pixels = int(ring[:, :, 0].sum())
        if not pixels:
            return None  # the window covers the whole image
        weights = from_images((ring / pixels)[None].astype(original.dtype), like, axes)[0]
        summed = (1,) if original.ndim == 2 else axes  # a flat vector is one channel
        return Occlusion(name, window, keep, np.zeros_like(keep), weights, tuple(summed))
    mean = images.astype(np.float64).mean(axis=0)
    filled = from_images(np.where(inside, mean, 0.0)[None].astype(original.dtype), like, axes)[0]
    return Occlusion(name, window, keep, filled)


def variants(samples: Samples, found: Patch) -> Iterator[tuple[str, Samples, np.ndarray]]:
    """(name, patched samples, row -> original sample), as `probe.corruptions` gives them: the
    found patch at its place and one position off, for unlearning."""
    pasted = paste(samples, found, SHIFTS)
    if pasted is not None:
        yield "patch", pasted, np.tile(np.arange(len(samples)), len(pasted) // max(1, len(samples)))


def target_share(samples: Samples, clean_labels: np.ndarray, found: Patch, classify: Callable[[Samples], np.ndarray]) -> float:
    """The share of the samples not in the found patch's class that it sends there through `classify`
    (after a repair: does the patch still work?)."""
    pasted = paste(samples, found)
    if pasted is None:
        return 0.0
    predicted = np.asarray(classify(pasted)).reshape(len(pasted), -1).argmax(axis=1)
    return class_share(predicted, clean_labels, found.target) or 0.0


def planned_passes(samples: Samples, classes: int) -> int:
    """At most how many single-sample forward passes `search` runs on `samples` for a model with
    `classes` classes (0 without an image input): every candidate class screened on
    SCREEN_SAMPLES of its samples, then the shortlist on all of them, then the sweep. Patches already
    scored and an early stop make the real count lower."""
    where = image_input(samples)
    if where is None:
        return 0
    count = min(len(samples), MAX_SAMPLES)
    candidates = min(classes, MAX_CLASSES)
    screened = candidates * min(SCREEN_SAMPLES, count) * (SCREEN + 1) if candidates > SHORTLIST else 0
    shortlist = min(candidates, SHORTLIST) * count * (ITERATIONS - (SCREEN if screened else 0))
    name, axes = where
    height, width = to_images(samples.inputs[name][:1], axes).shape[1:3]
    grid = len(sweep_grid(height, width, patch_side(height, width)))
    swept = (grid * min(SWEEP_SCREEN, count) + min(grid, SWEEP_KEEP) * count) if SWEEP else 0
    return RESTARTS * (screened + candidates * count + shortlist + swept)


def search(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray],
           seed: int = SEED) -> Patch | None:
    """The best of RESTARTS searches (`_search`) with seeds seed, seed + 1, ...; the first that
    reaches the cap ends them."""
    start = time.perf_counter()
    best = None
    for k in range(RESTARTS):
        found = _search(samples, clean_scores, classify, seed + k)
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


def margins(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each row's margin: the score of its class `own[i]` minus its best other score."""
    every = np.arange(len(scores))
    rival = scores.copy()
    rival[every, own] = -np.inf
    return scores[every, own] - rival.max(axis=1)


def _search(samples: Samples, clean_scores: np.ndarray, classify: Callable[[Samples], np.ndarray],
            seed: int) -> Patch | None:
    """Search one patch per candidate class through `classify` (samples -> class scores [N, K]);
    the best one, or None when the samples have no image input or too few samples."""
    start = time.perf_counter()
    chosen = first_images(samples, clean_scores, MAX_SAMPLES)
    if chosen is None:
        return None
    name, axes, samples, scores = chosen
    clean = scores.argmax(axis=1)
    ordered = np.sort(scores, axis=1)
    typical = float(np.median(ordered[:, -1] - ordered[:, -2])) if scores.shape[1] > 1 else 0.0
    if typical <= 0.0:
        return None
    candidates = [c for c in range(scores.shape[1]) if (clean != c).sum() >= MIN_OTHERS]
    if len(candidates) > MAX_CLASSES:
        runner_up = np.where(np.arange(scores.shape[1]) == clean[:, None], -np.inf, scores).mean(axis=0)
        candidates = sorted(candidates, key=lambda c: (-runner_up[c], c))[:MAX_CLASSES]
    if not candidates:
        return None
    original = samples.inputs[name]
    images = to_images(original, axes)
    _, height, width, channels = images.shape
    size = patch_side(height, width)
    low, high = float(original.min()), float(original.max())
    values = np.asarray([low + level * (high - low) for level in LEVELS], dtype=original.dtype)
    rng = np.random.default_rng(seed)
    classes = np.array(candidates)
    rows = rng.integers(0, height - size + 1, len(classes))
    cols = rng.integers(0, width - size + 1, len(classes))
    pixels = values[rng.integers(0, len(values), (len(classes), size, size, channels))]

    everyone = [np.flatnonzero(clean != c) for c in classes]  # only these samples count for class c: only they run
    others = [o[:SCREEN_SAMPLES] for o in everyone] if len(classes) > SHORTLIST else everyone

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
    for step in range(ITERATIONS):
        if others is not everyone and (step == SCREEN or best.max() >= 1.0 - 1e-9):
            # the screen ends: every class's patch is scored again on all its samples, and the best go on
            others = everyone
            best, shares = evaluate_new(rows, cols, pixels, live)
            live = np.sort(np.argsort(-best, kind="stable")[:SHORTLIST])
        if best.max() >= 1.0 - 1e-9:
            break  # every sample sent at clean confidence: the score is capped there, nothing can beat it
        new_rows, new_cols, new_pixels = rows.copy(), cols.copy(), pixels.copy()
        block = max(1, round(size * (0.5 if step < ITERATIONS // 2 else 0.25)))
        for k in live:
            draw = rng.random()
            if draw < MOVE:
                new_rows[k], new_cols[k] = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
            elif draw < MOVE + NUDGE:
                new_rows[k] = min(max(int(rows[k]) + int(rng.integers(-2, 3)), 0), height - size)
                new_cols[k] = min(max(int(cols[k]) + int(rng.integers(-2, 3)), 0), width - size)
            else:
                r, c = rng.integers(0, size - block + 1, 2)
                new_pixels[k, r:r + block, c:c + block, :] = values[rng.integers(0, len(values), channels)]
        value, share = evaluate_new(new_rows, new_cols, new_pixels, live)
        better = live[value > best[live]]
        kept = value > best[live]
        rows[better], cols[better], pixels[better] = new_rows[better], new_cols[better], new_pixels[better]
        best[better], shares[better] = value[kept], share[kept]
    k = int(np.argmax(best))
    row, col, value, share = int(rows[k]), int(cols[k]), float(best[k]), float(shares[k])
    if SWEEP and value < 1.0 - 1e-9:
        row, col, value, share = _sweep(samples, name, axes, images, classify, everyone[k], int(classes[k]), pixels[k],
                                        typical, (row, col, value, share))
    return Patch(value, int(classes[k]), share, row, col, pixels[k].copy(), time.perf_counter() - start)


def patch_side(height: int, width: int) -> int:
    """The side of the searched square patch, in pixels."""
    return max(2, round(SIZE * min(height, width)))


def sweep_grid(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """The positions the sweep tries: every one, or an even grid of at most SWEEP_POSITIONS."""
    rows, cols = height - size + 1, width - size + 1
    stride = max(1, math.ceil(math.sqrt(rows * cols / SWEEP_POSITIONS)))
    return [(r, c) for r in range(0, rows, stride) for c in range(0, cols, stride)]


def _sweep(samples: Samples, name: str, axes: tuple[int, ...], images: np.ndarray, classify: Callable[[Samples], np.ndarray],
           others: np.ndarray, target: int, pixels: np.ndarray, typical: float,
           found: tuple[int, int, float, float]) -> tuple[int, int, float, float]:
    """(row, column, score, share) of the best position for `pixels` on the samples `others` (the
    ones not in `target`; `images`: the samples' image input as [N, H, W, C]), `found` unless a
    position beats its score. Every position of the grid is screened on SWEEP_SCREEN of the
    samples, the SWEEP_KEEP best are scored on all, as the search scores."""
    positions = sweep_grid(images.shape[1], images.shape[2], pixels.shape[0])
    score = functools.partial(_score_positions, samples, name, axes, images, classify, target=target, pixels=pixels,
                              typical=typical)
    if len(others) > SWEEP_SCREEN:
        screened, _ = score(others[:SWEEP_SCREEN], positions=positions)
        positions = [positions[k] for k in sorted(np.argsort(-screened, kind="stable")[:SWEEP_KEEP])]
    value, share = score(others, positions=positions)
    k = int(np.argmax(value))  # the first best: deterministic
    if value[k] > found[2]:
        return positions[k][0], positions[k][1], float(value[k]), float(share[k])
    return found


def _score_positions(samples: Samples, name: str, axes: tuple[int, ...], all_images: np.ndarray,
                     classify: Callable[[Samples], np.ndarray], others: np.ndarray, *, target: int, pixels: np.ndarray,
                     typical: float, positions: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(score, share) of `pixels` pasted at each of `positions` on the samples `others`."""
    original = samples.inputs[name]
    images = all_images[others]
    count, size = len(images), pixels.shape[0]
    per_chunk = max(1, CHUNK // max(1, images[0].size * count))
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
