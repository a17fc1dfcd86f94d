"""Load an ONNX model safely, make it runnable by the installed onnxruntime, save atomically.

A release gate reads models nobody trusts, so `load` checks everything it can before any
stage sees the graph: file kind, protobuf, external data paths and sizes, operator domains
and opsets, control flow, the ONNX checker, outputs. Every refusal is a ModelError.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import math
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, external_data_helper, version_converter

from auditor.errors import ModelError, OutputError
from auditor.graph.index import value_bytes, weightless
from auditor.io import runtime
from auditor.settings import LimitSettings

_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}
_RUNTIME_DOMAINS = _ONNX_DOMAINS | {"com.microsoft"}  # onnxruntime's contrib ops are runnable too
_WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_CHECKER_LIMIT = 2**31 - 1  # onnx.checker takes an in-memory model only below protobuf's 2 GiB
_EXTERNAL_THRESHOLD = 1024  # bytes; larger initializers go to the external data file (onnx's default)
_MIN_RUNTIME_OPSET = 7  # onnxruntime has no kernels for older ai.onnx opsets
_UPGRADE_OPSET = 13
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000  # linkat(2)


@dataclass(frozen=True)
class Model:
    """A loaded model: the proto (weights in memory), where it came from, and its hash."""

    proto: onnx.ModelProto
    path: Path
    sha256: str  # of the .onnx file itself
    notes: tuple[str, ...]  # what normalisation changed, for the report
    storage: tuple[str, ...] = ()  # tensors stored twice, resolved as onnxruntime reads them (graph findings)

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


def load(path: str | os.PathLike[str], limits: LimitSettings | None = None) -> Model:
    """Read `path` (external data only from inside its folder), validate it, normalise it for the runtime;
    a model past one of `limits` is refused by name before anything walks it."""
    path = Path(path)
    limits = limits or LimitSettings()
    _check_file(path)
    if path.stat().st_size > limits.model_bytes:
        raise ModelError(f"the model file is {path.stat().st_size:,} bytes, over limits.model_bytes ({limits.model_bytes:,}); "
                         "raise it with --set limits.model_bytes=N if the model is that large")
    proto = _parse(path)
    check_limits(proto, path, limits)
    check_graph(proto)
    storage = stored_twice(proto)
    sha = file_sha256(path)
    _load_external_data(proto, path.parent)
    _validate(proto, path)
    _check_weights(proto)
    notes = normalise(proto)
    return Model(proto=proto, path=path, sha256=sha, notes=tuple(notes), storage=tuple(storage))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"model path is a directory, not an .onnx file: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a regular file (device, pipe or socket): {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"model file is empty (0 bytes): {path}")


def _parse(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"not a readable ONNX model (corrupt or truncated protobuf): {path}; "
                         "re-export or re-download it") from exc
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelError(f"not an ONNX model with a graph (no nodes found): {path}")
    return proto


def check_limits(proto: onnx.ModelProto, path: Path, limits: LimitSettings) -> None:
    """Node count, control-flow nesting, declared tensor sizes and external data against `limits`, without
    recursion (a hostile nesting must not reach Python's recursion limit first)."""
    count, pending = 0, [(proto.graph, 0), *((f, 0) for f in proto.functions)]
    while pending:
        graph, depth = pending.pop()
        if depth > limits.nesting:
            raise ModelError(f"control-flow bodies are nested {depth} deep, over limits.nesting ({limits.nesting}); "
                             "raise it with --set limits.nesting=N if the model is built that way")
        for node in graph.node:
            count += 1
            for attr in node.attribute:
                pending += [(body, depth + 1) for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)]
        if count > limits.nodes:
            raise ModelError(f"the model has more than limits.nodes ({limits.nodes:,}) nodes; "
                             "raise it with --set limits.nodes=N if the model is that large")
    external = 0
    for tensor in external_data_helper._get_all_tensors(proto):
        elements = math.prod(max(int(d), 0) for d in tensor.dims)
        if elements > limits.tensor_elements:
            raise ModelError(f"tensor {tensor.name!r} declares {elements:,} elements, over limits.tensor_elements "
                             f"({limits.tensor_elements:,}); raise it with --set limits.tensor_elements=N if it is real")
        if external_data_helper.uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            length = info.get("length", "")
            if length.isascii() and length.isdecimal() and len(length) <= 20:  # else _int_field refuses it when read
                external += int(length)
        else:
            _check_stored(tensor)
    if path.stat().st_size + external > limits.model_bytes:
        raise ModelError(f"the model and its external data are {path.stat().st_size + external:,} bytes, over "
                         f"limits.model_bytes ({limits.model_bytes:,}); raise it with --set limits.model_bytes=N if it is that large")


