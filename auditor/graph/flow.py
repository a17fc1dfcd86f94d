"""Where the model input's values flow: which tensors derive from them, through how many weighted
layers, how much of the input they read, and which reach an output without another weighted layer.

The graph check reads a backdoor that lives in extra nodes from these facts: a decision taken on
raw input values (no weighted layer between the input and the comparison) that switches an output
after the last weighted layer, or a thin path that reads a few input values and mixes into the
output beside the network's body. Shape arithmetic (`Shape`, `Size` and what is computed from them)
carries no input values and is not followed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import onnx

from auditor.graph.index import GraphIndex, attribute

# A layer of the network's body: it multiplies data by constant weights (or looks them up).
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "Gather", "ConvInteger",
                "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm", "Attention", "QAttention", "EmbedLayerNormalization",
                "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedConv", "FusedGemm", "FusedMatMul"}
CONTROL_OPS = {"If", "Loop", "Scan"}
# Ops whose output is a decision about their operands' values: a boolean or an index.
DECISION_OPS = {"Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "ArgMax", "ArgMin", "TopK"}
_SHAPE_OPS = {"Shape", "Size"}  # their outputs carry the input's shape, not its values
# Outputs that are quantization bookkeeping (a tensor's scale and zero point), not values to follow: every
# dynamically quantized layer rescales its output by its input's scale, a path around every weighted layer.
_BOOKKEEPING = {"DynamicQuantizeLinear": (1, 2)}
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass(frozen=True)
class Flow:
    """What one tensor derives from the model's input values.

    depth: the most weighted layers on a path from an input; weights: a bitmask of the weighted
    nodes among its ancestors; inputs: a bitmask of the graph inputs it reads; reach: at most
    what fraction of an input's elements it reads (Slice and Gather with constant indices
    narrow it)."""

    depth: int
    weights: int
    inputs: int
    reach: float


def picks(index: GraphIndex, node: onnx.NodeProto, dims: list[int]) -> dict[int, list[int]] | None:
    """The positions, per axis (counted from 0), that a Slice or a Gather with constant indices keeps of its data
    operand of dimensions `dims`; None when they cannot be told (computed indices, a zero step, an unknown axis)."""
    rank = len(dims)
    if node.op_type == "Gather":
        indices = index.constant(node.input[1]) if len(node.input) > 1 else None
        axis = int(attribute(node, "axis", 0))
        if indices is None or not -rank <= axis < rank or dims[axis] <= 0:
            return None
        axis %= rank
        return {axis: sorted({int(i) % dims[axis] for i in indices.reshape(-1).tolist()})}
    values = [index.constant(n) if n else None for n in node.input[1:5]]
    if len(values) < 2 or values[0] is None or values[1] is None:
        return None
    starts, ends = values[0].reshape(-1).tolist(), values[1].reshape(-1).tolist()
    axes = values[2].reshape(-1).tolist() if len(values) > 2 and values[2] is not None else list(range(len(starts)))
    steps = values[3].reshape(-1).tolist() if len(values) > 3 and values[3] is not None else [1] * len(starts)
    chosen: dict[int, list[int]] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        if not -rank <= axis < rank or step == 0 or dims[axis] <= 0:
            return None
        axis %= rank
        chosen[axis] = list(range(*slice(int(start), int(end), int(step)).indices(dims[axis])))
    return chosen


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The names `graph` (a subgraph, nested ones included) reads from the scopes around it."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        for name in node.input:
            if name and name not in local:
                read.add(name)
        for inner in subgraphs(node):
            read |= {name for name in outer_reads(inner) if name not in local}
        local.update(node.output)
    return read


def has_weighted(graph: onnx.GraphProto) -> bool:
    """Whether a subgraph holds a layer of the body (a control node that does computes the body)."""
    return any(node.op_type in WEIGHTED_OPS or any(has_weighted(g) for g in subgraphs(node)) for node in graph.node)


class GraphFlow:
    """The flow facts of every tensor in the main graph; built once, never mutates the model."""

    def __init__(self, index: GraphIndex, judged: set[str] | None = None) -> None:
        self.index = index
        graph = index.graph
        self.judged = judged if judged else {v.name for v in graph.output}  # the outputs a verdict is about
        self.implicit = {i: sorted(set().union(*(outer_reads(g) for g in subgraphs(n))))
                         for i, n in enumerate(graph.node) if subgraphs(n)}
        initializers = set(index.initializers)
        self.model_inputs = [v.name for v in graph.input if v.name not in initializers]
        self.flow: dict[str, Flow] = {}
        self.constant: set[str] = set(index.initializers) | set(index.constant_nodes)
        self.weighted: set[int] = set()
        for k, name in enumerate(self.model_inputs):
            self.flow[name] = Flow(0, 0, 1 << k, 1.0)
        for position, node in enumerate(graph.node):
            self._visit(position, node)

    def reads(self, position: int) -> list[str]:
        """Every tensor node `position` reads: its inputs and, for control flow, its bodies' outer reads."""
        node = self.index.graph.node[position]
        return [n for n in node.input if n] + self.implicit.get(position, [])

    def _visit(self, position: int, node: onnx.NodeProto) -> None:
        names = self.reads(position)
        if node.op_type in _SHAPE_OPS:
            return
        carried = [self.flow[n] for n in names if n in self.flow]
        if not carried:
            if node.op_type not in _RANDOM_OPS and all(n in self.constant for n in names):
                self.constant.update(o for o in node.output if o)
            return
        weighted = self._is_weighted(node, names)
        if weighted:
            self.weighted.add(position)
        depth = max(f.depth for f in carried) + int(weighted)
        weights = 0
        inputs = 0
        for f in carried:
            weights |= f.weights
            inputs |= f.inputs
        if weighted:
            weights |= 1 << position
        reach = min(1.0, sum(f.reach for f in carried))
        narrowed = self._narrowed(node)
        if narrowed is not None and len(carried) == 1 and node.input and node.input[0] in self.flow:
            reach = self.flow[node.input[0]].reach * narrowed
        skipped = _BOOKKEEPING.get(node.op_type, ())
        for k, name in enumerate(node.output):
            if name and k not in skipped:
                self.flow[name] = Flow(depth, weights, inputs, reach)

    def _is_weighted(self, node: onnx.NodeProto, names: list[str]) -> bool:
        if node.op_type in CONTROL_OPS:
            return any(has_weighted(g) for g in subgraphs(node))
        if node.op_type not in WEIGHTED_OPS:
            return False
        if node.op_type == "Gather":  # a lookup in a constant table (embeddings), not an index into data
            return bool(node.input) and node.input[0] in self.constant
        return any(n in self.constant for n in names)

    def _narrowed(self, node: onnx.NodeProto) -> float | None:
        """The fraction of its data operand's elements a Slice or Gather with constant indices keeps
        (None when it cannot be told: symbolic dimensions, computed indices)."""
        if node.op_type not in ("Slice", "Gather") or not node.input:
            return None
        dims = self.dims(node.input[0])
        chosen = None if dims is None else picks(self.index, node, dims)
        if chosen is None:
            return None
        return min(1.0, math.prod(len(kept) / dims[axis] for axis, kept in chosen.items()))

    def dims(self, name: str) -> list[int] | None:
        """The tensor's per-sample dimensions (the batch dimension reads as 1), when all are known."""
        shape = self.index.shape(name)
        if not shape:
            return None
        dims = [1, *shape[1:]]
        return None if any(d is None for d in dims) else dims

    @cached_property
    def tail(self) -> set[str]:
        """Tensors with a path to a judged output (the class scores) that passes through no weighted layer. Other
        outputs are left out: a recurrent model's new state mixes its old state in, by design."""
        graph = self.index.graph
        reached = set(self.judged)
        for position in range(len(graph.node) - 1, -1, -1):
            node = graph.node[position]
            if position in self.weighted or not any(o in reached for o in node.output if o):
                continue
            reached.update(self.reads(position))
        return reached

    def consumers(self, name: str) -> list[int]:
        """The nodes that read `name`, bodies of control flow included (they count as their node)."""
        found = list(self.index.consumers.get(name, []))
        found += [p for p, names in self.implicit.items() if name in names and p not in found]
        return sorted(found)

    def float_inputs(self) -> int:
        """A bitmask of the graph inputs with float values (the ones a trigger can be pasted into)."""
        floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
        mask = 0
        by_name = {v.name: v for v in self.index.graph.input}
        for k, name in enumerate(self.model_inputs):
            if by_name[name].type.tensor_type.elem_type in floats:
                mask |= 1 << k
        return mask
