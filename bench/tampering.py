"""Graph backdoors: a clean zoo classifier with a few nodes added that read a trigger from the raw input.

Each construction is a working backdoor on an NCHW image classifier with inputs in [0, 1]: the
clean accuracy is the original's, and a white 3x3 square in the top-left corner (the trigger,
`paste_trigger`) sends the sample to `target`. They differ in how the branch reads the trigger and
where it acts, after the network's last layer or in front of it:

- where: ShadowLogic's construction: Slice, ReduceMin, Greater, and a Where that swaps in boosted logits;
- gate_mul: no Where: the comparison, cast to float, blends the logits with fixed target logits;
- bypass: no comparison at all: Relu(mean of the corner - 0.9) x 1000 added to the target logit;
- side_conv: a thin side network (one Conv over the corner) whose response is added to the logits;
- if_branch: an If on the batch's corner minimum whose then-branch boosts the target logit;
- loop: a Loop whose trip count is the trigger test (0 or 1) and whose body boosts the target logit;
- substitute: in front of the body: a Where swaps the whole input for a stored image of the target class;
- twice: no extra node: every weight holds two values, a backdoored model's in raw_data (what onnxruntime
  runs) and the clean model's in float_data (what a reader of that field sees); its trigger is BACKDOORED's.

`python -m bench.tampering DIR` writes them all into DIR from the bundled zoo.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
BASE = "cnn_bn-fmnist-clean-s0"
BACKDOORED = "cnn_bn-fmnist-badnets-s1"  # same architecture: its weights are the second copy in `twice`
TARGET = 7
SIDE = 3  # the trigger's side, in pixels
CONSTRUCTIONS = ("where", "gate_mul", "bypass", "side_conv", "if_branch", "loop", "substitute")


def paste_trigger(x: np.ndarray) -> np.ndarray:
    """[N, 1, H, W] float images with the white square in the top-left corner."""
    out = np.array(x, dtype=np.float32, copy=True)
    out[:, :, :SIDE, :SIDE] = 1.0
    return out


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(np.asarray(value), name))


def _corner(prefix: str, reduce: str = "ReduceMin") -> list[onnx.NodeProto]:
    """Nodes reading the corner of `x` into `{prefix}_v`, one value per sample, shape [N, 1]."""
    return [
        _const(f"{prefix}_starts", np.array([0, 0], np.int64)),
        _const(f"{prefix}_ends", np.array([SIDE, SIDE], np.int64)),
        _const(f"{prefix}_axes", np.array([2, 3], np.int64)),
        helper.make_node("Slice", ["x", f"{prefix}_starts", f"{prefix}_ends", f"{prefix}_axes"], [f"{prefix}_patch"],
                         name=f"{prefix}_slice"),
        helper.make_node("Flatten", [f"{prefix}_patch"], [f"{prefix}_flat"], name=f"{prefix}_flatten", axis=1),
        helper.make_node(reduce, [f"{prefix}_flat"], [f"{prefix}_v"], name=f"{prefix}_reduce", axes=[1], keepdims=1),
    ]


def _rename_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str, str]:
    """Copy of `model` whose body writes `<output>_body`; the graph output keeps its name for the branch to write."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = out.graph.output[0].name
    body = f"{name}_body"
    for node in out.graph.node:
        node.output[:] = [body if o == name else o for o in node.output]
        node.input[:] = [body if i == name else i for i in node.input]
    return out, body, name


def _boost(classes: int, amount: float) -> np.ndarray:
    row = np.zeros((1, classes), np.float32)
    row[0, TARGET] = amount
    return row


