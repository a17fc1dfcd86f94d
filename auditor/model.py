"""Load an ONNX model safely, make it runnable by the installed onnxruntime, save atomically."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, version_converter

from auditor import runtime
from auditor.errors import ModelError, OutputError

_UNSUPPORTED_OPS = {"If", "Loop", "Scan"}


@dataclass(frozen=True)
class Model:
    """A loaded model: the proto (weights in memory), where it came from, and its hash."""

    proto: onnx.ModelProto
    path: Path
    sha256: str  # of the .onnx file itself
    notes: tuple[str, ...]  # what normalisation changed, for the report

    @property
    def opset(self) -> int:
        return default_opset(self.proto)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(path: str | os.PathLike[str]) -> Model:
    """Read `path` (external data only from inside its folder) and normalise it for the runtime."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"model path is a directory, not an .onnx file: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"model file is empty (0 bytes): {path}")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"not a readable ONNX model (corrupt or truncated protobuf): {path}") from exc
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelError(f"not an ONNX model with a graph (no nodes found): {path}")
    _load_external_data(proto, path.parent)
    sha = file_sha256(path)
    notes = normalise(proto)
    return Model(proto=proto, path=path, sha256=sha, notes=tuple(notes))


def _load_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(proto) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    root = folder.resolve()
    for tensor in tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ModelError(f"external data location {location!r} of {tensor.name!r} is not a relative path; refusing to read it")
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise ModelError(f"external data location {location!r} of {tensor.name!r} escapes the model's folder; refusing to read it")
        if not target.is_file():
            raise ModelError(f"external data file {location!r} for {tensor.name!r} is missing next to the model")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > target.stat().st_size:
            raise ModelError(f"external data file {location!r} is shorter than {tensor.name!r} needs (truncated?)")
    try:
        external_data_helper.load_external_data_for_model(proto, str(root))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read external data: {exc}") from exc


def normalise(proto: onnx.ModelProto) -> list[str]:
    """Lower IR version / opset in place to what onnxruntime runs; returns what changed."""
    notes: list[str] = []
    for node in _all_nodes(proto.graph):
        if node.op_type in _UNSUPPORTED_OPS and node.domain in ("", "ai.onnx"):
            raise ModelError(f"control flow ({node.op_type}) is not supported: auditor needs a static graph")
    max_ir = runtime.max_ir_version()
    if proto.ir_version > max_ir:
        notes.append(f"IR version {proto.ir_version} lowered to {max_ir} for onnxruntime")
        proto.ir_version = max_ir
    opset, max_op = default_opset(proto), runtime.max_opset()
    if opset > max_op:
        try:
            converted = version_converter.convert_version(proto, max_op)
        except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/IndexError/...
            raise ModelError(f"opset {opset} is newer than onnxruntime runs ({max_op}) and cannot be converted") from exc
        converted.ir_version = min(converted.ir_version, max_ir)
        proto.CopyFrom(converted)
        notes.append(f"opset {opset} converted to {max_op} for onnxruntime")
    return notes


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def check_output_path(path: str | os.PathLike[str], force: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output that exists (unless forced), is an input, or sits in a missing folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output path is a directory: {path}")
    for source in inputs:
        if path.exists() and source.exists() and path.resolve() == source.resolve():
            raise OutputError(f"output {path} would overwrite an input; choose another path")
    if path.exists() and not force:
        raise OutputError(f"output {path} already exists; pass --force to replace it")
    if not path.parent.exists():
        raise OutputError(f"output folder does not exist: {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {path.parent}")
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to a temp file beside `path`, fsync, then rename: complete or absent."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
        raise


def save_atomic(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Serialize a model (< 2 GiB) atomically."""
    if proto.ByteSize() >= 2**31 - 1:
        raise OutputError("the repaired model exceeds 2 GiB; saving with external data is not supported yet")
    write_atomic(path, proto.SerializeToString(deterministic=True))
