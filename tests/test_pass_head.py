"""The correct_head pass on real graphs under onnxruntime: the head's scores gain exactly
features @ M.T + b, as constants or as graph inputs the guard feeds."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
from pass_cases import PassCase

from auditor.graph.index import GraphIndex
from auditor.graph.passes.edit import reads
from auditor.graph.passes.head import correct_head
from auditor.graph.passes.instruments import HEAD_INPUTS
from auditor.graph.units import Unit, find_units, head_affine


def _head(model: onnx.ModelProto) -> tuple[Unit, onnx.NodeProto]:
    index = GraphIndex(model)
    (head,) = [u for u in find_units(index) if u.head]
    return head, index.node(head.node)


def _correction(model: onnx.ModelProto, head: Unit, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    matrix, _ = head_affine(GraphIndex(model), head)  # [K, F]
    rng = np.random.default_rng(seed)
    return rng.normal(size=matrix.shape).astype(np.float32), rng.normal(size=matrix.shape[0]).astype(np.float32)


def test_the_pass_leaves_its_input_alone_and_names_what_it_did(pass_case: PassCase) -> None:
    case = pass_case
    head, node = _head(case.model)
    matrix, bias = _correction(case.model, head)
    before = case.model.SerializeToString()
    result = correct_head(case.model, head, reads(case.model, node), matrix, bias)
    assert case.model.SerializeToString() == before == case.before
    assert result.model is not case.model and len(result.model.graph.node) == len(case.model.graph.node) + 3
    assert result.changes == {head.name: "correction"}


def test_the_correction_adds_exactly_the_affine_term_after_zeroing(pass_case: PassCase) -> None:
    """As the repair builds it: on the zeroed model, reading what the head reads there."""
    case = pass_case
    head, node = _head(case.model)
    matrix, bias = _correction(case.model, head)
    features = reads(case.result.model, node)
    corrected = correct_head(case.result.model, head, features, matrix, bias).model
    onnx.checker.check_model(corrected, full_check=True)
    scores, seen = graphs.run(case.result.model, case.x, ["logits", features])
    (got,) = graphs.run(corrected, case.x, ["logits"])
    np.testing.assert_allclose(got, scores + seen @ matrix.T + bias, rtol=1e-5, atol=1e-4)
    assert [o.name for o in corrected.graph.output] == ["logits"]  # readers and the graph output see the corrected scores


def test_a_fed_correction_computes_what_the_written_one_does(pass_case: PassCase) -> None:
    """With `inputs`, the weight [F, K] and bias [K] are graph inputs: zeros reproduce the model to
    the bit, the correction fed gives the scores the written constants give."""
    case = pass_case
    head, node = _head(case.model)
    matrix, bias = _correction(case.model, head)
    features = reads(case.model, node)
    fed = correct_head(case.model, head, features, inputs=HEAD_INPUTS)
    assert fed.changes == {head.name: "correction"}
    assert [i.name for i in fed.model.graph.input][-2:] == list(HEAD_INPUTS)
    written = correct_head(case.model, head, features, matrix, bias).model
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    zeros = {HEAD_INPUTS[0]: np.zeros(matrix.T.shape, np.float32), HEAD_INPUTS[1]: np.zeros(bias.shape, np.float32)}
    (neutral,) = graphs.run(fed.model, case.x, ["logits"], zeros)
    np.testing.assert_array_equal(neutral, plain)
    (got,) = graphs.run(fed.model, case.x, ["logits"], {HEAD_INPUTS[0]: matrix.T.copy(), HEAD_INPUTS[1]: bias})
    (want,) = graphs.run(written, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_float16_head_is_corrected_in_its_own_type() -> None:
    model = graphs.to_float16(graphs.conv2d())
    head, node = _head(model)
    matrix, bias = _correction(model, head)
    features = reads(model, node)
    corrected = correct_head(model, head, features, matrix, bias).model
    onnx.checker.check_model(corrected, full_check=True)
    added = {t.name: t.data_type for t in corrected.graph.initializer}.items() - {t.name: t.data_type for t in model.graph.initializer}.items()
    assert {kind for _, kind in added} == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(5).normal(size=(3, 3, 6, 5)).astype(np.float16)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)  # graphs.run exposes tensors as float32: this one is float16
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT16, None))
    scores, seen = graphs.run(exposed, x, ["logits", features])
    (got,) = graphs.run(corrected, x, ["logits"])
    assert got.dtype == np.float16
    want = scores.astype(np.float32) + seen.astype(np.float32) @ matrix.astype(np.float16).astype(np.float32).T + bias.astype(np.float16)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=2e-2)
