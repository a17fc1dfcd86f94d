"""Small real ONNX graphs, one per unit pattern auditor must handle.

Every builder returns an onnx.ModelProto (opset 17, IR 8 unless the pattern is about
versions) whose weighted node named "unit" is a hidden, prunable layer: its chain ends
in the tensor "unit_out" and a classifier head (pooling/flatten + Gemm to 10 logits,
output "logits") follows. Weights come from a seeded numpy generator so that every run
builds byte-identical models. `PATTERNS` pairs each builder with what `find_units`
must report for the "unit" layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
CLASSES = 10
HIDDEN = 8  # output channels of every "unit"


@dataclass(frozen=True)
class Pattern:
    """A builder and the unit find_units must find in its graph (node named "unit")."""

    name: str
    build: Callable[[], onnx.ModelProto]
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    op: str
    activation: str | None
    axis: int  # channel axis of "unit_out", negative
    bn: bool = False
    fold: bool = True  # zero_channels folds into initializers (else a mask Mul)
    needs_load: bool = False  # onnxruntime refuses it until auditor.model.load normalises it
    min_opset: int = OPSET  # the opset onnxruntime must support to run it
    channels: int = HIDDEN


class _Builder:
    """Collects nodes and initializers; random weights scaled by fan-in so activations stay O(1)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const(name, self.rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape))

    def bias(self, name: str, size: int) -> str:
        return self.const(name, self.rng.normal(0.0, 0.3, size))

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=attrs.pop("name", outputs[0] + "_node"), **attrs))
        return outputs[0]

    def head(self, features: str, width: int) -> None:
        """Gemm [N, width] -> [N, 10] "logits": the classifier head, never prunable."""
        w = self.weight("head_w", (CLASSES, width), width)
        b = self.bias("head_b", CLASSES)
        self.node("Gemm", [features, w, b], ["logits"], transB=1, name="head")

    def pooled_head(self, tensor: str) -> None:
        """GlobalAveragePool + Flatten + Gemm on an N, C, ... tensor."""
        pooled = self.node("GlobalAveragePool", [tensor], ["pooled"])
        self.head(self.node("Flatten", [pooled], ["flat"]), HIDDEN)

    def model(self, input_shape: tuple[int, ...], opset: int | None = OPSET, ir_version: int = IR_VERSION) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
        graph = helper.make_graph(self.nodes, "pattern", [x], [y], self.inits)
        if opset is None:  # onnx's own defaults (newest IR and opset this onnx writes)
            return helper.make_model(graph)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir_version
        return model


def _conv_relu(dims: int, seed: int) -> onnx.ModelProto:
    """Conv (with bias) + Relu on an N, 3, *spatial input of `dims` spatial dimensions."""
    g = _Builder(seed)
    kernel = (3,) * dims
    w = g.weight("unit_w", (HIDDEN, 3, *kernel), 3 * 3**dims)
    conv = g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], pads=[1] * (2 * dims), name="unit")
    g.pooled_head(g.node("Relu", [conv], ["unit_out"]))
    return g.model((3, *([6, 5, 4][:dims])))


def conv1d() -> onnx.ModelProto:
    return _conv_relu(1, 1)


def conv2d() -> onnx.ModelProto:
    return _conv_relu(2, 2)


def conv3d() -> onnx.ModelProto:
    return _conv_relu(3, 3)


def conv_linear() -> onnx.ModelProto:
    """Conv with no activation: the unit's output is the Conv output itself."""
    g = _Builder(4)
    w = g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)
    g.pooled_head(g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["unit_out"], pads=[1] * 4, name="unit"))
    return g.model((3, 6, 5))


def conv_grouped() -> onnx.ModelProto:
    """Conv with group=2: 4 input channels, 8 output channels, weight [8, 2, 3, 3]."""
    g = _Builder(5)
    w = g.weight("unit_w", (HIDDEN, 2, 3, 3), 18)
    conv = g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], pads=[1] * 4, group=2, name="unit")
    g.pooled_head(g.node("Relu", [conv], ["unit_out"]))
    return g.model((4, 6, 5))


def conv_depthwise() -> onnx.ModelProto:
    """Depthwise Conv (group = channels = 8), weight [8, 1, 3, 3]."""
    g = _Builder(6)
    w = g.weight("unit_w", (HIDDEN, 1, 3, 3), 9)
    conv = g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], pads=[1] * 4, group=HIDDEN, name="unit")
    g.pooled_head(g.node("Relu", [conv], ["unit_out"]))
    return g.model((HIDDEN, 6, 5))


