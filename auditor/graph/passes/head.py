"""Pass: add an affine correction to the classifier head's output (head unlearning)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import fresh, weight_types
from auditor.graph.units import Unit


def correct_head(model: onnx.ModelProto, head: Unit, features: str, matrix: np.ndarray | None = None,
                 bias: np.ndarray | None = None, inputs: tuple[str, str] | None = None) -> PassResult:
    """A copy of `model` whose head output gains features @ matrix.T + bias ([K, F], [K]): the node
    that wrote the head output writes a fresh tensor, and an Add writes the original name, so every
    reader (and a graph output of that name) sees the corrected scores. With `inputs`, the weight
    [F, K] and the bias [K] are graph inputs of those names instead (the guard feeds them).
    Changes: head unit -> "correction"."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n for node in out.graph.node for n in (*node.input, *node.output)}
    taken |= {t.name for t in out.graph.initializer} | {v.name for v in out.graph.input}
    node_names = {node.name for node in out.graph.node}
    producer = next(i for i, node in enumerate(out.graph.node) if head.output in node.output)
    elem = weight_types(out).get(head.weight, onnx.TensorProto.FLOAT)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    raw, product, shift = (fresh(f"{head.output}__auditor_{tag}", taken) for tag in ("raw", "product", "shift"))
    if inputs is not None:
        weight_name, bias_name = inputs
        out.graph.input.extend([helper.make_tensor_value_info(weight_name, elem, None),
                                helper.make_tensor_value_info(bias_name, elem, None)])
    else:
        weight_name, bias_name = fresh("__auditor_head_weight", taken), fresh("__auditor_head_bias", taken)
        out.graph.initializer.extend([numpy_helper.from_array(np.asarray(matrix, dtype).T.copy(), weight_name),
                                      numpy_helper.from_array(np.asarray(bias, dtype), bias_name)])
    node = out.graph.node[producer]
    node.output[list(node.output).index(head.output)] = raw
    added = [helper.make_node("MatMul", [features, weight_name], [product], name=fresh("__auditor_head_matmul", node_names)),
             helper.make_node("Add", [product, bias_name], [shift], name=fresh("__auditor_head_bias_add", node_names)),
             helper.make_node("Add", [raw, shift], [head.output], name=fresh("__auditor_head_add", node_names))]
    nodes = [copy.deepcopy(n) for n in out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend([*nodes[: producer + 1], *added, *nodes[producer + 1 :]])
    return ensure(model, PassResult(out, {head.name: "correction"}), "correct_head")
