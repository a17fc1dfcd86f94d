"""onnxruntime access: which device runs, what the runtime can read, and sessions.

onnxruntime-gpu lists the CUDA provider even where CUDA 13 / cuDNN 9 are missing and
then falls back to CPU with a burst of log lines; we probe it once, quietly, and say
in one line which provider runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import EncodeError
from onnx import TensorProto, helper

from auditor.errors import DeviceError, ModelError
from auditor.graph.index import model_bytes, stored_bytes

# Keep onnxruntime's own logging to fatal errors: failures reach the user as exceptions.
ort.set_default_logger_severity(4)

_PROTOBUF_LIMIT = 1_900_000_000  # bytes; a single serialized ModelProto must stay below 2 GiB
_FILE_THRESHOLD = 1 << 26  # bytes; larger models reach onnxruntime through a temporary weights file (see `_session`)
_FILE_TENSOR = 1 << 16  # bytes; initializers above this size go to that file, smaller ones stay in the proto
_PAGE = 1 << 16  # offsets in the weights file: aligned to the largest mapping granularity (Windows'), so that
# onnxruntime can map the tensors in place


@dataclass(frozen=True)
class Provider:
    """The execution provider that runs every session, and why it was chosen."""

    name: str  # "CUDAExecutionProvider" or "CPUExecutionProvider"
    reason: str
    threads: int | None = None  # onnxruntime's intra-op threads per session; None: its default, one per physical core

    @property
    def device(self) -> str:
        return "cuda" if self.name == "CUDAExecutionProvider" else "cpu"



def proto_size(message) -> int:
    """Serialized size of a protobuf message (for a model or a tensor at least that, counted without serialising the
    weights); past 2 GiB protobuf refuses to count: report 2 GiB."""
    try:
        if isinstance(message, onnx.ModelProto):
            return model_bytes(message)
        if isinstance(message, onnx.TensorProto):
            return stored_bytes(message)
        return message.ByteSize()
    except EncodeError:
        return 2**31

def _tiny_model(ir_version: int, opset: int, extra: tuple[tuple[str, int], ...] = ()) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    return model.SerializeToString()


def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu load CUDA and cuDNN from pip's nvidia-* packages (or a PyTorch that
    brought them), where the system loader would not find them; quietly, since it prints."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            preload()
        except Exception:  # a missing library only means CUDA will not work: the probe below says so
            pass


@functools.cache
def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    _preload_cuda_libraries()
    try:
        session = ort.InferenceSession(
            _tiny_model(8, 13), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception:  # any failure means "no usable CUDA"
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"


def select_provider(device: str = "auto", threads: int | None = None) -> Provider:
    """Pick the provider for `device` in {"auto", "cpu", "cuda"}; `threads` sets onnxruntime's
    intra-op threads per session (None: its default, one per physical core). On a 16-core
    machine (bench/results/threads.json) the zoo's ViT repaired 1.9x faster on 4 threads than on
    16 and its MobileNet 1.6x faster on 8, but its ResNet 1.15x slower on 4: the default stays
    onnxruntime's, and the choice is the user's."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise DeviceError(f"threads {threads}: give a whole number of at least 1 (or leave it out for onnxruntime's default)")
    if device == "cpu":
        return Provider("CPUExecutionProvider", "requested", threads)
    if device not in ("auto", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
    if _cuda_works():
        return Provider("CUDAExecutionProvider", "CUDA available", threads)
    if device == "cuda":
        raise DeviceError(
            "device cuda: onnxruntime cannot use CUDA here (needs onnxruntime-gpu with "
            "CUDA 13 and cuDNN 9 libraries); use device cpu or auto"
        )
    return Provider("CPUExecutionProvider", "CUDA unavailable", threads)


@functools.cache
def max_ir_version() -> int:
    """Highest IR version the installed onnxruntime reads (onnx may write newer)."""
    for ir in range(onnx.IR_VERSION, 2, -1):
        try:
            ort.InferenceSession(_tiny_model(ir, 13), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return 7


@functools.cache
def max_opset() -> int:
    """Highest ai.onnx opset the installed onnxruntime accepts."""
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        try:
            ort.InferenceSession(_tiny_model(8, opset), providers=["CPUExecutionProvider"])
            return opset
        except Exception:
            continue
    return 7


@functools.cache
def max_domain_opset(domain: str) -> int:
    """Highest opset of a non-default ONNX domain (ai.onnx.ml, ...) the installed onnxruntime accepts."""
    newest = max((s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain), default=1)
    for version in range(newest, 0, -1):
        try:
            ort.InferenceSession(_tiny_model(8, 13, ((domain, version),)), providers=["CPUExecutionProvider"])
            return version
        except Exception:
            continue
    return 1


def providers_for(provider: Provider) -> list:
    """The providers list (with options) a session is created with for `provider`."""
    if provider.name == "CUDAExecutionProvider":
        # The default exhaustive cuDNN search benchmarks every convolution again for each new
        # batch shape, and the probe and the patch search feed many: on an H200 it made a zoo
        # CNN's audit 15x slower than the CPU's. The heuristic choice skips the benchmarks.
        # TF32 (on by default) rounds float32 products to 10 mantissa bits: the repair's own check
        # that the rewritten graph computes what the masked original computes failed on an H200
        # under it, and the fidelity the repair measures would not be the model's float32 one.
        return [(provider.name, {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}), "CPUExecutionProvider"]
    if provider.name != "CPUExecutionProvider":
        return [provider.name, "CPUExecutionProvider"]
    return [provider.name]


@contextlib.contextmanager
def extended(model: onnx.ModelProto, extra: onnx.GraphProto | None) -> Iterator[onnx.ModelProto]:
    """`model` with `extra`'s nodes, initializers and outputs appended to its graph for the duration of the block,
    then removed: a model plus instruments (the capture's reductions, the graph check's added outputs) without a
    copy of its weights, which on a model of hundreds of megabytes was the largest allocation of a scan."""
    if extra is None:
        yield model
        return
    graph = model.graph
    counts = len(graph.node), len(graph.initializer), len(graph.output)
    try:
        graph.node.extend(extra.node)
        graph.initializer.extend(extra.initializer)
        graph.output.extend(extra.output)
        yield model
    finally:
        del graph.node[counts[0]:]
        del graph.initializer[counts[1]:]
        del graph.output[counts[2]:]


def session(model: onnx.ModelProto, provider: Provider, extra: onnx.GraphProto | None = None) -> ort.InferenceSession:
    """An inference session for an in-memory model (with `extra`'s nodes, initializers and outputs added, see
    `extended`); leaves `model` as it was.

    The proto keeps its weights; a large model's are written to a temporary file for onnxruntime (see `_session`).
    """
    with extended(model, extra):
        return _session(model, provider)


def _session(model: onnx.ModelProto, provider: Provider) -> ort.InferenceSession:
    """A session for `model`. A small model reaches onnxruntime as serialized bytes. A large one would cost its weights
    three times over that way (the proto, the bytes, onnxruntime's parse of them), so its weights are streamed, a tensor
    at a time, into an aligned file in a temporary folder, which onnxruntime maps in place, and the folder is removed
    as soon as the session exists (the mapping outlives the names; on Windows, with the session)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.enable_mem_pattern = False  # its planned block for each input shape came on top of the arena: +200 MB on a BERT-base
    if provider.threads is not None:
        options.intra_op_num_threads = provider.threads
    providers = providers_for(provider)
    try:
        size = proto_size(model)
        if size < _FILE_THRESHOLD:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        folder, kept = None, False
        try:
            try:
                folder = Path(tempfile.mkdtemp(prefix="auditor-"))
                light = _light_model(model, folder)
            except OSError as exc:
                if size >= _PROTOBUF_LIMIT:
                    raise ModelError(f"cannot write the model's weights to a temporary folder ({exc.strerror or exc}); "
                                     "point TMPDIR at a folder with room for them") from exc
                return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
            created = ort.InferenceSession(str(light), options, providers=providers)
            if os.name == "nt":  # a mapped file cannot be deleted there: the folder goes when the session does
                weakref.finalize(created, _remove, folder)
                kept = True
            return created
        finally:
            if not kept:
                _remove(folder)
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime raises many unrelated types
        raise ModelError(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc


def _remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _light_model(model: onnx.ModelProto, folder: Path) -> Path:
    """Write `model` into `folder` as a small .onnx whose large initializers point into one weights file; its path."""
    placed: dict[str, tuple[str, int, int]] = {}
    with open(folder / "weights.bin", "wb") as handle:
        for tensor in model.graph.initializer:
            if not tensor.HasField("raw_data") or proto_size(tensor) <= _FILE_TENSOR:
                continue
            raw = tensor.raw_data
            handle.write(b"\0" * (-handle.tell() % _PAGE))
            placed[tensor.name] = ("weights.bin", handle.tell(), len(raw))
            handle.write(raw)
            del raw
    light = externalised_copy(model, placed)
    if proto_size(light) >= _PROTOBUF_LIMIT:
        raise ModelError("the model exceeds 2 GiB even without its large initializers; auditor cannot run it")
    path = folder / "model.onnx"
    path.write_bytes(light.SerializeToString())
    return path


def externalised_copy(model: onnx.ModelProto, placed: dict[str, tuple[str, int, int]]) -> onnx.ModelProto:
    """A copy of `model` in which each initializer named in `placed` is an external-data reference
    (location, offset, length) instead of holding its bytes; copies no large payload."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.name not in placed:
            light.graph.initializer.add().CopyFrom(tensor)
            continue
        stub = light.graph.initializer.add()
        _copy_fields(tensor, stub, skip="raw_data")
        del stub.external_data[:]
        stub.data_location = TensorProto.EXTERNAL
        location, offset, length = placed[tensor.name]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
    return light


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED  # protobuf 7 / older
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # onnxruntime prefixes messages with its source location; keep the readable tail.
    if "onnxruntime::" in text and ") " in text:
        text = text.rsplit(") ", 1)[-1]
    return text[:300]
