"""The clamp_inputs pass on real graphs, checked with onnxruntime: the input is clamped before any
node reads it, as the guard's instrumented graph clamps it when fed the same range."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
from pass_cases import PassCase

from auditor.graph.passes.clamp import clamp_inputs
from auditor.graph.passes.instruments import clamp_feed, instrument, mask_feed


def _tight(case: PassCase) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A range tighter than the case's samples (it must bite), as clamp_inputs takes it."""
    x = case.x.astype(np.float32)
    low, high = np.quantile(x, 0.2, axis=0), np.quantile(x, 0.8, axis=0)
    return low, high, {case.input: np.stack([low, high]).astype(np.float32)}


def test_the_pass_leaves_its_input_alone_and_names_what_it_did(pass_case: PassCase) -> None:
    _, _, clamps = _tight(pass_case)
    before = pass_case.model.SerializeToString()
    result = clamp_inputs(pass_case.model, clamps)
    assert pass_case.model.SerializeToString() == before == pass_case.before
    assert result.model is not pass_case.model and len(result.model.graph.node) == len(pass_case.model.graph.node) + 2
    assert result.changes == {pass_case.input: "clamp"}


def test_input_clamp_is_applied_first_and_matches_the_guard_graph(pass_case: PassCase) -> None:
    case = pass_case
    name, x = case.input, case.x.astype(np.float32)
    low, high, clamps = _tight(case)
    result = clamp_inputs(case.model, clamps)
    onnx.checker.check_model(result.model, full_check=True)
    assert [n.op_type for n in result.model.graph.node[:2]] == ["Min", "Max"]
    assert all(name not in node.input for node in result.model.graph.node[2:]), "only the clamp may read the raw input"
    (got,) = graphs.run(result.model, x, ["logits"])
    (want,) = graphs.run(case.model, np.clip(x, low, high).astype(np.float32), ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (plain,) = graphs.run(case.model, x, ["logits"])
    assert not np.allclose(got, plain, atol=1e-4), "a range tighter than the samples must change the logits"
    guarded = instrument(case.model, case.units, bound=True, clamp=(name,)).model
    feed = {**mask_feed(case.units, {}, caps={}), **clamp_feed((name,), clamps)}
    (guard_view,) = graphs.run(guarded, x, ["logits"], feed)
    np.testing.assert_allclose(got, guard_view, rtol=1e-5, atol=1e-5)
    open_feed = {**mask_feed(case.units, {}, caps={}), **clamp_feed((name,), {})}
    (unclamped,) = graphs.run(guarded, x, ["logits"], open_feed)
    np.testing.assert_array_equal(unclamped, plain)
    assert case.model.SerializeToString() == case.before


def test_the_clamp_composes_after_zeroing(pass_case: PassCase) -> None:
    """As the repair builds it: zero_and_cap, then clamp_inputs on its result; the two together
    compute what the guard graph computes fed both the masks and the clamp."""
    case = pass_case
    _, _, clamps = _tight(case)
    both = clamp_inputs(case.result.model, clamps)
    onnx.checker.check_model(both.model, full_check=True)
    guarded = instrument(case.model, case.units, bound=True, clamp=(case.input,)).model
    feed = {**mask_feed(case.units, case.zeroed, caps={}), **clamp_feed((case.input,), clamps)}
    (want,) = graphs.run(guarded, case.x, ["logits"], feed)
    (got,) = graphs.run(both.model, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_no_clamp_returns_an_equivalent_copy() -> None:
    model = graphs.conv2d()
    result = clamp_inputs(model, {})
    assert result.changes == {} and not result.modified
    assert result.model is not model and result.model.SerializeToString() == model.SerializeToString()
