"""Samples for the model's inputs: .npz/.npy files read without pickle, checked against the graph."""

from __future__ import annotations

import contextlib
import lzma
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from auditor.errors import DataError, InternalError, ModelError
from auditor.settings import PreprocessSettings


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
    preprocessing: dict | None = None  # a folder of images: what was applied (auditor/io/images.py); None for arrays

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def sample_values(self) -> int:
        """Input values per sample, over every input."""
        return sum(int(np.prod(array.shape[1:], dtype=np.int64)) for array in self.inputs.values())

    def batches(self, size: int):
        """Yield feeds of at most `size` samples, in order."""
        for start in range(0, len(self), size):
            yield {name: array[start : start + size] for name, array in self.inputs.items()}

    def take(self, index: np.ndarray) -> Samples:
        labels = None if self.labels is None else self.labels[index]
        return Samples({k: v[index] for k, v in self.inputs.items()}, labels, self.source, self.preprocessing)

    def feeds(self, rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(rows, feed) for at most `size` of `rows` at a time, in order (as `SampleFile.feeds`)."""
        for first in range(0, len(rows), size):
            chosen = rows[first:first + size]
            yield chosen, {name: array[chosen] for name, array in self.inputs.items()}

    def head(self, count: int) -> Samples:
        """The first `count` samples (all of them when there are no more)."""
        return self if count >= len(self) else self.take(np.arange(count))


@dataclass(frozen=True)
class SampleFile:
    """The samples of an .npz or .npy file, left there and read a block of rows at a time, each block conformed as
    `load` conforms the whole: a pass over N samples holds one block, not N (1000 samples of 224 px are 600 MB
    as float32). Only the labels are held."""

    path: Path
    specs: tuple[InputSpec, ...]
    packed: bool  # an .npz (else a single .npy)
    members: dict[str, str]  # input name -> the array that feeds it
    count: int
    labels: np.ndarray | None
    sample_values: int  # input values per sample, over every input (as `Samples.sample_values`), from the headers

    def __len__(self) -> int:
        return self.count

    @property
    def source(self) -> str:
        return str(self.path)

    def feeds(self, rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(rows, feed) for at most `size` of `rows` (strictly ascending, within the samples) at a time, in order; the
        file is read once, front to back, each block from its first row to its last."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.count or (np.diff(rows) <= 0).any()):
            raise InternalError(f"rows of {self.path.name} asked out of order or out of range")
        with contextlib.ExitStack() as stack:
            archive = stack.enter_context(_zip(self.path)) if self.packed else None
            readers = {spec.name: stack.enter_context(_RowReader(self.path, archive, self.members[spec.name]))
                       for spec in self.specs}
            for first in range(0, len(rows), size):
                chosen = rows[first:first + size]
                yield chosen, {spec.name: _conform(readers[spec.name].rows(int(chosen[0]), int(chosen[-1]) + 1)[chosen - chosen[0]],
                                                   spec, self.path.name) for spec in self.specs}

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of at most `size` samples, in order (as `Samples.batches`)."""
        for _, feed in self.feeds(np.arange(self.count), size):
            yield feed

    def head(self, count: int) -> Samples:
        """The first `count` samples (all of them when there are no more), in memory."""
        if count < 1:
            raise InternalError("the first samples of a file asked for none")
        rows = np.arange(min(count, self.count))
        (_, feed), = self.feeds(rows, len(rows))
        return Samples(feed, None if self.labels is None else self.labels[rows], self.source)


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
            # older exporters (paddle2onnx) write a dynamic dimension as dim_value -1; onnxruntime runs it at any size
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dtype, shape))
    if not specs:
        raise ModelError("the model has no inputs to feed")
    return specs


def batch_size(specs: list[InputSpec], free: int) -> int:
    """How many samples one run may hold: `free` when the batch dimension is symbolic, 1 when an
    exporter fixed it at 1 (torch.onnx.export without dynamic axes does); any other fixed batch is
    refused, since the samples rarely divide into it."""
    fixed = {spec.shape[0] for spec in specs if spec.shape and spec.shape[0]}
    if not fixed:
        return free
    if fixed == {1}:
        return 1
    raise ModelError(f"the model's batch dimension is fixed at {', '.join(map(str, sorted(fixed)))}: "
                     "export it with a dynamic batch dimension (or a batch of 1) to audit it")