def _check_stored(tensor: onnx.TensorProto) -> None:
    """An in-memory tensor's values must be readable as its declared type and shape (the checker lets an
    unknown type or a byte count that contradicts the shape through)."""
    try:
        onnx.numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises ValueError, KeyError, TypeError, ... for a tensor it cannot read
        raise ModelError(f"tensor {tensor.name!r}: its stored values do not fit its declared type and shape "
                         f"({_one_line(exc)[:120]}); re-export the model") from exc


def check_graph(proto: onnx.ModelProto) -> None:
    """Refuse, with a message naming the culprit, what onnxruntime or auditor cannot run."""
    _check_names(proto)
    local = {(f.domain, f.name) for f in proto.functions}
    imported = {entry.domain or "": entry.version for entry in proto.opset_import}
    _check_opsets(imported)
    for node in _all_nodes(proto):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (node.domain, node.op_type) in local:
            continue
        if domain not in _RUNTIME_DOMAINS:
            raise ModelError(f"custom operator {node.op_type!r} from domain {node.domain!r} is not a standard ONNX "
                             "operator and onnxruntime has no kernel for it; auditor runs standard ONNX graphs only")
        if domain in _ONNX_DOMAINS and domain in imported:
            _check_operator(node.op_type, domain, imported[domain])
    _check_outputs(proto)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{len(names)} initializer{'s' if len(names) > 1 else ''} ({shown}{more})"


def _same_stored(one: onnx.TensorProto, other: onnx.TensorProto) -> bool:
    """Whether two tensors store the same values (their doc strings aside)."""
    left, right = onnx.TensorProto(), onnx.TensorProto()
    left.CopyFrom(one)
    right.CopyFrom(other)
    left.ClearField("doc_string")
    right.ClearField("doc_string")
    return left == right


def stored_twice(proto: onnx.ModelProto) -> list[str]:
    """Tensors a reader and onnxruntime may see with different values, each resolved in place (so the checker
    passes and every stage runs one model): a tensor with its values in two fields (the first named wins, as
    onnxruntime reads raw_data), two initializers of one name (the last wins), an initializer that also
    defines a Constant's output. Also named: initializers listed as graph inputs when some are not (a
    caller can feed other values than the ones stored; exporters list either all or none)."""
    found = []
    graph = proto.graph
    fielded = []
    for tensor in graph.initializer:
        fields = [f for f in _VALUE_FIELDS if len(getattr(tensor, f))]
        if tensor.HasField("raw_data"):
            fields.insert(0, "raw_data")
        if external_data_helper.uses_external_data(tensor) and len(fields):
            fields.insert(0, "external data")
        if len(fields) > 1:
            fielded.append(f"{tensor.name} ({', '.join(fields)})")
            for name in fields[1:]:
                tensor.ClearField(name)
    if fielded:
        found.append(f"{_names(fielded)} with values in two fields: readers differ on which they take; "
                     "auditor keeps the first named")
    seen: dict[str, int] = {}
    doubled = []
    for position, tensor in enumerate(graph.initializer):
        first = seen.get(tensor.name)
        if first is not None and not _same_stored(tensor, graph.initializer[first]):  # the same values twice are harmless
            doubled.append(tensor.name)
        seen.setdefault(tensor.name, position)
    if doubled:
        found.append(f"{_names(doubled)} stored twice with different values: onnx readers take the first copy, "
                     "onnxruntime 1.31 the first for some operators' weights and the last elsewhere; auditor judges the last")
    last = {t.name: p for p, t in enumerate(graph.initializer)}
    if len(last) < len(graph.initializer):
        kept = [copy.deepcopy(t) for p, t in enumerate(graph.initializer) if last[t.name] == p]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for name in sorted(constants & set(last)):
        found.append(f"tensor {name!r} is both an initializer and a Constant's output: readers differ on which value it has")
    inputs = {v.name for v in graph.input}
    shadowing = sorted(inputs & set(last))
    if proto.ir_version >= 4 and shadowing and len(shadowing) < len(last):
        found.append(f"initializers {', '.join(repr(n) for n in shadowing[:5])} are also graph inputs (while the other "
                     f"{len(last) - len(shadowing)} are not): a caller can replace these stored values at run time")
    return found