def conv_transpose() -> onnx.ModelProto:
    """ConvTranspose (group 1, stride 2): weight [in=3, out=8, 3, 3], output channels on weight axis 1."""
    g = _Builder(7)
    w = g.weight("unit_w", (3, HIDDEN, 3, 3), 27)
    conv = g.node("ConvTranspose", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], strides=[2, 2], name="unit")
    g.pooled_head(g.node("Relu", [conv], ["unit_out"]))
    return g.model((3, 4, 3))


def conv_bn_relu() -> onnx.ModelProto:
    """Conv (no bias) + BatchNormalization (inference, non-trivial statistics) + Relu."""
    g = _Builder(8)
    w = g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)
    conv = g.node("Conv", ["x", w], ["conv"], pads=[1] * 4, name="unit")
    scale = g.const("bn_scale", g.rng.uniform(0.5, 1.5, HIDDEN))
    beta = g.bias("bn_beta", HIDDEN)
    mean = g.const("bn_mean", g.rng.normal(0.0, 0.2, HIDDEN))
    var = g.const("bn_var", g.rng.uniform(0.5, 2.0, HIDDEN))
    bn = g.node("BatchNormalization", [conv, scale, beta, mean, var], ["bn"], epsilon=1e-5)
    g.pooled_head(g.node("Relu", [bn], ["unit_out"]))
    return g.model((3, 6, 5))


def _conv_then(activation: Callable[[_Builder, str], None], seed: int, opset: int = OPSET) -> onnx.ModelProto:
    """Conv 2-D + bias, then `activation(builder, conv_output)` which must write "unit_out"."""
    g = _Builder(seed)
    w = g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)
    conv = g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], pads=[1] * 4, name="unit")
    activation(g, conv)
    g.pooled_head("unit_out")
    return g.model((3, 6, 5), opset=opset)


def conv_leaky_relu() -> onnx.ModelProto:
    return _conv_then(lambda g, t: g.node("LeakyRelu", [t], ["unit_out"], alpha=0.1), 10)


def conv_relu6() -> onnx.ModelProto:
    """Clip with min 0 and max 6 given as (initializer) inputs, as exporters write Relu6."""
    def relu6(g: _Builder, t: str) -> None:
        g.node("Clip", [t, g.const("lo", np.float32(0)), g.const("hi", np.float32(6))], ["unit_out"])

    return _conv_then(relu6, 11)


def conv_sigmoid() -> onnx.ModelProto:
    """Sigmoid(0) = 0.5: zeroing the kernel would leave 0.5, so the rewrite must mask."""
    return _conv_then(lambda g, t: g.node("Sigmoid", [t], ["unit_out"]), 12)


def conv_tanh() -> onnx.ModelProto:
    return _conv_then(lambda g, t: g.node("Tanh", [t], ["unit_out"]), 13)


def conv_gelu() -> onnx.ModelProto:
    """The single Gelu op (opset 20)."""
    return _conv_then(lambda g, t: g.node("Gelu", [t], ["unit_out"]), 14, opset=20)


def _gelu_erf(g: _Builder, t: str) -> None:
    """x * 0.5 * (1 + Erf(x / sqrt(2))), as PyTorch exports nn.GELU() before opset 20."""
    scaled = g.node("Div", [t, g.const("sqrt2", np.float32(np.sqrt(2.0)))], ["gelu_div"])
    erf = g.node("Erf", [scaled], ["gelu_erf"])
    one_plus = g.node("Add", [erf, g.const("one", np.float32(1.0))], ["gelu_add"])
    half = g.node("Mul", [t, g.const("half", np.float32(0.5))], ["gelu_half"])
    g.node("Mul", [half, one_plus], ["unit_out"])


def conv_gelu_erf() -> onnx.ModelProto:
    return _conv_then(_gelu_erf, 15)


def conv_hardswish() -> onnx.ModelProto:
    return _conv_then(lambda g, t: g.node("HardSwish", [t], ["unit_out"]), 16)


def conv_swish() -> onnx.ModelProto:
    """x * Sigmoid(x) (SiLU) as two nodes."""
    return _conv_then(lambda g, t: g.node("Mul", [t, g.node("Sigmoid", [t], ["swish_sig"])], ["unit_out"]), 17)


def _gemm(trans_b: int, seed: int) -> onnx.ModelProto:
    """[N, 6] -> Gemm (hidden, 8 units) -> Relu -> Gemm head."""
    g = _Builder(seed)
    shape = (HIDDEN, 6) if trans_b else (6, HIDDEN)
    w = g.weight("unit_w", shape, 6)
    gemm = g.node("Gemm", ["x", w, g.bias("unit_b", HIDDEN)], ["gemm"], transB=trans_b, name="unit")
    g.head(g.node("Relu", [gemm], ["unit_out"]), HIDDEN)
    return g.model((6,))


def gemm_trans_b0() -> onnx.ModelProto:
    return _gemm(0, 20)


def gemm_trans_b1() -> onnx.ModelProto:
    return _gemm(1, 27)


