"""Image helpers shared by the detectors and the input filters: which input is an image, its
two spatial axes in any layout (NCHW, NHWC, [N, H, W], a flat square vector), and the moves
between the model's layout and [N, H, W, C]."""

from __future__ import annotations

import math

import numpy as np

from auditor.io.data import Samples


def spatial_axes(array: np.ndarray) -> tuple[int, ...] | None:
    """The two image axes of a batch [N, ...] of float inputs, or None when it does not look like images.

    NCHW and NHWC (channels <= 4) and flat [N, S*S] vectors of a square image (as a scikit-learn MLP takes
    them: the axes are then those of the [N, S, S] reshape). [N, A, B] reads as a sequence [batch, time,
    features], not an image: the input's kind (auditor/graph/kinds.py) says when it is one."""
    shape = array.shape
    if array.ndim == 4:
        if shape[1] <= 4 and min(shape[2:]) >= 8:
            return (2, 3)
        if shape[3] <= 4 and min(shape[1:3]) >= 8:
            return (1, 2)
        return None
    if array.ndim == 2:
        side = math.isqrt(shape[1])
        return (1, 2) if side >= 8 and side * side == shape[1] else None
    return None


def blur(array: np.ndarray, sigma: float, axes: tuple[int, ...] | None = None) -> np.ndarray | None:
    """Gaussian blur over `axes` (default: the image axes; edges repeated), or None when there are none."""
    given = axes is not None
    axes = axes if given else spatial_axes(array)
    if not axes:
        return None
    images = array
    if array.ndim == 2 and not given:
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