def _check_names(proto: onnx.ModelProto) -> None:
    """protobuf hands invalid UTF-8 through as bytes or surrogates, which onnx's and onnxruntime's C++
    refuse with a TypeError far from the cause: name the corrupt string here."""
    def names() -> Iterator[tuple[str, str | bytes]]:
        for entry in proto.opset_import:
            yield "opset domain", entry.domain
        for node in _all_nodes(proto):
            yield from (("operator", node.op_type), ("domain", node.domain), ("node name", node.name))
            yield from (("tensor name", name) for name in (*node.input, *node.output))
        for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info, *proto.graph.initializer):
            yield "tensor name", value.name

    for kind, text in names():
        if isinstance(text, str):
            try:
                text.encode("utf-8")
                continue
            except UnicodeEncodeError:
                text = text.encode("utf-8", "replace")
        raise ModelError(f"the model is corrupt: {kind} {text[:60]!r} is not valid UTF-8; re-export it")


def _check_opsets(imported: dict[str, int]) -> None:
    if "" not in imported and "ai.onnx" not in imported:
        if "ai.onnx.ml" in imported:
            raise ModelError("the model is built from ONNX-ML operators only (classical machine learning: trees, linear "
                             "models); auditor audits neural networks with Conv, Gemm or MatMul layers")
        raise ModelError("the model imports no ai.onnx opset (opset_import is missing or corrupt)")
    for domain, version in imported.items():
        known = runtime.max_domain_opset(domain) if domain in _ONNX_DOMAINS - {"", "ai.onnx"} else None
        if known is not None and version > known:
            raise ModelError(f"opset {version} of domain {domain!r} is newer than onnxruntime runs ({known})")
        if version < 1:
            raise ModelError(f"opset {version} of domain {domain or 'ai.onnx'!r} is not a valid opset version")
    newest = onnx.defs.onnx_opset_version()
    version = imported.get("", imported.get("ai.onnx", 0))
    if version > newest:
        raise ModelError(f"opset {version} is newer than onnxruntime runs ({runtime.max_opset()}) and cannot be converted")


def _check_operator(op_type: str, domain: str, version: int) -> None:
    label = domain or "ai.onnx"
    if not onnx.defs.has(op_type, domain):
        raise ModelError(f"unknown operator {op_type!r}: not in ONNX's {label!r} domain (corrupt or custom model)")
    try:
        onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError as exc:
        since = onnx.defs.get_schema(op_type, domain).since_version
        raise ModelError(f"operator {op_type!r} does not exist at {label} opset {version} (added in opset {since})") from exc


def _check_outputs(proto: onnx.ModelProto) -> None:
    """auditor reads class scores from a float tensor output; a ZipMap or a label alone has none."""
    outputs = list(proto.graph.output)
    if not outputs:
        raise ModelError("the model declares no outputs")
    floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    if any(o.type.HasField("tensor_type") and o.type.tensor_type.elem_type in floats for o in outputs):
        return
    producers = {name: node.op_type for node in proto.graph.node for name in node.output}
    zipmaps = [o.name for o in outputs if producers.get(o.name) == "ZipMap"]
    if zipmaps:
        raise ModelError(f"output {zipmaps[0]!r} is a ZipMap (a list of class->probability maps), not a tensor of class scores; "
                         "re-export without ZipMap (skl2onnx: options={'zipmap': False})")
    names = ", ".join(repr(o.name) for o in outputs)
    raise ModelError(f"the model has no float output with class scores (outputs {names} are labels or non-tensors); "
                     "export logits or probabilities")


def _load_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(proto) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    root = folder.resolve()
    for tensor in tensors:
        _check_external(tensor, root)
    try:
        external_data_helper.load_external_data_for_model(proto, str(root))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:  # onnx's own location checks raise ValidationError
        raise ModelError(f"cannot read external data: {_one_line(exc)}; keep the data files beside the model, "
                         "named by plain relative locations") from exc
    for tensor in tensors:  # now in raw_data: its values read against its type and shape, as in-file tensors are
        _check_stored(tensor)


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a model's external data names (best effort, for output-path checks; never raises)."""
    path = Path(path)
    try:
        if not path.is_file():
            return []
        proto = onnx.load_model(str(path), load_external_data=False)
        files = []
        for tensor in external_data_helper._get_all_tensors(proto):
            if external_data_helper.uses_external_data(tensor):
                location = {e.key: e.value for e in tensor.external_data}.get("location", "")
                if location and "\0" not in location:
                    files.append(path.parent / location)
        return files
    except Exception:  # load() reports the real problem with a proper message
        return []