def matmul_tokens() -> onnx.ModelProto:
    """[B, T=5, F=6] -> MatMul (constant [6, 8]) -> Add bias [8] -> Relu -> mean over tokens -> Gemm."""
    g = _Builder(22)
    mm = g.node("MatMul", ["x", g.weight("unit_w", (6, HIDDEN), 6)], ["mm"], name="unit")
    biased = g.node("Add", [mm, g.bias("unit_b", HIDDEN)], ["mm_bias"])
    act = g.node("Relu", [biased], ["unit_out"])
    g.head(g.node("ReduceMean", [act], ["tokens_mean"], axes=[1], keepdims=0), HIDDEN)
    return g.model((5, 6))


def matmul_tokens_seq_first() -> onnx.ModelProto:
    """torch's sequence-first attention layout: [B, T=5, F=6] -> Transpose to [T, B, F] -> MatMul -> Add bias -> Relu
    -> back to [B, T, H] -> mean over tokens -> Gemm. The unit's batch axis is its second."""
    g = _Builder(29)
    first = g.node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2])
    mm = g.node("MatMul", [first, g.weight("unit_w", (6, HIDDEN), 6)], ["mm"], name="unit")
    biased = g.node("Add", [mm, g.bias("unit_b", HIDDEN)], ["mm_bias"])
    act = g.node("Relu", [biased], ["unit_out"])
    back = g.node("Transpose", [act], ["act_bth"], perm=[1, 0, 2])
    g.head(g.node("ReduceMean", [back], ["tokens_mean"], axes=[1], keepdims=0), HIDDEN)
    return g.model((5, 6))


def nhwc_tf2onnx() -> onnx.ModelProto:
    """tf2onnx layout: NHWC input, Transpose to NCHW, Conv, Transpose back, Add bias [C] on the last axis, Relu."""
    g = _Builder(23)
    nchw = g.node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2])
    conv = g.node("Conv", [nchw, g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)], ["conv"], pads=[1] * 4, name="unit")
    nhwc = g.node("Transpose", [conv], ["conv_nhwc"], perm=[0, 2, 3, 1])
    biased = g.node("Add", [nhwc, g.bias("unit_b", HIDDEN)], ["conv_bias"])
    act = g.node("Relu", [biased], ["unit_out"])
    g.head(g.node("ReduceMean", [act], ["hw_mean"], axes=[1, 2], keepdims=0), HIDDEN)
    return g.model((6, 5, 3))


def nhwc_folded_bn() -> onnx.ModelProto:
    """tf2onnx's folded BatchNormalization on NHWC: Conv, Transpose back, Mul by scale [C], Add bias [C], Relu."""
    g = _Builder(28)
    nchw = g.node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2])
    conv = g.node("Conv", [nchw, g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)], ["conv"], pads=[1] * 4, name="unit")
    nhwc = g.node("Transpose", [conv], ["conv_nhwc"], perm=[0, 2, 3, 1])
    scaled = g.node("Mul", [nhwc, g.const("bn_scale", g.rng.uniform(0.5, 1.5, HIDDEN))], ["conv_scaled"])
    biased = g.node("Add", [scaled, g.bias("unit_b", HIDDEN)], ["conv_bias"])
    act = g.node("Relu", [biased], ["unit_out"])
    g.head(g.node("ReduceMean", [act], ["hw_mean"], axes=[1, 2], keepdims=0), HIDDEN)
    return g.model((6, 5, 3))


def shared_weight() -> onnx.ModelProto:
    """Two Conv nodes ("unit" and "twin") reading one weight initializer, on parallel branches."""
    g = _Builder(24)
    w = g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)
    conv = g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], pads=[1] * 4, name="unit")
    act = g.node("Relu", [conv], ["unit_out"])
    twin = g.node("Conv", ["x", w, g.bias("twin_b", HIDDEN)], ["twin_conv"], pads=[2] * 4, dilations=[2, 2], name="twin")
    twin_act = g.node("Relu", [twin], ["twin_out"])
    g.pooled_head(g.node("Add", [act, twin_act], ["merged"]))
    return g.model((3, 6, 5))


def constant_node_bias() -> onnx.ModelProto:
    """Conv whose bias is a Constant node, not an initializer: folding would not apply, so mask."""
    g = _Builder(25)
    w = g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)
    bias = g.rng.normal(0.0, 0.3, HIDDEN).astype(np.float32)
    g.node("Constant", [], ["unit_b"], value=numpy_helper.from_array(bias, "unit_b_value"))
    conv = g.node("Conv", ["x", w, "unit_b"], ["conv"], pads=[1] * 4, name="unit")
    g.pooled_head(g.node("Relu", [conv], ["unit_out"]))
    return g.model((3, 6, 5))


