"""The head's reachable-margin statistic: the optimiser against bounds, the head's affine map
against onnxruntime, and a planted shortcut class standing out."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from auditor.detect import margin
from auditor.graph.index import GraphIndex
from auditor.graph.units import find_units, head_affine
from auditor.settings import Settings

FEATURES, CLASSES = 6, 4
STEPS = Settings().margin.steps


@pytest.mark.parametrize("seed", range(5))
def test_reachable_margins_lie_between_a_grid_search_and_an_upper_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix, bias = rng.normal(size=(CLASSES, 3)), rng.normal(size=CLASSES)
    low, high = np.zeros(3), rng.uniform(0.5, 2.0, size=3)
    got = margin.reachable_margins(matrix, bias, low, high, STEPS)
    assert (margin.reachable_margins(matrix, bias, low, high, 1) <= got).all()  # more ascent steps only ever find more
    grid = np.array(list(itertools.product(*[np.linspace(lo, hi, 21) for lo, hi in zip(low, high)])))
    logits = grid @ matrix.T + bias
    for k in range(CLASSES):
        others = np.delete(logits, k, axis=1)
        searched = (logits[:, k] - others.max(axis=1)).max()
        # each rival alone: a linear function, maximised at a corner of the box
        upper = min(
            float(np.sum(np.where(matrix[k] > matrix[j], (matrix[k] - matrix[j]) * high, (matrix[k] - matrix[j]) * low))
                  + bias[k] - bias[j])
            for j in range(CLASSES) if j != k
        )
        assert searched - 1e-6 <= got[k] <= upper + 1e-9


def test_a_planted_shortcut_class_stands_out() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(0, 0.3, size=(10, 32))
    bias = np.zeros(10)
    low, high = np.zeros(32), np.ones(32)
    plain = margin.reachable_margins(matrix, bias, low, high, STEPS)
    shortcut = matrix.copy()
    shortcut[3, :4] += 3.0  # four features that push class 3 only, as backdoor units do
    planted = margin.reachable_margins(shortcut, bias, low, high, STEPS)
    assert int(np.argmax(planted)) == 3
    z = lambda m: (m.max() - np.median(m)) / (1.4826 * np.median(np.abs(m - np.median(m))))  # noqa: E731
    assert z(planted) > z(plain) + 2.0


def _head_model(kind: str) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
    bias = rng.normal(size=CLASSES).astype(np.float32)
    if kind == "gemm_transB":
        inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")]
        nodes = [helper.make_node("Gemm", ["h", "W", "b"], ["logits"], transB=1, alpha=0.5, beta=2.0, name="head")]
    elif kind == "gemm":
        inits = [numpy_helper.from_array(weight.T.copy(), "W"), numpy_helper.from_array(bias, "b")]
        nodes = [helper.make_node("Gemm", ["h", "W", "b"], ["logits"], name="head")]
    else:  # MatMul + Add, as tf2onnx and skl2onnx write it
        inits = [numpy_helper.from_array(weight.T.copy(), "W"), numpy_helper.from_array(bias, "b")]
        nodes = [helper.make_node("MatMul", ["h", "W"], ["mm"], name="head"), helper.make_node("Add", ["mm", "b"], ["logits"])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", FEATURES])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("kind", ["gemm_transB", "gemm", "matmul_add"])
def test_head_affine_matches_onnxruntime(kind: str) -> None:
    model = _head_model(kind)
    index = GraphIndex(model)
    (head,) = [u for u in find_units(index) if u.head]
    matrix, bias = head_affine(index, head)
    h = np.random.default_rng(2).normal(size=(5, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(["logits"], {"h": h})
    np.testing.assert_allclose(h @ matrix.T + bias, want, rtol=1e-5, atol=1e-5)
    found = margin.margin(index, head, np.zeros(FEATURES), np.ones(FEATURES), STEPS)
    assert found is not None and found.margins.shape == (CLASSES,) and 0 <= found.target < CLASSES
    np.testing.assert_array_equal(found.margins, margin.reachable_margins(matrix, bias, np.zeros(FEATURES), np.ones(FEATURES), STEPS))
    assert found.target == int(np.argmax(found.margins))
    assert margin.margin(index, head, np.zeros(FEATURES + 1), np.ones(FEATURES + 1), STEPS) is None  # a range of another width