def bounded_batch(batch: int, samples: Samples | SampleFile, max_values: int) -> int:
    """`batch`, lowered so that one run holds at most `max_values` input values (at least one sample): a 224 px batch
    of 64 holds GBs of activations, a 28 px one a few MB."""
    return max(1, min(batch, max_values // max(1, samples.sample_values)))


def load(path: str | os.PathLike[str], specs: list[InputSpec], limit: int | None = None, max_bytes: int = 8 << 30,
         preprocess: PreprocessSettings | None = None) -> Samples:
    """Read samples for `specs` from an .npz (array `x` or arrays named after inputs) or .npy; arrays that
    declare more than `max_bytes` together (limits.data_bytes) are refused before any is read. A folder is
    read as image files with `preprocess` (auditor/io/images.py)."""
    path = _data_path(path, limit)
    if path.is_dir():
        from auditor.io import images  # it imports this module

        return images.load(path, specs, limit, max_bytes, preprocess or PreprocessSettings())
    # only the first `limit` samples are read (a 1000-sample file scanned with --limit 10 costs what 10 do);
    # `declared` holds every array's full length, which the checks below use
    arrays, declared = _read_arrays(path, max_bytes, limit)
    members, labels = _matched(path, specs, limit, arrays, declared)
    inputs = {spec.name: _conform(arrays[members[spec.name]], spec, path.name) for spec in specs}
    labels, _ = _count(path, specs, members, declared, labels)
    return Samples(inputs, labels, str(path))


def stream(path: str | os.PathLike[str], specs: list[InputSpec], limit: int | None = None, max_bytes: int = 8 << 30,
           preprocess: PreprocessSettings | None = None) -> Samples | SampleFile:
    """The samples `load` reads, left in their file (`SampleFile`): every header is checked here, as `load` checks it,
    and the values of each block of rows as it is read; a folder of images, or a Fortran-ordered array (whose rows
    are not contiguous), is read whole."""
    path = _data_path(path, limit)
    if path.is_dir():
        return load(path, specs, limit, max_bytes, preprocess)
    arrays, declared = _read_arrays(path, max_bytes, 0)  # the headers, and no row
    if any(len(array) for array in arrays.values() if array.ndim):  # a Fortran-ordered array came whole
        del arrays
        return load(path, specs, limit, max_bytes, preprocess)
    members, _ = _matched(path, specs, limit, arrays, declared)
    for spec in specs:
        _conform(arrays[members[spec.name]], spec, path.name)  # dtype and shape, on no row
    packed = not _is_npy(path)
    labels = arrays.get("y")
    if labels is not None and labels.ndim:  # the rows within the limit (a scalar came whole, for `_labels` to refuse)
        with contextlib.ExitStack() as stack:
            reader = stack.enter_context(_RowReader(path, stack.enter_context(_zip(path)) if packed else None, "y"))
            labels = reader.rows(0, min(declared["y"], limit or declared["y"]))
    labels, count = _count(path, specs, members, declared, labels)
    values = sum(math.prod(arrays[members[spec.name]].shape[1:]) for spec in specs)
    return SampleFile(path, tuple(specs), packed, members, min(count, limit or count), labels, values)


def _data_path(path: str | os.PathLike[str], limit: int | None) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        return path
    if not path.is_file():
        raise DataError(f"data path is not a regular file (device, pipe or socket): {path}")
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty (0 bytes): {path}")
    if limit is not None and limit < 1:
        raise DataError(f"the sample limit must be at least 1, got {limit}")
    return path


def _matched(path: Path, specs: list[InputSpec], limit: int | None, arrays: dict[str, np.ndarray],
             declared: dict[str, int]) -> tuple[dict[str, str], np.ndarray | None]:
    """Which array feeds each input (one input may take 'x'), and the labels 'y' as read (None without)."""
    named = {k for k in arrays if k != "y"}
    names = [s.name for s in specs]
    members = {n: n for n in names}
    if len(specs) == 1 and names[0] not in named:
        if "x" not in named:
            wanted = "'x'" if names[0] == "x" else f"'x' nor {names[0]!r}"
            raise DataError(f"{path.name} has no array {wanted} (found: {', '.join(sorted(named)) or 'none'}); "
                            "save the samples under that name")
        members = {names[0]: "x"}
    missing = [n for n in names if members[n] not in named]
    if missing:
        raise DataError(f"{path.name} lacks arrays for model inputs {missing} (found: {', '.join(sorted(named)) or 'none'})")
    extra = sorted(named - set(members.values()) - set(names) - {"x"})
    if extra:
        raise DataError(f"{path.name} has arrays {extra} that match no model input {names}; remove or rename them")
    lengths = {declared[members[n]] for n in names}
    if limit is not None and len(lengths) == 1 and 0 < declared[members[names[0]]] < limit:
        raise DataError(f"{path.name} holds {declared[members[names[0]]]} samples, fewer than the limit of {limit}")
    return members, arrays.get("y")


def _count(path: Path, specs: list[InputSpec], members: dict[str, str], declared: dict[str, int],
           labels: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    """The labels checked, and the number of samples every input declares (the same for all, at least one)."""
    counts = {declared[members[spec.name]] for spec in specs}
    if len(counts) != 1:
        raise DataError(f"{path.name}: input arrays hold different numbers of samples {sorted(counts)}")
    count = counts.pop()
    if count == 0:
        raise DataError(f"{path.name} holds no samples")
    return (None if labels is None else _labels(labels, declared.get("y", 0), count, path.name)), count


_MAX_LABEL = 2**31 - 1
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a member, or the end record of an empty archive


def _over(path: Path, declared: int, max_bytes: int) -> DataError:
    return DataError(f"{path.name} declares {declared:,} bytes of arrays, over limits.data_bytes ({max_bytes:,}); "
                     "give fewer samples, or raise it with --set limits.data_bytes=N")


Arrays = tuple[dict[str, np.ndarray], dict[str, int]]  # by name: the rows read, and the rows declared


def _read_arrays(path: Path, max_bytes: int, rows: int | None = None) -> Arrays:
    """Arrays by name (their first `rows` rows when given) and their declared lengths, read by our own small
    reader: headers checked before any data, never unpickled."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_NPY_MAGIC):
        if path.stat().st_size > max_bytes:
            raise _over(path, path.stat().st_size, max_bytes)
        with open(path, "rb") as handle:
            array, declared = _read_npy(handle, path.stat().st_size, path.name, "x", rows)
            return {"x": array}, {"x": declared}
    if head.startswith(_ZIP_MAGICS):
        return _read_npz(path, max_bytes, rows)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise DataError(f"{path.name} is a Python pickle; auditor never unpickles data: save plain numeric arrays (.npz)")
    raise DataError(f"{path.name} is not an .npz or .npy file (no numpy or zip header)")


def _read_npz(path: Path, max_bytes: int, rows: int | None = None) -> Arrays:
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, int] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())  # uncompressed: what reading would allocate
            if declared > max_bytes:
                raise _over(path, declared, max_bytes)
            for info in archive.infolist():
                if info.filename.endswith("/"):  # a folder entry; ZipInfo.is_dir() raises IndexError on an empty name
                    continue
                if not info.filename.endswith(".npy"):
                    raise DataError(f"{path.name}: member {info.filename!r} is not a .npy array")
                name = info.filename[: -len(".npy")]
                if name in arrays:
                    raise DataError(f"{path.name}: array {name!r} appears twice")
                with archive.open(info) as member:
                    arrays[name], lengths[name] = _read_npy(member, info.file_size, path.name, name, rows)
    except DataError:
        raise
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"cannot read {path.name} as .npz (corrupt or truncated archive: {_reason(exc)})") from exc
    return arrays, lengths


def _read_npy(handle, size: int, source: str, name: str, rows: int | None = None) -> tuple[np.ndarray, int]:
    """One .npy, and its declared length (0 for a scalar): its header must describe a plain array of exactly
    the bytes that follow. With `rows`, only the first `rows` rows of a C-ordered array are read: the
    rest is never decompressed (nor checksummed), as it is never used.

    `handle` may be an .npz member: its reads decompress and check the CRC, so a corrupt member fails
    while its header or its payload is read, with errors of its own (zlib, lzma, bz2's OSError, EOFError,
    BadZipFile), named here as what they are rather than as a bad header."""
    shape, fortran, dtype = _header(handle, source, name)
    needed = math.prod(shape) * dtype.itemsize
    available = size - handle.tell()
    if needed != available:
        raise DataError(f"{source}: array {name!r} declares shape {shape} ({needed} bytes) but holds {available} bytes "
                        "(truncated or corrupt)")
    length = shape[0] if shape else 0
    if rows is not None and shape and not fortran and rows < length:
        shape = (rows, *shape[1:])
        needed = math.prod(shape) * dtype.itemsize
    try:
        payload = handle.read(needed)
    except _STREAM_ERRORS as exc:
        raise _unreadable(source, name, exc) from exc
    if len(payload) != needed:
        raise DataError(f"{source}: array {name!r} is truncated ({len(payload)} of {needed} bytes)")
    return np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C"), length


_STREAM_ERRORS = (zlib.error, lzma.LZMAError, EOFError, zipfile.BadZipFile, OSError)


def _unreadable(source: str, name: str, exc: BaseException) -> DataError:
    return DataError(f"{source}: array {name!r} is corrupt: its stored bytes do not decompress or fail their checksum "
                     f"({_reason(exc)}); re-save the samples with numpy.savez")


def _header(handle, source: str, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An .npy header read from `handle`: (shape, Fortran order, dtype) of a plain numeric array."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise DataError(f"{source}: array {name!r} uses .npy format {version}, expected 1.0 or 2.0")
    except DataError:
        raise
    except _STREAM_ERRORS as exc:
        raise _unreadable(source, name, exc) from exc
    except Exception as exc:  # numpy parses the header with tokenize and ast: TokenError, MemoryError, ...
        raise DataError(f"{source}: array {name!r} has a corrupt .npy header ({_reason(exc)})") from exc
    if dtype.hasobject:
        raise DataError(f"{source}: array {name!r} holds Python objects (pickle); auditor never unpickles data: "
                        "save plain numeric arrays")
    if any(d < 0 for d in shape):
        raise DataError(f"{source}: array {name!r} declares a negative shape {shape}")
    return shape, fortran, dtype


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(_NPY_MAGIC)) == _NPY_MAGIC


@contextlib.contextmanager
def _zip(path: Path) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise DataError(f"cannot read {path.name} as .npz (corrupt or truncated archive: {_reason(exc)})") from exc
    with archive:
        yield archive


class _RowReader:
    """The rows of one C-ordered array (a whole .npy file, or the member `name` of an open .npz), read front to back;
    headers and sizes were checked when the file was opened (`stream`)."""

    _SKIP = 1 << 24  # bytes discarded per read when skipping rows

    def __init__(self, path: Path, archive: zipfile.ZipFile | None, name: str) -> None:
        self._path, self._archive, self._name = path, archive, name

    def __enter__(self) -> _RowReader:
        try:
            self._handle = open(self._path, "rb") if self._archive is None else self._archive.open(f"{self._name}.npy")
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self._path.name}: array {self._name!r} cannot be read again ({_reason(exc)}); "
                            "was the file changed during the run?") from exc
        try:
            shape, _, self._dtype = _header(self._handle, self._path.name, self._name)
        except BaseException:
            self._handle.close()
            raise
        self._shape = tuple(shape[1:])
        self._row = math.prod(self._shape) * self._dtype.itemsize
        self._at = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1; `start` at or after the end of the last read."""
        if start < self._at:
            raise InternalError(f"rows of {self._name!r} asked out of order ({start} after {self._at})")
        try:
            skip = (start - self._at) * self._row
            while skip > 0:
                skipped = len(self._handle.read(min(skip, self._SKIP)))
                if not skipped:
                    break
                skip -= skipped
            payload = self._handle.read((stop - start) * self._row)
        except _STREAM_ERRORS as exc:
            raise _unreadable(self._path.name, self._name, exc) from exc
        if skip > 0 or len(payload) != (stop - start) * self._row:
            raise DataError(f"{self._path.name}: array {self._name!r} is truncated (was the file changed during the run?)")
        self._at = stop
        return np.frombuffer(payload, dtype=self._dtype).reshape((stop - start, *self._shape))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:200]


def _conform(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{source}: array for {spec.name!r} has dtype {array.dtype}; numeric arrays only")
    if array.ndim == 0:
        raise DataError(f"{source}: array for {spec.name!r} is a scalar; expected [samples, ...]")
    if spec.shape is not None:
        expected = spec.shape[1:]
        got = array.shape[1:]
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got, strict=True)):
            shown = tuple("?" if e is None else e for e in expected)
            raise DataError(
                f"{source}: samples for {spec.name!r} have shape {got}, the model expects {shown} per sample "
                "(check layout: NCHW vs NHWC, flattening)"
            )
    if spec.dtype.kind == "f":
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"{source}: samples for {spec.name!r} contain NaN or Inf")
        if array.dtype == np.uint8:  # images stored as bytes; divided in place: at 1000 samples of 224 px a float copy is 600 MB
            array = array.astype(np.float32)
            array /= np.float32(255.0)
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(spec.dtype, copy=False)
        if not np.isfinite(array).all():
            raise DataError(f"{source}: samples for {spec.name!r} hold values too large for the model's {spec.dtype} input")
    elif spec.dtype.kind in "iub":
        if array.dtype.kind == "f":
            raise DataError(f"{source}: model input {spec.name!r} is {spec.dtype}, data is {array.dtype}")
        info = np.iinfo(spec.dtype) if spec.dtype.kind in "iu" else None
        if info is not None and array.size and array.dtype.kind in "iu" and (array.min() < info.min or array.max() > info.max):
            raise DataError(f"{source}: samples for {spec.name!r} hold values outside the model's {spec.dtype} input range")
        array = array.astype(spec.dtype)
    else:
        raise DataError(f"{source}: model input {spec.name!r} has type {spec.dtype}; auditor feeds numeric inputs only")
    return np.ascontiguousarray(array)


def _labels(labels: np.ndarray, declared: int, count: int, source: str) -> np.ndarray:
    """The labels read (maybe the first rows only), checked: `declared` of them for `count` samples."""
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{source}: labels 'y' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if declared != count:
        raise DataError(f"{source}: {declared} labels for {count} samples")
    if (labels < 0).any():
        raise DataError(f"{source}: labels 'y' must be non-negative class indices")
    if labels.size and labels.max() > _MAX_LABEL:
        raise DataError(f"{source}: label {labels.max()} is not a plausible class index")
    return labels.astype(np.int64)
