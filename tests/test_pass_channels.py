"""The zero_and_cap pass on real graphs, checked with onnxruntime: exact zeros where asked, nothing
else changed, the same logits as the guard's instrumented graph fed those masks and caps, and a
deterministic proto that leaves its input alone."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pass_cases import ZEROED, PassCase, downstream, half_the_clean_max, units_of

from auditor.graph.passes.channels import zero_and_cap
from auditor.graph.passes.instruments import instrument, mask_feed


def test_the_pass_leaves_its_input_alone_and_names_what_it_did(pass_case: PassCase) -> None:
    """Zeroing and capping together: the input model's bytes are the same after the pass, the
    result is a new model, and `changes` names the unit and both things done to it."""
    caps = half_the_clean_max(pass_case, per_position=False)
    before = pass_case.model.SerializeToString()
    result = zero_and_cap(pass_case.model, pass_case.units, pass_case.zeroed, caps)
    assert pass_case.model.SerializeToString() == before == pass_case.before
    assert result.model is not pass_case.model and result.model.SerializeToString() != before
    assert result.changes == {"unit": ("fold" if pass_case.pattern.fold else "mask") + "+bound"}
    assert result.modified


def test_repaired_model_passes_the_checker(pass_case: PassCase) -> None:
    onnx.checker.check_model(pass_case.result.model, full_check=True)


def test_zeroed_channels_are_exactly_zero_and_the_others_unchanged(pass_case: PassCase) -> None:
    case, unit = pass_case, pass_case.unit
    (original,) = graphs.run(case.model, case.x, [unit.output])
    (repaired,) = graphs.run(case.result.model, case.x, [downstream(case.result.model, case.model, unit.output)])
    channel_first = np.moveaxis(original, unit.axis, 0)
    assert all(np.abs(channel_first[c]).max() > 1e-3 for c in ZEROED), "test channels must be live in the original"
    got = np.moveaxis(repaired, unit.axis, 0)
    assert np.array_equal(got[ZEROED], np.zeros_like(got[ZEROED]))
    kept = [c for c in range(unit.channels) if c not in ZEROED]
    np.testing.assert_allclose(got[kept], channel_first[kept], rtol=1e-5, atol=1e-5)


def test_logits_equal_the_original_with_those_channels_masked(pass_case: PassCase) -> None:
    case = pass_case
    masked = instrument(case.model, case.units).model
    (want,) = graphs.run(masked, case.x, ["logits"], mask_feed(case.units, case.zeroed))
    (got,) = graphs.run(case.result.model, case.x, ["logits"])
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-4), "zeroing two live channels must change the logits"


def test_fold_where_zero_maps_to_zero_else_mask(pass_case: PassCase) -> None:
    case = pass_case
    assert case.result.changes == {"unit": "fold" if case.pattern.fold else "mask"}
    added = len(case.result.model.graph.node) - len(case.model.graph.node)
    assert added == (0 if case.pattern.fold else 1)  # folding adds no node, masking one Mul


def test_zero_and_cap_is_deterministic(pass_case: PassCase) -> None:
    case = pass_case
    again = zero_and_cap(case.model, case.units, case.zeroed)
    assert again.model.SerializeToString(deterministic=True) == case.result.model.SerializeToString(deterministic=True)
    assert again.changes == case.result.changes


def test_a_repaired_model_can_be_repaired_again(pass_case: PassCase) -> None:
    """Auditing and repairing a repaired model (masks and copies already in it) stays valid."""
    case = pass_case
    first = case.result.model
    units = list(units_of(first).values())
    assert "unit" in {u.name for u in units}
    second = zero_and_cap(first, units, {"unit": [2]}).model
    onnx.checker.check_model(second, full_check=True)
    gone = sorted([*ZEROED, 2])
    (before,) = graphs.run(case.model, case.x, [case.unit.output])
    (after,) = graphs.run(second, case.x, [downstream(second, case.model, case.unit.output)])
    before, after = np.moveaxis(before, case.unit.axis, 0), np.moveaxis(after, case.unit.axis, 0)
    kept = [c for c in range(case.unit.channels) if c not in gone]
    assert np.array_equal(after[gone], np.zeros_like(after[gone]))
    np.testing.assert_allclose(after[kept], before[kept], rtol=1e-5, atol=1e-5)
    masked = instrument(case.model, case.units).model
    (want,) = graphs.run(masked, case.x, ["logits"], mask_feed(case.units, {"unit": gone}))
    (got,) = graphs.run(second, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_position", [False, True], ids=["per-channel", "per-position"])
def test_caps_bound_the_unit_and_match_the_guard_graph(pass_case: PassCase, per_position: bool) -> None:
    case = pass_case
    caps = half_the_clean_max(case, per_position)
    result = zero_and_cap(case.model, case.units, case.zeroed, caps)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.changes == {"unit": ("fold" if case.pattern.fold else "mask") + "+bound"}
    # the repaired graph computes what the guard measured: mask, then cap, as graph inputs
    guarded = instrument(case.model, case.units, bound=True).model
    (want,) = graphs.run(guarded, case.x, ["logits"], mask_feed(case.units, case.zeroed, caps=caps))
    (got,) = graphs.run(result.model, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (uncapped,) = graphs.run(case.result.model, case.x, ["logits"])
    assert not np.allclose(got, uncapped, atol=1e-4), "a cap at half the clean maximum must change the logits"
    # the unit's output, as the next layer reads it, never exceeds the cap
    (capped,) = graphs.run(result.model, case.x, [downstream(result.model, case.model, case.unit.output)])
    assert (capped <= caps["unit"] + 1e-6).all()
    assert case.model.SerializeToString() == case.before


def test_caps_alone_are_a_bound_without_zeroing() -> None:
    """Nothing zeroed, one unit capped: the change is "bound" and the unit's zero channels stay live."""
    model = graphs.conv2d()
    units = list(units_of(model).values())
    x = np.random.default_rng(4).normal(size=(3, 3, 6, 5)).astype(np.float32)
    (activation,) = graphs.run(model, x, ["unit_out"])
    cap = (0.5 * activation.max(axis=(0, 2, 3))).astype(np.float32).reshape(-1, 1, 1)
    result = zero_and_cap(model, units, {}, {"unit": cap})
    assert result.changes == {"unit": "bound"}
    (got,) = graphs.run(result.model, x, ["logits"])
    (want,) = graphs.run(instrument(model, units, bound=True, masks=False).model, x, ["logits"],
                         mask_feed(units, {}, caps={"unit": cap}, masks=False))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_infinite_cap_writes_no_node() -> None:
    """A unit whose every channel's cap was refused (+inf) is left as it is: no Min(x, +inf) in the graph."""
    model = graphs.conv2d()
    units = list(units_of(model).values())
    cap = np.full((units[0].channels, 1, 1), np.inf, np.float32)
    result = zero_and_cap(model, units, {}, {"unit": cap})
    assert result.changes == {}
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]