def onnx_defaults() -> onnx.ModelProto:
    """Conv + Relu written with onnx.helper.make_model's defaults (IR 14, newest opset with onnx 1.23),
    which onnxruntime 1.31 refuses until auditor.model.load lowers IR version and opset."""
    g = _Builder(26)
    w = g.weight("unit_w", (HIDDEN, 3, 3, 3), 27)
    conv = g.node("Conv", ["x", w, g.bias("unit_b", HIDDEN)], ["conv"], pads=[1] * 4, name="unit")
    g.pooled_head(g.node("Relu", [conv], ["unit_out"]))
    return g.model((3, 6, 5), opset=None)


PATTERNS = [
    Pattern("conv1d", conv1d, (3, 6), "Conv", "Relu", -2),
    Pattern("conv2d", conv2d, (3, 6, 5), "Conv", "Relu", -3),
    Pattern("conv3d", conv3d, (3, 6, 5, 4), "Conv", "Relu", -4),
    Pattern("conv_linear", conv_linear, (3, 6, 5), "Conv", None, -3),
    Pattern("conv_grouped", conv_grouped, (4, 6, 5), "Conv", "Relu", -3),
    Pattern("conv_depthwise", conv_depthwise, (HIDDEN, 6, 5), "Conv", "Relu", -3),
    Pattern("conv_transpose", conv_transpose, (3, 4, 3), "ConvTranspose", "Relu", -3),
    Pattern("conv_bn_relu", conv_bn_relu, (3, 6, 5), "Conv", "Relu", -3, bn=True),
    Pattern("conv_leaky_relu", conv_leaky_relu, (3, 6, 5), "Conv", "LeakyRelu", -3),
    Pattern("conv_relu6", conv_relu6, (3, 6, 5), "Conv", "Clip", -3),
    Pattern("conv_sigmoid", conv_sigmoid, (3, 6, 5), "Conv", "Sigmoid", -3, fold=False),
    Pattern("conv_tanh", conv_tanh, (3, 6, 5), "Conv", "Tanh", -3),
    Pattern("conv_gelu", conv_gelu, (3, 6, 5), "Conv", "Gelu", -3, min_opset=20),
    Pattern("conv_gelu_erf", conv_gelu_erf, (3, 6, 5), "Conv", "Gelu(erf)", -3),
    Pattern("conv_hardswish", conv_hardswish, (3, 6, 5), "Conv", "HardSwish", -3),
    Pattern("conv_swish", conv_swish, (3, 6, 5), "Conv", "Swish", -3),
    Pattern("gemm_trans_b0", gemm_trans_b0, (6,), "Gemm", "Relu", -1),
    Pattern("gemm_trans_b1", gemm_trans_b1, (6,), "Gemm", "Relu", -1),
    Pattern("matmul_tokens", matmul_tokens, (5, 6), "MatMul", "Relu", -1),
    Pattern("matmul_tokens_seq_first", matmul_tokens_seq_first, (5, 6), "MatMul", "Relu", -1),
    Pattern("nhwc_tf2onnx", nhwc_tf2onnx, (6, 5, 3), "Conv", "Relu", -1),
    Pattern("nhwc_folded_bn", nhwc_folded_bn, (6, 5, 3), "Conv", "Relu", -1),
    Pattern("shared_weight", shared_weight, (3, 6, 5), "Conv", "Relu", -3),
    Pattern("constant_node_bias", constant_node_bias, (3, 6, 5), "Conv", "Relu", -3, fold=False),
    Pattern("onnx_defaults", onnx_defaults, (3, 6, 5), "Conv", "Relu", -3, needs_load=True),
]


def samples(pattern: Pattern, count: int = 5, seed: int = 0) -> np.ndarray:
    """`count` random inputs for the pattern, [count, *input_shape] float32."""
    return np.random.default_rng(seed).normal(0.0, 1.0, (count, *pattern.input_shape)).astype(np.float32)


def load(pattern: Pattern, folder) -> onnx.ModelProto:
    """The pattern's model as `auditor.model.load` returns it after a round trip through a file."""
    from auditor.io import model as model_io

    path = folder / f"{pattern.name}.onnx"
    onnx.save_model(pattern.build(), str(path))
    return model_io.load(path).proto


def run(model: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None, feed: dict | None = None) -> list[np.ndarray]:
    """Run `model` on CPU onnxruntime; `names` may be any tensors of the graph (exposed on a copy)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = names or [o.name for o in model.graph.output]
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, {"x": x, **(feed or {})})


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy: every initializer and the graph's input and output (the ops keep the type)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for tensor in half.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in [*half.graph.input, *half.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return half


def pattern(name: str) -> Pattern:
    """The pattern called `name`."""
    return next(p for p in PATTERNS if p.name == name)