def _check_external(tensor: onnx.TensorProto, root: Path) -> None:
    """The location must be a regular file inside the model's folder, big enough for the tensor.

    protobuf hands an entry with invalid UTF-8 through as bytes, and the filesystem refuses names it
    cannot hold (too long, ...): both are a corrupt or hostile model, refused by name."""
    name = tensor.name
    if not all(isinstance(text, str) for entry in tensor.external_data for text in (entry.key, entry.value)):
        raise ModelError(f"the model is corrupt: an external data entry of {name!r} is not valid UTF-8; re-export it")
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location or "\0" in location or os.path.isabs(location) or Path(location).drive:
        raise ModelError(f"external data location {location[:80]!r} of {name!r} is not a relative path; refusing to read it")
    try:
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise ModelError(f"external data location {location[:80]!r} of {name!r} escapes the model's folder; refusing to read it")
        if not target.exists():
            raise ModelError(f"external data file {location[:80]!r} for {name!r} is missing next to the model")
        if not target.is_file():
            raise ModelError(f"external data location {location[:80]!r} of {name!r} is not a regular file")
        size = target.stat().st_size
    except OSError as exc:
        raise ModelError(f"external data location {location[:80]!r} of {name!r} cannot be looked up ({exc.strerror or exc}); "
                         "refusing to read it") from exc
    offset, length = _int_field(info, "offset", name), _int_field(info, "length", name)
    needed = tensor_nbytes(tensor)
    if length is None:
        length = size - (offset or 0)
    if (offset or 0) + length > size:
        raise ModelError(f"external data file {location!r} is shorter than {name!r} needs (truncated?)")
    if needed is not None and length != needed:
        raise ModelError(f"external data of {name!r} is {length} bytes, its shape {tuple(tensor.dims)} needs {needed}")


def _int_field(info: dict[str, str], key: str, tensor: str) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        raise ModelError(f"external data {key} {info[key]!r} of {tensor!r} is not an integer") from None
    if value < 0:
        raise ModelError(f"external data {key} {value} of {tensor!r} is negative")
    return value


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's raw data from its shape and type; None for strings and packed sub-byte types."""
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"tensor {tensor.name!r} has a negative dimension {tuple(tensor.dims)}")
    return value_bytes(tensor)


def _validate(proto: onnx.ModelProto, path: Path) -> None:
    """onnx.checker: dangling inputs, unsorted nodes, wrong attribute types, tensor sizes."""
    saved = proto.ir_version
    try:
        if runtime.proto_size(proto) < _CHECKER_LIMIT:
            proto.ir_version = min(saved, onnx.IR_VERSION)  # normalise lowers it for the runtime anyway
            onnx.checker.check_model(weightless(proto))  # each weight's values were read against its shape on load
        elif saved <= onnx.IR_VERSION:
            onnx.checker.check_model(str(path))  # > 2 GiB: the checker reads the file, data stays external
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise ModelError(f"not a valid ONNX model: {_one_line(exc)}") from exc
    finally:
        proto.ir_version = saved
    _check_declared_shapes(proto)


