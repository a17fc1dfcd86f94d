"""Samples for the model's inputs: .npz/.npy files read without pickle, checked against the graph."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from auditor.errors import DataError, ModelError


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, and shape (None for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class Samples:
    """Model-ready arrays by input name, each [N, ...], plus optional int labels [N]."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, size: int):
        """Yield feeds of at most `size` samples, in order."""
        for start in range(0, len(self), size):
            yield {name: array[start : start + size] for name, array in self.inputs.items()}

    def take(self, index: np.ndarray) -> Samples:
        labels = None if self.labels is None else self.labels[index]
        return Samples({k: v[index] for k, v in self.inputs.items()}, labels, self.source)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelError(f"input {value.name!r} is not a tensor; auditor supports tensor inputs only")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"input {value.name!r} has an unsupported element type") from exc
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dtype, shape))
    if not specs:
        raise ModelError("the model has no inputs to feed")
    return specs


def load(path: str | os.PathLike[str], specs: list[InputSpec], limit: int | None = None) -> Samples:
    """Read samples for `specs` from an .npz (array `x` or arrays named after inputs) or .npy."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"data path is a directory; give an .npz or .npy file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty (0 bytes): {path}")
    arrays = _read_arrays(path)
    labels = arrays.pop("y", None)
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in arrays:
        if "x" not in arrays:
            raise DataError(f"{path.name} has no array 'x' nor {names[0]!r} (found: {', '.join(sorted(arrays)) or 'none'})")
        arrays = {names[0]: arrays["x"]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{path.name} lacks arrays for model inputs {missing} (found: {', '.join(sorted(arrays)) or 'none'})")
    extra = sorted(set(arrays) - set(names) - {"x"})
    if extra:
        raise DataError(f"{path.name} has arrays {extra} that match no model input {names}; remove or rename them")
    inputs = {spec.name: _conform(arrays[spec.name], spec, path.name) for spec in specs}
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1:
        raise DataError(f"{path.name}: input arrays hold different numbers of samples {sorted(counts)}")
    count = counts.pop()
    if count == 0:
        raise DataError(f"{path.name} holds no samples")
    if labels is not None:
        labels = _labels(labels, count, path.name)
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be at least 1, got {limit}")
        if limit > count:
            raise DataError(f"{path.name} holds {count} samples, fewer than --limit {limit}")
        inputs = {k: v[:limit] for k, v in inputs.items()}
        labels = None if labels is None else labels[:limit]
    return Samples(inputs, labels, str(path))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                return {"x": np.asarray(archive)}
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataError(f"{path.name} holds Python objects (pickle); auditor never unpickles data: save plain numeric arrays") from exc
        raise DataError(f"cannot read {path.name} as .npz/.npy: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path.name} as .npz/.npy (corrupt or not numpy data)") from exc


def _conform(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{source}: array for {spec.name!r} has dtype {array.dtype}; numeric arrays only")
    if array.ndim == 0:
        raise DataError(f"{source}: array for {spec.name!r} is a scalar; expected [samples, ...]")
    if spec.shape is not None:
        expected = spec.shape[1:]
        got = array.shape[1:]
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
            shown = tuple("?" if e is None else e for e in expected)
            raise DataError(
                f"{source}: samples for {spec.name!r} have shape {got}, the model expects {shown} per sample "
                "(check layout: NCHW vs NHWC, flattening)"
            )
    if spec.dtype.kind == "f":
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / np.float32(255.0)  # images stored as bytes
        array = array.astype(spec.dtype)
        if not np.isfinite(array).all():
            raise DataError(f"{source}: samples for {spec.name!r} contain NaN or Inf")
    elif spec.dtype.kind in "iub":
        if array.dtype.kind == "f":
            raise DataError(f"{source}: model input {spec.name!r} is {spec.dtype}, data is {array.dtype}")
        array = array.astype(spec.dtype)
    return np.ascontiguousarray(array)


def _labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{source}: labels 'y' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) != count:
        raise DataError(f"{source}: {len(labels)} labels for {count} samples")
    if (labels < 0).any():
        raise DataError(f"{source}: labels 'y' must be non-negative class indices")
    return labels.astype(np.int64)
