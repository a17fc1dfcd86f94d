"""Find the prunable units: layers with constant weights and the BN / activation that follow.

A unit is one weighted layer (Conv, ConvTranspose, Gemm, MatMul with a constant 2-D weight)
plus the per-channel ops after it (bias Add, BatchNormalization, per-channel Mul/Add as
tf2onnx writes folded BN, Transposes) up to and including the first activation. Its
`output` is the tensor whose channels we measure and zero; `axis` is the channel axis
in that tensor, counted from the end so that unknown ranks still broadcast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from auditor.graph.index import GraphIndex, attribute

# activation op -> whether f(0) == 0 (then zeroing before it zeroes after it)
_ACTIVATIONS = {
    "Relu": True, "LeakyRelu": True, "PRelu": True, "Elu": True, "Selu": True, "Celu": True,
    "Tanh": True, "Gelu": True, "HardSwish": True, "Mish": True, "ThresholdedRelu": True,
    "Sigmoid": False, "HardSigmoid": False, "Softplus": False, "Softsign": True, "Clip": True,
}
_PASS_THROUGH = {"Identity", "Dropout"}
_REGION_OPS = {"Mul", "Add", "Div", "Sub", "Erf", "Sigmoid", "Tanh", "Pow", "HardSigmoid"}
_REGION_NONLINEAR = {"Erf": "Gelu(erf)", "Tanh": "Gelu(tanh)", "Sigmoid": "Swish", "HardSigmoid": "HardSwish"}


@dataclass(frozen=True)
class Affine:
    """A per-channel (or scalar) Add/Sub/Mul/Div by a constant inside the unit."""

    node: int
    op: str
    constant: str  # the constant input's name
    per_channel: bool


@dataclass(frozen=True)
class Unit:
    """One layer whose `channels` output channels we score and may zero."""

    name: str
    op: str  # Conv | ConvTranspose | Gemm | MatMul
    node: int  # index of the weighted node in graph.node
    weight: str  # constant holding the weights
    weight_axis: int  # axis of the weight array that indexes output channels
    group: int
    bias: str | None  # bias constant of the weighted node (Conv B, Gemm C)
    bn: int | None  # index of the BatchNormalization node
    affines: tuple[Affine, ...]
    activation: str | None
    zero_preserving: bool  # the activation (if any) maps 0 to 0
    output: str  # tensor measured and masked
    axis: int  # channel axis of `output`, negative
    channels: int
    head: bool  # reaches a graph output with no other unit between: never pruned

    @property
    def prunable(self) -> bool:
        return not self.head and self.channels > 1


def find_units(index: GraphIndex) -> list[Unit]:
    """Every unit of the graph, in node order, with the classifier head(s) marked."""
    found = []
    for position, node in enumerate(index.graph.node):
        unit = _unit_at(index, position, node)
        if unit is not None:
            found.append(unit)
    weighted = {u.node for u in found}
    names = [u.name for u in found]
    return [
        _mark_head(index, u if names.count(u.name) == 1 else Unit(**{**u.__dict__, "name": f"{u.name}#{u.node}"}), weighted)
        for u in found
    ]


def _unit_at(index: GraphIndex, position: int, node: onnx.NodeProto) -> Unit | None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    weight_name = node.input[1]
    weight = index.constant(weight_name)
    if weight is None or weight.dtype.kind != "f":
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not index.is_constant(bias):
        return None
    group = int(attribute(node, "group", 1))
    if op == "Conv" and weight.ndim >= 3:
        channels, weight_axis, rank = weight.shape[0], 0, weight.ndim
    elif op == "ConvTranspose" and weight.ndim >= 3 and group == 1:
        channels, weight_axis, rank = weight.shape[1], 1, weight.ndim
    elif op == "Gemm" and weight.ndim == 2 and not index.is_constant(node.input[0]):
        trans_b = int(attribute(node, "transB", 0))
        channels, weight_axis, rank = weight.shape[0 if trans_b else 1], 0 if trans_b else 1, 2
    elif op == "MatMul" and weight.ndim == 2 and not index.is_constant(node.input[0]):
        channels, weight_axis, rank = weight.shape[1], 1, index.rank(node.output[0])
        bias = None
    else:
        return None
    axis = -1 if rank is None else 1 - rank
    if op == "MatMul":
        axis = -1
    chain = _follow(index, node.output[0], axis, rank, int(channels))
    return Unit(
        name=node.name or f"{op.lower()}_{position}",
        op=op,
        node=position,
        weight=weight_name,
        weight_axis=weight_axis,
        group=group,
        bias=bias,
        bn=chain["bn"],
        affines=tuple(chain["affines"]),
        activation=chain["activation"],
        zero_preserving=chain["zero_preserving"],
        output=chain["output"],
        axis=chain["axis"],
        channels=int(channels),
        head=False,
    )


def _follow(index: GraphIndex, tensor: str, axis: int, rank: int | None, channels: int) -> dict:
    """Walk the per-channel ops after a weighted node, up to the first activation."""
    state = {"bn": None, "affines": [], "activation": None, "zero_preserving": True, "output": tensor, "axis": axis}
    while tensor not in index.outputs:
        users = index.consumers.get(tensor, [])
        if len(users) != 1:
            region = _activation_region(index, tensor)
            if region is None:
                break
            state.update(activation=region[0], zero_preserving=region[2], output=region[1], axis=axis)
            break
        position = users[0]
        node = index.node(position)
        op = node.op_type
        channel_first = rank is not None and axis + rank == 1
        if op == "BatchNormalization" and node.input[0] == tensor and state["bn"] is None and channel_first:
            state["bn"] = position
        elif op in ("Add", "Sub", "Mul", "Div") and state["activation"] is None:
            affine = _affine(index, position, node, tensor, axis, channels)
            if affine is None:
                break
            state["affines"].append(affine)
        elif op in _ACTIVATIONS and node.input[0] == tensor:
            state["activation"] = op
            state["zero_preserving"] = _maps_zero_to_zero(index, node)
            state.update(output=node.output[0], axis=axis)
            break
        elif op == "Transpose":
            perm = attribute(node, "perm")
            if perm is None:
                break
            rank = len(perm)
            axis = list(perm).index(axis + rank) - rank
        elif op not in _PASS_THROUGH:
            break
        tensor = node.output[0]
        state.update(output=tensor, axis=axis)
    return state


def _affine(index: GraphIndex, position: int, node: onnx.NodeProto, tensor: str, axis: int, channels: int) -> Affine | None:
    others = [name for name in node.input if name != tensor]
    if len(others) != 1 or not index.is_constant(others[0]):
        return None
    if node.op_type in ("Sub", "Div") and node.input[0] != tensor:
        return None  # c - x or c / x is not an affine map of x per channel
    value = index.constant(others[0])
    if value is None:
        return None
    if value.size == 1:
        return Affine(position, node.op_type, others[0], per_channel=False)
    dim = value.ndim + axis
    if 0 <= dim < value.ndim and value.shape[dim] == channels and value.size == channels:
        return Affine(position, node.op_type, others[0], per_channel=True)
    return None


def _maps_zero_to_zero(index: GraphIndex, node: onnx.NodeProto) -> bool:
    if node.op_type != "Clip":
        return _ACTIVATIONS[node.op_type]
    low = attribute(node, "min")
    high = attribute(node, "max")
    if len(node.input) > 1 and node.input[1]:
        value = index.constant(node.input[1])
        low = None if value is None else float(value)
        if value is None:
            return False
    if len(node.input) > 2 and node.input[2]:
        value = index.constant(node.input[2])
        if value is None:
            return False
        high = float(value)
    return (low is None or low <= 0) and (high is None or high >= 0)


def _activation_region(index: GraphIndex, tensor: str) -> tuple[str, str, bool] | None:
    """Match x*sigmoid(x), Gelu's erf/tanh forms and similar: a small elementwise region
    that reads `tensor` (and constants), takes every use of it, and leaves through one tensor.
    Returns (label, exit tensor, whether the region maps 0 to 0)."""
    region: list[int] = []
    inside = {tensor}
    frontier = [tensor]
    while frontier:
        name = frontier.pop()
        for position in index.consumers.get(name, []):
            if position in region:
                continue
            node = index.node(position)
            if node.op_type not in _REGION_OPS:
                continue  # the next layer (pool, conv, ...): the region ends before it
            if not all(n in inside or index.is_constant(n) for n in node.input if n):
                continue  # reached later once its other input is inside
            if len(region) >= 10:
                return None
            region.append(position)
            inside.update(node.output)
            frontier.extend(node.output)
    if not region or any(p not in region for p in index.consumers.get(tensor, [])):
        return None  # `tensor` also flows elsewhere: masking the region's exit would not cover it
    kinds = {index.node(p).op_type for p in region}
    nonlinear = [label for op, label in _REGION_NONLINEAR.items() if op in kinds]
    if not nonlinear:
        return None
    exits = set()
    for position in region:
        for name in index.node(position).output:
            users = index.consumers.get(name, [])
            if name in index.outputs or any(u not in region for u in users):
                exits.add(name)
            if not users and name not in index.outputs:
                return None
    if len(exits) != 1:
        return None
    leaves = exits.pop()
    return nonlinear[0], leaves, _region_at_zero(index, region, tensor, leaves)


def _region_at_zero(index: GraphIndex, region: list[int], tensor: str, leaves: str) -> bool:
    """Evaluate the region on x = 0: the match is by shape, so whether it maps 0 to 0 (and
    folding is exact) is checked on the values, e.g. x*sigmoid(x) + 1 does not."""
    values: dict[str, np.ndarray] = {tensor: np.zeros(1)}
    with np.errstate(all="ignore"):
        for position in sorted(region):  # node order is topological
            node = index.node(position)
            args = [values[n] if n in values else np.asarray(index.constant(n), dtype=np.float64) for n in node.input if n]
            values[node.output[0]] = _ELEMENTWISE[node.op_type](node, *args)
    return bool(np.all(values[leaves] == 0))


_ELEMENTWISE = {
    "Mul": lambda node, a, b: a * b,
    "Add": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Div": lambda node, a, b: a / b,
    "Pow": lambda node, a, b: np.power(a, b),
    "Erf": lambda node, a: np.vectorize(math.erf)(a),
    "Tanh": lambda node, a: np.tanh(a),
    "Sigmoid": lambda node, a: 1.0 / (1.0 + np.exp(-a)),
    "HardSigmoid": lambda node, a: np.clip(attribute(node, "alpha", 0.2) * a + attribute(node, "beta", 0.5), 0.0, 1.0),
}


def _mark_head(index: GraphIndex, unit: Unit, weighted: set[int]) -> Unit:
    seen: set[str] = set()
    frontier = [index.node(unit.node).output[0]]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in index.outputs:
            return Unit(**{**unit.__dict__, "head": True})
        for position in index.consumers.get(name, []):
            if position in weighted and position != unit.node:
                continue
            frontier.extend(index.node(position).output)
    return unit


def kernel_rows(weights: np.ndarray, unit: Unit) -> np.ndarray:
    """Per output channel, its weights as a matrix [channels, fan_in_rows, k] (k=1 for dense)."""
    moved = np.moveaxis(weights, unit.weight_axis, 0)
    if moved.ndim == 2:
        return moved[:, :, None]
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def head_affine(index: GraphIndex, unit: Unit) -> tuple[np.ndarray, np.ndarray] | None:
    """(W [K, F], b [K]) of a dense head (Gemm or MatMul + Add/Sub/Mul by constants), else None."""
    if unit.op not in ("Gemm", "MatMul") or unit.bn is not None or unit.activation is not None:
        return None
    node = index.node(unit.node)
    weight = np.asarray(index.constant(unit.weight), dtype=np.float64)
    if weight.ndim != 2 or (unit.op == "Gemm" and int(attribute(node, "transA", 0))):
        return None
    matrix = weight if unit.weight_axis == 0 else weight.T  # [K, F]
    bias = np.zeros(matrix.shape[0])
    if unit.op == "Gemm":
        matrix = matrix * float(attribute(node, "alpha", 1.0))
        if unit.bias is not None:
            value = np.asarray(index.constant(unit.bias), dtype=np.float64).reshape(-1)
            if value.size not in (1, matrix.shape[0]):
                return None
            bias = bias + float(attribute(node, "beta", 1.0)) * value
    for affine in unit.affines:
        value = np.asarray(index.constant(affine.constant), dtype=np.float64).reshape(-1)
        if value.size not in (1, matrix.shape[0]):
            return None
        if affine.op == "Add":
            bias = bias + value
        elif affine.op == "Sub" and list(index.node(affine.node).input).index(affine.constant) == 1:
            bias = bias - value
        elif affine.op == "Mul":
            matrix, bias = matrix * value[:, None] if value.size > 1 else matrix * value, bias * value
        else:
            return None
    return matrix, bias