def _check_declared_shapes(proto: onnx.ModelProto) -> None:
    """Declared input/output/value_info shapes must agree with what the operators compute: a graph
    that lies about a channel count would mislead every stage that trusts a declaration."""
    if runtime.proto_size(proto) >= _CHECKER_LIMIT:
        return  # the in-memory inference cannot take it; onnxruntime still checks what it runs
    saved = proto.ir_version
    try:
        proto.ir_version = min(saved, onnx.IR_VERSION)
        onnx.shape_inference.infer_shapes(weightless(proto), check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise ModelError(f"the model's declared shapes contradict its operators ({_first_inference_error(exc)}); "
                         "re-export the model") from exc
    except (ValueError, RuntimeError):
        pass  # inference itself gave up (not a contradiction): onnxruntime decides when it runs the graph
    finally:
        proto.ir_version = saved


def _first_inference_error(exc: BaseException) -> str:
    """'(op_type:Gemm, node name: fc1): [ShapeInferenceError] ... ' -> 'node fc1 (Gemm): ...'."""
    for line in str(exc).splitlines():
        found = re.search(r"\(op_type:([^,]*), node name: ([^)]*)\): \[\w+\] (.*)", line)
        if found:
            op, name, message = found.groups()
            return f"node {name or op!r} ({op}): {message.strip()}"[:300]
    return _one_line(exc)


def _check_weights(proto: onnx.ModelProto) -> None:
    """NaN or Inf in a layer's weights would turn every score into NaN: refuse them by name."""
    initializers = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in _WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for name in node.input[1:3]:
            tensor = initializers.get(name)
            if tensor is None or tensor.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
                continue
            values = onnx.numpy_helper.to_array(tensor)
            if not np.isfinite(values).all():
                raise ModelError(f"weights {name!r} of node {node.name or node.op_type!r} contain NaN or Inf")


def normalise(proto: onnx.ModelProto) -> list[str]:
    """Lower IR version / convert the opset in place to what onnxruntime runs; returns what changed."""
    notes: list[str] = []
    max_ir = runtime.max_ir_version()
    if proto.ir_version > max_ir:
        notes.append(f"IR version {proto.ir_version} lowered to {max_ir} for onnxruntime")
        proto.ir_version = max_ir
    opset, max_op = default_opset(proto), runtime.max_opset()
    if opset > max_op:
        _convert(proto, max_op, f"opset {opset} is newer than onnxruntime runs ({max_op}) and cannot be converted")
        notes.append(f"opset {opset} converted to {max_op} for onnxruntime")
    elif opset < _MIN_RUNTIME_OPSET:
        failure = f"opset {opset} is older than onnxruntime runs ({_MIN_RUNTIME_OPSET}+) and cannot be converted"
        _convert(proto, _UPGRADE_OPSET, failure)
        notes.append(f"opset {opset} converted to {_UPGRADE_OPSET} for onnxruntime")
    return notes


def _convert(proto: onnx.ModelProto, target: int, failure: str) -> None:
    try:
        converted = version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises RuntimeError/IndexError/...
        raise ModelError(failure) from exc
    converted.ir_version = min(converted.ir_version, runtime.max_ir_version())
    proto.CopyFrom(converted)


def _all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    yield from _graph_nodes(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield node
            yield from _subgraph_nodes(node)


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        yield from _subgraph_nodes(node)


def _subgraph_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield from _graph_nodes(attr.g)
        for sub in attr.graphs:
            yield from _graph_nodes(sub)


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text or type(exc).__name__)[:300]


# ---- outputs ----------------------------------------------------------------------------------

def check_output_path(path: str | os.PathLike[str], force: bool, inputs: tuple[Path | None, ...] = ()) -> Path:
    """Refuse an output that exists (unless forced), is an input, is not a regular file, or sits in a missing folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output path is a directory: {path}")
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and _same_file(path, Path(source)):
            raise OutputError(f"output {path} would overwrite an input; choose another path")
    if path.exists() and not path.is_file():
        raise OutputError(f"output {path} exists and is not a regular file; refusing to replace it")
    if path.exists() and not force:
        raise OutputError(f"output {path} already exists; choose another path or allow replacing it (force)")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} is a file, not a folder")
    if not path.parent.is_dir():
        raise OutputError(f"output folder does not exist: {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {path.parent}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


Writer = Callable[[BinaryIO], None]


def write_atomic(path: str | os.PathLike[str], data: bytes | Writer) -> None:
    """Write `data` (bytes, or a function writing to a binary file) so that `path` ends up complete or absent.

    The bytes go to an unnamed file in the target folder (O_TMPFILE: a crash or SIGKILL leaves
    nothing behind), are fsynced, then linked into place; elsewhere a hidden temp file is renamed.
    """
    path = Path(path)
    with _atomic_file(path.parent, lambda: path, str(path)) as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data)


@contextlib.contextmanager
def _atomic_file(folder: Path, target: Callable[[], Path], shown: str) -> Iterator[BinaryIO]:
    """A file in `folder` that becomes `target()` (asked only once the writing succeeded), or nothing;
    `shown` names it in a failure."""
    fd, temp = _open_temp(folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            path = target()
            if temp is None:
                _link_into_place(handle.fileno(), path)
        if temp is not None:
            os.replace(temp, path)
        _fsync_folder(folder)
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {shown}: {exc.strerror or exc}") from exc
        raise


def _open_temp(folder: Path) -> tuple[int, str | None]:
    """An unnamed file in `folder` (temp None) where the filesystem allows, else a hidden named one."""
    try:
        if _unnamed_files_work(folder):
            with contextlib.suppress(OSError):
                return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666), None
        fd, temp = tempfile.mkstemp(prefix=".auditor-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write to {folder}: {exc.strerror or exc}; choose a writable output folder") from exc
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    return fd, temp


_UNNAMED: dict[int, bool] = {}  # st_dev -> whether O_TMPFILE + linkat work there


def _unnamed_files_work(folder: Path) -> bool:
    """Probe once per filesystem: O_TMPFILE exists and its file can be given a name (needs linkat
    with AT_EMPTY_PATH, which some kernels reserve to privileged users)."""
    if not hasattr(os, "O_TMPFILE") or not sys.platform.startswith("linux"):
        return False
    device = os.stat(folder).st_dev
    if device not in _UNNAMED:
        _UNNAMED[device] = False
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
            probe = folder / f".auditor-{secrets.token_hex(8)}.probe"
            try:
                _link_fd(fd, probe)
                probe.unlink()
                _UNNAMED[device] = True
            finally:
                os.close(fd)
    return _UNNAMED[device]


def _link_fd(fd: int, path: Path) -> None:
    """linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): give an O_TMPFILE file a name."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(path))


