"""onnxruntime access: which device runs, what the runtime can read, and sessions.

onnxruntime-gpu lists the CUDA provider even where CUDA 13 / cuDNN 9 are missing and
then falls back to CPU with a burst of log lines; we probe it once, quietly, and say
in one line which provider runs.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from auditor.errors import DeviceError, ModelError

# Keep onnxruntime's own logging to fatal errors: failures reach the user as exceptions.
ort.set_default_logger_severity(4)

_PROTOBUF_LIMIT = 1_900_000_000  # bytes; a single serialized ModelProto must stay below 2 GiB


@dataclass(frozen=True)
class Provider:
    """The execution provider that runs every session, and why it was chosen."""

    name: str  # "CUDAExecutionProvider" or "CPUExecutionProvider"
    reason: str

    @property
    def device(self) -> str:
        return "cuda" if self.name == "CUDAExecutionProvider" else "cpu"


def _tiny_model(ir_version: int, opset: int) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


@functools.cache
def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        session = ort.InferenceSession(
            _tiny_model(8, 13), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception:  # noqa: BLE001 - any failure means "no usable CUDA"
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"


def select_provider(device: str = "auto") -> Provider:
    """Pick the provider for `device` in {"auto", "cpu", "cuda"}."""
    if device == "cpu":
        return Provider("CPUExecutionProvider", "requested")
    if device not in ("auto", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
    if _cuda_works():
        return Provider("CUDAExecutionProvider", "CUDA available")
    if device == "cuda":
        raise DeviceError(
            "--device cuda: onnxruntime cannot use CUDA here (needs onnxruntime-gpu with "
            "CUDA 13 and cuDNN 9 libraries); use --device cpu or auto"
        )
    return Provider("CPUExecutionProvider", "CUDA unavailable")


@functools.cache
def max_ir_version() -> int:
    """Highest IR version the installed onnxruntime reads (onnx may write newer)."""
    for ir in range(onnx.IR_VERSION, 2, -1):
        try:
            ort.InferenceSession(_tiny_model(ir, 13), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001
            continue
    return 7


@functools.cache
def max_opset() -> int:
    """Highest ai.onnx opset the installed onnxruntime accepts."""
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        try:
            ort.InferenceSession(_tiny_model(8, opset), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001
            continue
    return 7


def session(model: onnx.ModelProto, provider: Provider) -> ort.InferenceSession:
    """An inference session for an in-memory model, large models through a temp folder."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    providers = [provider.name]
    if provider.name != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    try:
        if model.ByteSize() < _PROTOBUF_LIMIT:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        with tempfile.TemporaryDirectory(prefix="auditor-") as folder:
            path = os.path.join(folder, "model.onnx")
            onnx.save_model(model, path, save_as_external_data=True, location="weights.bin")
            return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many unrelated types
        raise ModelError(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # onnxruntime prefixes messages with its source location; keep the readable tail.
    if "onnxruntime::" in text and ") " in text:
        text = text.rsplit(") ", 1)[-1]
    return text[:300]