# -- specific patterns ---------------------------------------------------------------------


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def test_shared_weight_is_copied_so_the_twin_is_unchanged() -> None:
    model = graphs.shared_weight()
    result = zero_and_cap(model, list(units_of(model).values()), {"unit": ZEROED})
    x = np.random.default_rng(1).normal(size=(3, 3, 6, 5)).astype(np.float32)
    (twin_before,) = graphs.run(model, x, ["twin_out"])
    unit_after, twin_after = graphs.run(result.model, x, ["unit_out", "twin_out"])
    assert np.array_equal(twin_after, twin_before)
    assert np.array_equal(unit_after[:, ZEROED], np.zeros_like(unit_after[:, ZEROED]))
    twin_weight = _node(result.model, "twin").input[1]
    assert twin_weight == "unit_w"
    np.testing.assert_array_equal(_initializer(result.model, twin_weight), _initializer(model, "unit_w"))
    assert _node(result.model, "unit").input[1] != "unit_w"


def test_shared_weight_zeroed_in_both_units_at_different_channels() -> None:
    model = graphs.shared_weight()
    result = zero_and_cap(model, list(units_of(model).values()), {"unit": [0, 2], "twin": [3]})
    onnx.checker.check_model(result.model, full_check=True)
    assert result.changes == {"unit": "fold", "twin": "fold"}
    x = np.random.default_rng(2).normal(size=(3, 3, 6, 5)).astype(np.float32)
    unit_before, twin_before = graphs.run(model, x, ["unit_out", "twin_out"])
    unit_after, twin_after = graphs.run(result.model, x, ["unit_out", "twin_out"])
    for after, before, gone in ((unit_after, unit_before, [0, 2]), (twin_after, twin_before, [3])):
        kept = [c for c in range(graphs.HIDDEN) if c not in gone]
        assert np.array_equal(after[:, gone], np.zeros_like(after[:, gone]))
        np.testing.assert_allclose(after[:, kept], before[:, kept], rtol=1e-5, atol=1e-5)
    used = {name for node in result.model.graph.node for name in node.input}
    assert all(t.name in used for t in result.model.graph.initializer), "no initializer may be left unused"


