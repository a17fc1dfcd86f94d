"""Small, deterministic ONNX models and data files for the hostile-input tests.

Every builder writes into a folder the test owns and returns the path it wrote.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "models" / "example"
FEATURES, HIDDEN, CLASSES = 4, 8, 3


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> set[str]:
    """Every file and folder under `folder`, relative, hidden ones included."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def run_cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter, as a release pipeline runs it."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    env.pop("AUDITOR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd or ROOT)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32),
        "b1": rng.normal(size=(HIDDEN,)).astype(np.float32),
        "W2": rng.normal(size=(HIDDEN, CLASSES)).astype(np.float32),
        "b2": np.zeros(CLASSES, np.float32),
    }


def mlp_graph(x_shape=("N", FEATURES), out_shape=("N", CLASSES), seed: int = 0, extra_nodes=(), extra_inits=(),
              value_info=()) -> onnx.GraphProto:
    """x[N,4] -> Gemm(8) -> Relu -> Gemm(3) -> logits: one prunable unit (fc1) and a head."""
    inits = [numpy_helper.from_array(v, k) for k, v in _weights(seed).items()]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"], name="fc2"),
    ]
    return helper.make_graph(
        nodes + list(extra_nodes), "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))],
        inits + list(extra_inits), value_info=list(value_info),
    )


def make_model(graph: onnx.GraphProto, opset: int = 17, ir_version: int = 8, extra_opsets=()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="auditor-tests")
    model.ir_version = ir_version
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    Path(path).write_bytes(model.SerializeToString())
    return Path(path)


def mlp(path: Path, **kwargs) -> Path:
    return save(make_model(mlp_graph(**kwargs)), path)


def data(path: Path, count: int = 20, features: int = FEATURES, seed: int = 1, **arrays) -> Path:
    rng = np.random.default_rng(seed)
    content = {"x": rng.normal(size=(count, features)).astype(np.float32), "y": rng.integers(0, CLASSES, count)}
    content.update(arrays)
    content = {k: v for k, v in content.items() if v is not None}
    np.savez(path, **content)
    return Path(path)


# ---- models with external data -------------------------------------------------------------

def external(folder: Path, location: str, write_data: bool = True, offset: str | None = None,
             length: str | None = None, name: str = "model.onnx") -> Path:
    """The MLP with W1 stored outside the .onnx file at `location` (written verbatim)."""
    model = make_model(mlp_graph())
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    raw = w1.raw_data
    w1.ClearField("raw_data")
    w1.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset or "0", "length": length or str(len(raw))}
    for key, value in entries.items():
        entry = w1.external_data.add()
        entry.key, entry.value = key, value
    if write_data:
        target = folder / location if not os.path.isabs(location) else Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    return save(model, folder / name)


def big_external(folder: Path, gib: float = 2.1, tokens: int = 6, dim: int = 8) -> Path:
    """A real > 2 GiB text classifier saved with external data: an embedding table of `gib` GiB
    (Gather) -> Flatten -> Gemm(16) -> Relu -> Gemm(3). Only the first rows are random; the rest of
    the table is a sparse run of zeros, so the file costs little disk while every byte is real."""
    rows = int(gib * 2**30) // (4 * dim)
    head = np.random.default_rng(0).normal(size=(1024, dim)).astype(np.float32)
    table = TensorProto(name="embedding", data_type=TensorProto.FLOAT, dims=[rows, dim])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "embedding.bin"), ("offset", "0"), ("length", str(rows * dim * 4))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    with open(folder / "embedding.bin", "wb") as handle:
        handle.write(head.tobytes())
        handle.truncate(rows * dim * 4)
    rng = np.random.default_rng(1)
    inits = [table,
             numpy_helper.from_array(rng.normal(size=(tokens * dim, 16)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(16, CLASSES)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b2")]
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["e"], axis=0),
             helper.make_node("Flatten", ["e"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", tokens])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return save(make_model(graph), folder / "model.onnx")


def big_data(path: Path, count: int = 20, tokens: int = 6) -> Path:
    ids = np.random.default_rng(2).integers(0, 1024, size=(count, tokens)).astype(np.int64)
    np.savez(path, x=ids)
    return Path(path)


# ---- graphs auditor must refuse or handle --------------------------------------------------

def custom_op(path: Path, domain: str = "com.evil", op: str = "Exfiltrate") -> Path:
    graph = mlp_graph()
    graph.node[1].CopyFrom(helper.make_node(op, ["h"], ["r"], domain=domain, name="custom"))
    return save(make_model(graph, extra_opsets=[(domain, 1)]), path)


def unknown_op(path: Path) -> Path:
    graph = mlp_graph()
    graph.node[1].CopyFrom(helper.make_node("TotallyRelu", ["h"], ["r"], name="custom"))
    return save(make_model(graph), path)


def opset(path: Path, version: int, ir_version: int = 8) -> Path:
    return save(make_model(mlp_graph(), opset=version, ir_version=ir_version), path)


def ml_opset(path: Path, version: int) -> Path:
    return save(make_model(mlp_graph(), extra_opsets=[("ai.onnx.ml", version)]), path)


def head_only(path: Path) -> Path:
    inits = [numpy_helper.from_array(_weights()["W1"][:, :CLASSES].copy(), "W"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["logits"])], "head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return save(make_model(graph), path)


def _branch(name: str, op: str) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, ["r"], [f"{name}_out"])], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def control_flow(path: Path, kind: str) -> Path:
    """fc1 -> Relu -> <If | Loop | Scan> -> fc2."""
    graph = mlp_graph()
    cond = numpy_helper.from_array(np.array(True), "cond")
    trip = numpy_helper.from_array(np.array(1, np.int64), "trip")
    graph.initializer.extend([cond, trip])
    graph.node[2].input[0] = "cf"
    if kind == "If":
        node = helper.make_node("If", ["cond"], ["cf"], then_branch=_branch("then", "Identity"), else_branch=_branch("else", "Neg"))
    elif kind == "Loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
        node = helper.make_node("Loop", ["trip", "cond", "r"], ["cf"], body=body)
    else:
        body = helper.make_graph(
            [helper.make_node("Identity", ["s_in"], ["s_out"])], "body",
            [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [HIDDEN])],
            [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [HIDDEN])])
        node = helper.make_node("Scan", ["r"], ["cf"], body=body, num_scan_inputs=1)
    graph.node.insert(2, node)
    return save(make_model(graph), path)