def _link_into_place(fd: int, path: Path) -> None:
    """Name the unnamed file: directly when the name is free, else via a hidden name and a rename."""
    try:
        _link_fd(fd, path)
        return
    except FileExistsError:
        pass
    temp = path.parent / f".auditor-{secrets.token_hex(8)}.tmp"
    try:  # the link inside: an interruption right after it must not leave the hidden name behind
        _link_fd(fd, temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_atomic(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Serialize a model atomically (external data beside it above 2 GiB)."""
    save_model(proto, path)


def save_model(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> str:
    """Write `proto` to `path` atomically and return the sha256 of the .onnx file.

    Below 2 GiB it is one file. Above, large initializers go to `<name>.<hash16>.data` beside it,
    complete before the .onnx that names it appears: an interruption leaves the old output or
    the new one, never a model whose data is partial. Data files that earlier --force runs left
    for this output are removed once the new model is in place.
    """
    path = Path(path)
    if runtime.proto_size(proto) < _CHECKER_LIMIT:
        payload = proto.SerializeToString(deterministic=True)
        write_atomic(path, payload)
        return hashlib.sha256(payload).hexdigest()
    big = [t for t in proto.graph.initializer if t.HasField("raw_data") and len(t.raw_data) > _EXTERNAL_THRESHOLD]
    data_path, placed, existed = _write_external_data(path, big)
    try:
        light = runtime.externalised_copy(proto, placed)
        if runtime.proto_size(light) >= _CHECKER_LIMIT:
            raise OutputError(f"cannot write {path}: the model exceeds 2 GiB even without its initializers")
        payload = light.SerializeToString(deterministic=True)
        write_atomic(path, payload)
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                data_path.unlink()
        raise
    _remove_stale_data(path, data_path.name)
    return hashlib.sha256(payload).hexdigest()


def _write_external_data(path: Path, tensors: list[onnx.TensorProto]) -> tuple[Path, dict[str, tuple[str, int, int]], bool]:
    """Stream the tensors' bytes into one data file named after their hash; where each one sits."""
    digest = hashlib.sha256()
    offsets: dict[str, tuple[int, int]] = {}
    name: list[str] = []

    def target() -> Path:
        name.append(f"{path.name}.{digest.hexdigest()[:16]}.data")
        return path.parent / name[0]

    existed = False
    with _atomic_file(path.parent, target, f"the external data of {path}") as handle:
        for tensor in tensors:
            raw = tensor.raw_data
            offsets[tensor.name] = (handle.tell(), len(raw))
            handle.write(raw)
            digest.update(raw)
            del raw
        existed = (path.parent / f"{path.name}.{digest.hexdigest()[:16]}.data").exists()
    return path.parent / name[0], {k: (name[0], o, n) for k, (o, n) in offsets.items()}, existed


def _remove_stale_data(path: Path, keep: str) -> None:
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{16}\.data")
    for sibling in path.parent.iterdir():
        if sibling.name != keep and pattern.fullmatch(sibling.name) and sibling.is_file():
            with contextlib.suppress(OSError):
                sibling.unlink()
