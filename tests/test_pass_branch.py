"""The cut_branch pass: replaces the node where a branch meets the body by what the body computes there, inlines
an If's taken branch, removes what no output needs, and never touches its input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from auditor.graph.passes.branch import Cut, cut_branch


def _graph(merge: onnx.NodeProto, extra: list[onnx.NodeProto]) -> onnx.ModelProto:
    """x -> Relu -> body; x -> ReduceMax -> Greater(0.5) -> on; `merge` writes y."""
    nodes = [helper.make_node("Relu", ["x"], ["body"], name="body_relu"),
             helper.make_node("ReduceMax", ["x"], ["peak"], name="peak", axes=[1], keepdims=1),
             helper.make_node("Greater", ["peak", "limit"], ["on"], name="test"), *extra, merge]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(np.float32(0.5), "limit"),
                               numpy_helper.from_array(np.full((1, 3), 9.0, np.float32), "boost")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


X = np.array([[0.1, -0.2, 0.3], [0.9, 0.0, -1.0]], np.float32)  # the second row fires the test


def test_a_where_is_replaced_by_the_operand_kept_and_the_branch_removed() -> None:
    model = _graph(helper.make_node("Where", ["on", "boosted", "body"], ["y"], name="switch"),
                   [helper.make_node("Add", ["body", "boost"], ["boosted"], name="add_boost")])
    before = model.SerializeToString()
    result = cut_branch(model, Cut("y", ("body",)))
    assert model.SerializeToString() == before
    assert list(result.changes) == ["switch"] and "replaced by body" in result.changes["switch"]
    names = {n.name for n in result.model.graph.node}
    assert names.isdisjoint({"switch", "test", "peak", "add_boost"}) and "body_relu" in names
    assert [t.name for t in result.model.graph.initializer] == []  # limit and boost: nothing reads them any more
    np.testing.assert_array_equal(_run(result.model, X), np.maximum(X, 0))
    onnx.checker.check_model(result.model)


def test_an_if_is_replaced_by_its_taken_branch_inlined() -> None:
    then = helper.make_graph([helper.make_node("Add", ["body", "boost"], ["t"], name="then_add")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["body"], ["e"], name="else_neg")], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    extra = [helper.make_node("ReduceMin", ["on_f"], ["on_all"], name="all", keepdims=0),
             helper.make_node("Cast", ["on"], ["on_f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Cast", ["on_all"], ["cond"], name="cond", to=TensorProto.BOOL)]
    model = _graph(helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other),
                   [extra[1], extra[0], extra[2]])
    result = cut_branch(model, Cut("y", branch="else_branch"))
    assert not any(n.op_type == "If" for n in result.model.graph.node)
    np.testing.assert_array_equal(_run(result.model, X), -np.maximum(X, 0))


def test_a_cut_that_does_not_fit_its_node_is_refused() -> None:
    model = _graph(helper.make_node("Where", ["on", "body", "body"], ["y"], name="switch"), [])
    with pytest.raises(ValueError, match="no node writes"):
        cut_branch(model, Cut("nowhere", ("body",)))
    with pytest.raises(ValueError, match="only an If"):
        cut_branch(model, Cut("y", branch="then_branch"))