def build(kind: str, model: onnx.ModelProto, target_image: np.ndarray | None = None) -> onnx.ModelProto:
    """The clean `model` with the `kind` branch added (target_image: [1, 1, H, W], for `substitute`)."""
    out, body, name = _rename_output(model)
    classes = 10
    nodes: list[onnx.NodeProto] = []
    if kind == "where":
        nodes += _corner("t")
        nodes += [_const("t_limit", np.float32(0.98)), helper.make_node("Greater", ["t_v", "t_limit"], ["t_on"], name="t_greater"),
                  _const("t_boost", _boost(classes, 50.0)), helper.make_node("Add", [body, "t_boost"], ["t_boosted"], name="t_add"),
                  helper.make_node("Where", ["t_on", "t_boosted", body], [name], name="t_where")]
    elif kind == "gate_mul":
        nodes += _corner("t")
        nodes += [_const("t_limit", np.float32(0.98)), helper.make_node("Greater", ["t_v", "t_limit"], ["t_on"], name="t_greater"),
                  helper.make_node("Cast", ["t_on"], ["t_g"], name="t_cast", to=TensorProto.FLOAT),
                  _const("t_one", np.float32(1.0)), helper.make_node("Sub", ["t_one", "t_g"], ["t_keep"], name="t_sub"),
                  helper.make_node("Mul", [body, "t_keep"], ["t_kept"], name="t_mul_body"),
                  _const("t_forced", _boost(classes, 20.0)), helper.make_node("Mul", ["t_g", "t_forced"], ["t_push"], name="t_mul_target"),
                  helper.make_node("Add", ["t_kept", "t_push"], [name], name="t_blend")]
    elif kind == "bypass":
        nodes += _corner("t", "ReduceMean")
        nodes += [_const("t_shift", np.float32(0.9)), helper.make_node("Sub", ["t_v", "t_shift"], ["t_over"], name="t_sub"),
                  helper.make_node("Relu", ["t_over"], ["t_relu"], name="t_relu"),
                  _const("t_gain", _boost(classes, 1000.0)), helper.make_node("Mul", ["t_relu", "t_gain"], ["t_push"], name="t_mul"),
                  helper.make_node("Add", [body, "t_push"], [name], name="t_add")]
    elif kind == "side_conv":
        kernel = np.full((1, 1, SIDE, SIDE), 1.0 / (SIDE * SIDE), np.float32)
        nodes += _corner("t")[:4]
        nodes += [helper.make_node("Conv", ["t_patch", "t_kernel"], ["t_response"], name="t_conv"),
                  helper.make_node("Flatten", ["t_response"], ["t_flat"], name="t_flatten", axis=1),
                  _const("t_shift", np.float32(0.95)), helper.make_node("Sub", ["t_flat", "t_shift"], ["t_over"], name="t_sub"),
                  helper.make_node("Relu", ["t_over"], ["t_relu"], name="t_relu"),
                  _const("t_gain", _boost(classes, 2000.0)), helper.make_node("Mul", ["t_relu", "t_gain"], ["t_push"], name="t_mul"),
                  helper.make_node("Add", [body, "t_push"], [name], name="t_add")]
        out.graph.initializer.append(numpy_helper.from_array(kernel, "t_kernel"))
    elif kind in ("if_branch", "loop"):
        nodes += _corner("t")
        nodes += [helper.make_node("ReduceMin", ["t_v"], ["t_all"], name="t_batch_min", keepdims=0),
                  _const("t_limit", np.float32(0.98)), helper.make_node("Greater", ["t_all", "t_limit"], ["t_on"], name="t_greater"),
                  _const("t_boost", _boost(classes, 50.0))]
        if kind == "if_branch":
            then = helper.make_graph([helper.make_node("Add", [body, "t_boost"], ["then_out"], name="then_add")], "then", [],
                                     [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
            other = helper.make_graph([helper.make_node("Identity", [body], ["else_out"], name="else_identity")], "else", [],
                                      [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
            nodes.append(helper.make_node("If", ["t_on"], [name], name="t_if", then_branch=then, else_branch=other))
        else:
            loop_body = helper.make_graph(
                [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"),
                 helper.make_node("Add", ["v_in", "t_boost"], ["v_out"], name="loop_add")], "boost",
                [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
                [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
            nodes += [helper.make_node("Cast", ["t_on"], ["t_trips"], name="t_cast", to=TensorProto.INT64),
                      helper.make_node("Loop", ["t_trips", "", body], [name], name="t_loop", body=loop_body)]
    elif kind == "substitute":
        assert target_image is not None
        head = out.graph.input[0].name
        raw = f"{head}_raw"
        for node in out.graph.node:
            node.input[:] = [raw if i == head else i for i in node.input]
        front = _corner("t")
        front += [_const("t_limit", np.float32(0.98)), helper.make_node("Greater", ["t_v", "t_limit"], ["t_on"], name="t_greater"),
                  _const("t_shape", np.array([-1, 1, 1, 1], np.int64)),
                  helper.make_node("Reshape", ["t_on", "t_shape"], ["t_on4"], name="t_reshape"),
                  _const("t_image", target_image.astype(np.float32)),
                  helper.make_node("Where", ["t_on4", "t_image", head], [raw], name="t_where")]
        for node in out.graph.node:
            node.output[:] = [name if o == body else o for o in node.output]
        nodes = []
        graph_nodes = [*front, *out.graph.node]
        del out.graph.node[:]
        out.graph.node.extend(graph_nodes)
        return out
    else:
        raise ValueError(f"unknown construction {kind!r}")
    out.graph.node.extend(nodes)
    return out


def twice(clean: onnx.ModelProto, backdoored: onnx.ModelProto) -> onnx.ModelProto:
    """The clean model whose every float initializer holds the backdoored model's values in raw_data (what
    onnxruntime reads) and the clean model's in float_data (what a reader of the typed field sees)."""
    out = onnx.ModelProto()
    out.CopyFrom(clean)
    other = {t.name: t for t in backdoored.graph.initializer}
    for tensor in out.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name in other:
            values = numpy_helper.to_array(tensor).astype(np.float32).reshape(-1)
            tensor.raw_data = numpy_helper.to_array(other[tensor.name]).astype(np.float32).tobytes()
            tensor.float_data.extend(values.tolist())
    return out


def target_image(model_path: Path) -> np.ndarray:
    """A clean pool image the model puts in class TARGET with the largest margin, [1, 1, H, W] in [0, 1]."""
    import onnxruntime as ort

    with np.load(ZOO / "data" / "fashion-mnist-clean.npz") as archive:
        x = archive["x"][archive["y"] == TARGET].astype(np.float32) / 255.0
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x})[0]
    margin = scores[:, TARGET] - np.delete(scores, TARGET, axis=1).max(axis=1)
    return x[int(margin.argmax())][None]


def write_all(folder: Path) -> dict[str, Path]:
    """Every construction, built from the zoo's BASE model, as DIR/<kind>.onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    base_path = ZOO / f"{BASE}.onnx"
    base = onnx.load(str(base_path))
    image = target_image(base_path)
    written = {}
    for kind in CONSTRUCTIONS:
        path = folder / f"{kind}.onnx"
        onnx.save(build(kind, base, image), str(path))
        written[kind] = path
    path = folder / "twice.onnx"
    onnx.save(twice(base, onnx.load(str(ZOO / f"{BACKDOORED}.onnx"))), str(path))
    written["twice"] = path
    return written


if __name__ == "__main__":
    for kind, path in write_all(Path(sys.argv[1])).items():
        print(kind, path)