def qlinear_conv(path: Path) -> Path:
    """A fully quantized image classifier: QuantizeLinear -> QLinearConv -> DequantizeLinear -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    i8 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.int8), n)  # noqa: E731
    u8 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.uint8), n)  # noqa: E731
    f32 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [f32(0.02, "xs"), u8(128, "xz"), i8(rng.integers(-20, 20, (4, 1, 3, 3)), "w"), f32(0.01, "ws"), i8(0, "wz"),
             f32(0.05, "ys"), u8(128, "yz"), f32(rng.normal(size=(4 * 6 * 6, CLASSES)), "W2"), f32(np.zeros(CLASSES), "b2")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        helper.make_node("Flatten", ["y"], ["f"]),
        helper.make_node("Gemm", ["f", "W2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return save(make_model(graph, opset=13), path)


def qdq_mlp(path: Path) -> Path:
    """The MLP with every weight stored as int8 behind a DequantizeLinear (QDQ format)."""
    weights = _weights()
    inits, nodes = [], []
    for name in ("W1", "W2"):
        scale = float(np.abs(weights[name]).max() / 127)
        inits += [numpy_helper.from_array(np.round(weights[name] / scale).astype(np.int8), f"{name}_q"),
                  numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                  numpy_helper.from_array(np.array(0, np.int8), f"{name}_z")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name]))
    inits += [numpy_helper.from_array(weights["b1"], "b1"), numpy_helper.from_array(weights["b2"], "b2")]
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "W1_s", "W1_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "W1_s", "W1_z"], ["xd"]),
        helper.make_node("Gemm", ["xd", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return save(make_model(graph, opset=13), path)


def two_inputs(path: Path) -> Path:
    """Inputs a[N,3] and b[N,1] concatenated into the MLP; outputs logits and probabilities."""
    graph = mlp_graph()
    graph.node.insert(0, helper.make_node("Concat", ["a", "b"], ["x"], axis=1))
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                        helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 1])])
    graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]))
    return save(make_model(graph), path)


def zipmap(path: Path, keep_label: bool = True) -> Path:
    """scikit-learn style: Softmax -> ZipMap (a sequence of maps) and an ArgMax label; no tensor of scores."""
    graph = mlp_graph()
    graph.node.extend([
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
        helper.make_node("ZipMap", ["probs"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=list(range(CLASSES))),
    ])
    del graph.output[:]
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    outputs = [helper.make_value_info("output_probability", seq)]
    if keep_label:
        outputs.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    graph.output.extend(outputs)
    return save(make_model(graph, extra_opsets=[("ai.onnx.ml", 1)]), path)


def label_only(path: Path) -> Path:
    graph = mlp_graph()
    graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    return save(make_model(graph), path)


# ---- data files -------------------------------------------------------------------------------

class Detonator:
    """Unpickling this creates `path`: proof that a loader unpickled data."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_npz(path: Path, marker: Path) -> Path:
    """An .npz whose 'x' is an object array holding a Detonator."""
    array = np.empty(20, dtype=object)
    array[:] = [Detonator(str(marker))] * 20
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w") as handle:
            np.lib.format.write_array(handle, array, allow_pickle=True)
    return Path(path)


def raw_pickle(path: Path, marker: Path) -> Path:
    Path(path).write_bytes(pickle.dumps(Detonator(str(marker))))
    return Path(path)


def npz_members(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return Path(path)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def lying_npy(shape: tuple[int, ...], real: np.ndarray) -> bytes:
    """An .npy whose header declares `shape` but whose body holds `real`."""
    header = {"descr": np.lib.format.dtype_to_descr(real.dtype), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + real.tobytes()
