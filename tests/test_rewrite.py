"""zero_channels on real graphs, checked with onnxruntime: exact zeros where asked, nothing else
changed, same logits as the original with those channels masked, and a deterministic proto."""

from __future__ import annotations

import json
from dataclasses import dataclass

import graphs
import numpy as np
import onnx
import pytest
from graphs import PATTERNS, Pattern
from onnx import numpy_helper

from auditor import rewrite, runtime
from auditor.graph import GraphIndex
from auditor.units import Unit, find_units
from auditor.version import __version__

ZEROED = [1, 5]
SOURCE_SHA = "ab" * 32


@dataclass
class Case:
    pattern: Pattern
    model: onnx.ModelProto
    before: bytes  # model.SerializeToString() before zero_channels
    units: list[Unit]  # prunable units, as api.repair passes them
    unit: Unit
    zeroed: dict[str, list[int]]
    result: rewrite.RewriteResult
    x: np.ndarray


def repair(model: onnx.ModelProto, units: list[Unit], zeroed: dict[str, list[int]]) -> rewrite.RewriteResult:
    meta = rewrite.provenance(__version__, SOURCE_SHA, zeroed, "sus")
    return rewrite.zero_channels(model, units, zeroed, meta)


@pytest.fixture(scope="module", params=PATTERNS, ids=lambda p: p.name)
def case(request, tmp_path_factory) -> Case:
    pattern = request.param
    if runtime.max_opset() < pattern.min_opset:
        pytest.skip(f"onnxruntime runs opset <= {runtime.max_opset()}, {pattern.name} needs {pattern.min_opset}")
    model = graphs.load(pattern, tmp_path_factory.mktemp(pattern.name))
    before = model.SerializeToString()
    units = [u for u in find_units(GraphIndex(model)) if u.prunable]
    (unit,) = [u for u in units if u.name == "unit"]
    zeroed = {"unit": list(ZEROED)}
    return Case(pattern, model, before, units, unit, zeroed, repair(model, units, zeroed), graphs.samples(pattern, count=4))


def downstream(model: onnx.ModelProto, original: onnx.ModelProto, tensor: str) -> str:
    """The tensor that the layer after `tensor` (in `original`) reads in `model`: `tensor` itself
    when the rewrite folded, the mask Mul's output when it masked."""
    consumer = next(n for n in original.graph.node if tensor in n.input)
    slot = list(consumer.input).index(tensor)
    return next(n for n in model.graph.node if n.name == consumer.name).input[slot]


def test_repaired_model_passes_the_checker(case: Case) -> None:
    onnx.checker.check_model(case.result.model, full_check=True)


def test_zeroed_channels_are_exactly_zero_and_the_others_unchanged(case: Case) -> None:
    unit = case.unit
    (original,) = graphs.run(case.model, case.x, [unit.output])
    (repaired,) = graphs.run(case.result.model, case.x, [downstream(case.result.model, case.model, unit.output)])
    channel_first = np.moveaxis(original, unit.axis, 0)
    assert all(np.abs(channel_first[c]).max() > 1e-3 for c in ZEROED), "test channels must be live in the original"
    got = np.moveaxis(repaired, unit.axis, 0)
    assert np.array_equal(got[ZEROED], np.zeros_like(got[ZEROED]))
    kept = [c for c in range(unit.channels) if c not in ZEROED]
    np.testing.assert_allclose(got[kept], channel_first[kept], rtol=1e-5, atol=1e-5)


def test_logits_equal_the_original_with_those_channels_masked(case: Case) -> None:
    masked = rewrite.with_mask_inputs(case.model, case.units)
    (want,) = graphs.run(masked, case.x, ["logits"], rewrite.mask_feed(case.units, case.zeroed))
    (got,) = graphs.run(case.result.model, case.x, ["logits"])
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-4), "zeroing two live channels must change the logits"


def test_fold_where_zero_maps_to_zero_else_mask(case: Case) -> None:
    assert case.result.how == {"unit": "fold" if case.pattern.fold else "mask"}
    added = len(case.result.model.graph.node) - len(case.model.graph.node)
    assert added == (0 if case.pattern.fold else 1)  # folding adds no node, masking one Mul


def test_input_model_is_not_mutated(case: Case) -> None:
    assert case.model.SerializeToString() == case.before