def test_batchnorm_fold_zeroes_gamma_and_beta_and_keeps_the_kernel() -> None:
    model = graphs.conv_bn_relu()
    result = zero_and_cap(model, list(units_of(model).values()), {"unit": ZEROED})
    assert result.changes == {"unit": "fold"}
    for name in ("bn_scale", "bn_beta"):
        assert np.array_equal(_initializer(result.model, name)[ZEROED], [0.0, 0.0])
    np.testing.assert_array_equal(_initializer(result.model, "unit_w"), _initializer(model, "unit_w"))


def test_gemm_and_matmul_fold_slices_the_output_axis() -> None:
    """transB=0 Gemm and MatMul keep outputs on weight axis 1, transB=1 Gemm on axis 0."""
    for build, axis in ((graphs.gemm_trans_b0, 1), (graphs.gemm_trans_b1, 0), (graphs.matmul_tokens, 1)):
        model = build()
        result = zero_and_cap(model, list(units_of(model).values()), {"unit": ZEROED})
        before, after = _initializer(model, "unit_w"), _initializer(result.model, "unit_w")
        assert not np.moveaxis(after, axis, 0)[ZEROED].any()
        kept = [c for c in range(graphs.HIDDEN) if c not in ZEROED]
        np.testing.assert_array_equal(np.moveaxis(after, axis, 0)[kept], np.moveaxis(before, axis, 0)[kept])
        assert not _initializer(result.model, "unit_b")[ZEROED].any()


def test_nothing_to_zero_returns_an_equivalent_copy() -> None:
    model = graphs.conv2d()
    result = zero_and_cap(model, list(units_of(model).values()), {})
    assert result.changes == {} and not result.modified
    assert result.model is not model
    assert list(result.model.graph.node) == list(model.graph.node)
    assert list(result.model.graph.initializer) == list(model.graph.initializer)


@pytest.mark.parametrize("build", [graphs.conv_sigmoid, graphs.conv2d], ids=["mask", "fold"])
def test_float16_model_is_repaired_and_masked_in_its_own_type(build) -> None:
    """Mask constants and mask inputs must meet a float16 unit as float16 (Mul binds one type)."""
    model = graphs.to_float16(build())
    units = list(units_of(model).values())
    result = zero_and_cap(model, units, {"unit": ZEROED})
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(5).normal(size=(3, 3, 6, 5)).astype(np.float16)
    masked = instrument(model, units).model
    (want,) = graphs.run(masked, x, ["logits"], mask_feed(units, {"unit": ZEROED}))
    (ones,) = graphs.run(masked, x, ["logits"], mask_feed(units, {}))
    (got,) = graphs.run(result.model, x, ["logits"])
    (plain,) = graphs.run(model, x, ["logits"])
    assert got.dtype == want.dtype == np.float16
    np.testing.assert_array_equal(ones, plain)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not np.allclose(got.astype(np.float32), plain.astype(np.float32), atol=1e-3)