def test_zero_channels_is_deterministic(case: Case) -> None:
    again = repair(case.model, case.units, case.zeroed)
    assert again.model.SerializeToString(deterministic=True) == case.result.model.SerializeToString(deterministic=True)
    assert again.how == case.result.how


def test_provenance_metadata(case: Case) -> None:
    meta = {p.key: p.value for p in case.result.model.metadata_props}
    assert meta["auditor.version"] == __version__
    assert meta["auditor.source_sha256"] == SOURCE_SHA
    assert json.loads(meta["auditor.zeroed_channels"]) == {"unit": ZEROED}


def test_a_repaired_model_can_be_repaired_again(case: Case) -> None:
    """Auditing and repairing a repaired model (masks and copies already in it) stays valid."""
    first = case.result.model
    units = [u for u in find_units(GraphIndex(first)) if u.prunable]
    assert "unit" in {u.name for u in units}
    second = repair(first, units, {"unit": [2]}).model
    onnx.checker.check_model(second, full_check=True)
    gone = sorted([*ZEROED, 2])
    (before,) = graphs.run(case.model, case.x, [case.unit.output])
    (after,) = graphs.run(second, case.x, [downstream(second, case.model, case.unit.output)])
    before, after = np.moveaxis(before, case.unit.axis, 0), np.moveaxis(after, case.unit.axis, 0)
    kept = [c for c in range(case.unit.channels) if c not in gone]
    assert np.array_equal(after[gone], np.zeros_like(after[gone]))
    np.testing.assert_allclose(after[kept], before[kept], rtol=1e-5, atol=1e-5)
    masked = rewrite.with_mask_inputs(case.model, case.units)
    (want,) = graphs.run(masked, case.x, ["logits"], rewrite.mask_feed(case.units, {"unit": gone}))
    (got,) = graphs.run(second, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- specific patterns ---------------------------------------------------------------------


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _units(model: onnx.ModelProto) -> dict[str, Unit]:
    return {u.name: u for u in find_units(GraphIndex(model)) if u.prunable}


def test_shared_weight_is_copied_so_the_twin_is_unchanged() -> None:
    model = graphs.shared_weight()
    units = _units(model)
    result = repair(model, list(units.values()), {"unit": ZEROED})
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
    units = _units(model)
    result = repair(model, list(units.values()), {"unit": [0, 2], "twin": [3]})
    onnx.checker.check_model(result.model, full_check=True)
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
    units = _units(model)
    result = repair(model, list(units.values()), {"unit": ZEROED})
    assert result.how == {"unit": "fold"}
    for name in ("bn_scale", "bn_beta"):
        assert np.array_equal(_initializer(result.model, name)[ZEROED], [0.0, 0.0])
    np.testing.assert_array_equal(_initializer(result.model, "unit_w"), _initializer(model, "unit_w"))


def test_gemm_and_matmul_fold_slices_the_output_axis() -> None:
    """transB=0 Gemm and MatMul keep outputs on weight axis 1, transB=1 Gemm on axis 0."""
    for build, axis in ((graphs.gemm_trans_b0, 1), (graphs.gemm_trans_b1, 0), (graphs.matmul_tokens, 1)):
        model = build()
        result = repair(model, list(_units(model).values()), {"unit": ZEROED})
        before, after = _initializer(model, "unit_w"), _initializer(result.model, "unit_w")
        assert not np.moveaxis(after, axis, 0)[ZEROED].any()
        kept = [c for c in range(graphs.HIDDEN) if c not in ZEROED]
        np.testing.assert_array_equal(np.moveaxis(after, axis, 0)[kept], np.moveaxis(before, axis, 0)[kept])
        assert not _initializer(result.model, "unit_b")[ZEROED].any()


def test_repairing_a_repaired_model_keeps_metadata_keys_unique() -> None:
    """A second repair overwrites the auditor.* entries: duplicate metadata keys fail onnx.checker."""
    model = graphs.conv2d()
    first = repair(model, list(_units(model).values()), {"unit": [1]}).model
    second = repair(first, list(_units(first).values()), {"unit": [2]}).model
    onnx.checker.check_model(second)
    keys = [p.key for p in second.metadata_props]
    assert len(keys) == len(set(keys))
    assert json.loads({p.key: p.value for p in second.metadata_props}["auditor.zeroed_channels"]) == {"unit": [2]}


def test_nothing_to_zero_returns_an_equivalent_copy() -> None:
    model = graphs.conv2d()
    result = repair(model, list(_units(model).values()), {})
    assert result.how == {}
    assert list(result.model.graph.node) == list(model.graph.node)
    assert list(result.model.graph.initializer) == list(model.graph.initializer)


@pytest.mark.parametrize("build", [graphs.conv_sigmoid, graphs.conv2d], ids=["mask", "fold"])
def test_float16_model_is_repaired_and_masked_in_its_own_type(build) -> None:
    """Mask constants and mask inputs must meet a float16 unit as float16 (Mul binds one type)."""
    model = graphs.to_float16(build())
    units = list(_units(model).values())
    result = repair(model, units, {"unit": ZEROED})
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(5).normal(size=(3, 3, 6, 5)).astype(np.float16)
    masked = rewrite.with_mask_inputs(model, units)
    (want,) = graphs.run(masked, x, ["logits"], rewrite.mask_feed(units, {"unit": ZEROED}))
    (ones,) = graphs.run(masked, x, ["logits"], rewrite.mask_feed(units, {}))
    (got,) = graphs.run(result.model, x, ["logits"])
    (plain,) = graphs.run(model, x, ["logits"])
    assert got.dtype == want.dtype == np.float16
    np.testing.assert_array_equal(ones, plain)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not np.allclose(got.astype(np.float32), plain.astype(np.float32), atol=1e-3)


def _bounds_at_half_the_clean_max(case: Case, per_position: bool) -> dict[str, np.ndarray]:
    """Bounds at half of each channel's (or each position's) maximum on the case's samples."""
    (activation,) = graphs.run(case.model, case.x, [case.unit.output])
    peak = activation.max(axis=0)  # one sample's shape
    if not per_position:
        peak = np.moveaxis(peak, case.unit.axis, -1).reshape(-1, case.unit.channels).max(axis=0)
        peak = peak.reshape(rewrite.mask_shape(case.unit))
    return {"unit": (0.5 * peak).astype(np.float32)}


@pytest.mark.parametrize("per_position", [False, True], ids=["per-channel", "per-position"])
def test_bounds_cap_the_unit_and_match_the_guard_graph(case: Case, per_position: bool) -> None:
    bounds = _bounds_at_half_the_clean_max(case, per_position)
    meta = rewrite.provenance(__version__, SOURCE_SHA, case.zeroed, "sus", 0.5, (1, 0.25) if per_position else None)
    result = rewrite.zero_channels(case.model, case.units, case.zeroed, meta, bounds)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.how == {"unit": ("fold" if case.pattern.fold else "mask") + "+bound"}
    # the repaired graph computes what the guard measured: mask, then bound, as graph inputs
    guarded = rewrite.with_mask_inputs(case.model, case.units, bound=True)
    (want,) = graphs.run(guarded, case.x, ["logits"], rewrite.mask_feed(case.units, case.zeroed, bounds=bounds))
    (got,) = graphs.run(result.model, case.x, ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (unbounded,) = graphs.run(case.result.model, case.x, ["logits"])
    assert not np.allclose(got, unbounded, atol=1e-4), "a bound at half the clean maximum must change the logits"
    # the unit's output, as the next layer reads it, never exceeds the bound
    (capped,) = graphs.run(result.model, case.x, [downstream(result.model, case.model, case.unit.output)])
    assert (capped <= bounds["unit"] + 1e-6).all()
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert "0.5 x clean maximum per channel" in meta["auditor.activation_bound"]
    assert case.model.SerializeToString() == case.before


def test_bounds_of_infinity_reproduce_the_original(case: Case) -> None:
    guarded = rewrite.with_mask_inputs(case.model, case.units, bound=True)
    (got,) = graphs.run(guarded, case.x, ["logits"], rewrite.mask_feed(case.units, {}, bounds={}))
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    np.testing.assert_array_equal(got, plain)


@pytest.mark.parametrize("per_position", [False, True], ids=["per-channel", "per-position"])
def test_bounds_without_masks_match_the_masked_graph_with_nothing_zeroed(case: Case, per_position: bool) -> None:
    bounds = _bounds_at_half_the_clean_max(case, per_position)
    bare = rewrite.with_mask_inputs(case.model, case.units, bound=True, masks=False)
    assert not [i for i in bare.graph.input if i.name.startswith(rewrite.MASK_PREFIX)]
    muls = lambda m: sum(n.op_type == "Mul" for n in m.graph.node)  # noqa: E731
    assert muls(bare) == muls(case.model)
    (got,) = graphs.run(bare, case.x, ["logits"], rewrite.mask_feed(case.units, {}, bounds=bounds, masks=False))
    masked = rewrite.with_mask_inputs(case.model, case.units, bound=True)
    (want,) = graphs.run(masked, case.x, ["logits"], rewrite.mask_feed(case.units, {}, bounds=bounds))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="without mask inputs"):
        rewrite.mask_feed(case.units, case.zeroed, bounds=bounds, masks=False)
    # neither masks nor bounds: nothing is inserted, and the graph is the original's
    untouched = rewrite.with_mask_inputs(case.model, case.units, masks=False)
    assert [n.op_type for n in untouched.graph.node] == [n.op_type for n in case.model.graph.node]
    (same,) = graphs.run(untouched, case.x, ["logits"], {})
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    np.testing.assert_array_equal(same, plain)


def test_dilate_takes_the_largest_value_nearby_but_never_across_channels() -> None:
    from auditor.guard import dilate

    values = np.zeros((2, 5, 5))
    values[0, 2, 2] = 1.0
    values[1, 0, 0] = 2.0
    near = dilate(values, 1, channel_axis=0)
    assert near[0, 1:4, 1:4].min() == 1.0 and near[0, 0, 0] == 0.0 and near[0, 4, 4] == 0.0
    assert near[1, :2, :2].min() == 2.0 and near[1, 2, 2] == 0.0  # channel 1 never sees channel 0
    np.testing.assert_array_equal(dilate(values, 0, channel_axis=0), values)


@pytest.mark.parametrize("channel_axis", [None, 0, -3])
def test_dilate_equals_the_maximum_over_every_window(channel_axis: int | None) -> None:
    from auditor.guard import dilate

    values = np.random.default_rng(3).normal(size=(3, 1, 6, 7))
    radius = 2
    want = np.empty_like(values)
    for index in np.ndindex(values.shape):
        window = tuple(
            slice(i, i + 1) if channel_axis is not None and axis == channel_axis % values.ndim
            else slice(max(0, i - radius), i + radius + 1)
            for axis, i in enumerate(index))
        want[index] = values[window].max()
    np.testing.assert_array_equal(dilate(values, radius, channel_axis), want)


def test_input_clamp_is_applied_first_and_matches_the_guard_graph(case: Case) -> None:
    (name,) = [i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}]
    x = case.x.astype(np.float32)
    low, high = np.quantile(x, 0.2, axis=0), np.quantile(x, 0.8, axis=0)  # tighter than the samples: must bite
    bounds = {rewrite.input_key(name): np.stack([low, high]).astype(np.float32)}
    meta = rewrite.provenance(__version__, SOURCE_SHA, {}, "sus", input_radius=0)
    result = rewrite.zero_channels(case.model, case.units, {}, meta, bounds)
    onnx.checker.check_model(result.model, full_check=True)
    assert [n.op_type for n in result.model.graph.node[:2]] == ["Min", "Max"]
    (got,) = graphs.run(result.model, x, ["logits"])
    (want,) = graphs.run(case.model, np.clip(x, low, high).astype(np.float32), ["logits"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    guarded = rewrite.with_mask_inputs(case.model, case.units, bound=True, clamp=(name,))
    feed = {**rewrite.mask_feed(case.units, {}, bounds={}), **rewrite.clamp_feed((name,), bounds)}
    (guard_view,) = graphs.run(guarded, x, ["logits"], feed)
    np.testing.assert_allclose(got, guard_view, rtol=1e-5, atol=1e-5)
    open_feed = {**rewrite.mask_feed(case.units, {}, bounds={}), **rewrite.clamp_feed((name,), {})}
    (unclamped,) = graphs.run(guarded, x, ["logits"], open_feed)
    (plain,) = graphs.run(case.model, x, ["logits"])
    np.testing.assert_array_equal(unclamped, plain)
    assert "inputs clamped" in {p.key: p.value for p in result.model.metadata_props}["auditor.activation_bound"]
    assert case.model.SerializeToString() == case.before
