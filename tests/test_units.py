"""find_units on real graphs: the right layer, channel count, activation, BN, channel axis, head."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import PATTERNS, Pattern

from auditor.graph.index import GraphIndex
from auditor.graph.units import Unit, find_units
from auditor.io import runtime

# output-channel axis of the weight array, by op (Gemm depends on transB)
_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1, "gemm_trans_b0": 1, "gemm_trans_b1": 0}


def _skip_unsupported(pattern: Pattern) -> None:
    supported = runtime.max_opset()
    if supported < pattern.min_opset:
        pytest.skip(f"onnxruntime {ort.__version__} runs opset <= {supported}; {pattern.name} needs {pattern.min_opset}")


def by_name(units: list[Unit], name: str) -> Unit:
    found = [u for u in units if u.name == name]
    assert len(found) == 1, f"expected one unit named {name!r}, got {[u.name for u in units]}"
    return found[0]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_unit_is_found_with_its_chain(pattern: Pattern, tmp_path) -> None:
    _skip_unsupported(pattern)
    model = graphs.load(pattern, tmp_path)
    units = find_units(GraphIndex(model))
    unit = by_name(units, "unit")
    assert unit.op == pattern.op
    assert unit.channels == pattern.channels
    assert unit.activation == pattern.activation
    assert (unit.bn is not None) == pattern.bn
    assert unit.axis == pattern.axis
    assert unit.output == "unit_out"
    assert unit.weight == "unit_w"
    assert unit.weight_axis == _WEIGHT_AXIS.get(pattern.name, _WEIGHT_AXIS.get(pattern.op))
    assert unit.zero_preserving == (pattern.activation != "Sigmoid")
    assert not unit.head and unit.prunable


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_classifier_head_is_marked_and_never_prunable(pattern: Pattern, tmp_path) -> None:
    _skip_unsupported(pattern)
    units = find_units(GraphIndex(graphs.load(pattern, tmp_path)))
    head = by_name(units, "head")
    assert head.op == "Gemm" and head.channels == graphs.CLASSES
    assert head.head and not head.prunable
    assert head.output == "logits"
    assert [u.name for u in units if u.head] == ["head"]
    expected = {"unit", "head", "twin"} if pattern.name == "shared_weight" else {"unit", "head"}
    assert {u.name for u in units} == expected


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_axis_indexes_the_channels_of_the_real_tensor(pattern: Pattern, tmp_path) -> None:
    """The negative axis must point at the C dimension of what onnxruntime actually computes,
    and each channel must depend on that channel's weights only."""
    _skip_unsupported(pattern)
    model = graphs.load(pattern, tmp_path)
    unit = by_name(find_units(GraphIndex(model)), "unit")
    x = graphs.samples(pattern, count=2)
    (value,) = graphs.run(model, x, [unit.output])
    assert value.shape[unit.axis] == unit.channels
    batch = 1 if pattern.name.endswith("seq_first") else 0  # torch's sequence-first attention: [tokens, batch, features]
    assert value.shape[batch] == 2 and unit.axis % value.ndim != batch  # the batch axis is never taken for the channel axis


def test_group_attribute_is_kept() -> None:
    grouped = by_name(find_units(GraphIndex(graphs.conv_grouped())), "unit")
    depthwise = by_name(find_units(GraphIndex(graphs.conv_depthwise())), "unit")
    assert (grouped.group, depthwise.group) == (2, graphs.HIDDEN)


def test_bn_unit_points_at_the_batchnorm_node() -> None:
    model = graphs.conv_bn_relu()
    unit = by_name(find_units(GraphIndex(model)), "unit")
    assert model.graph.node[unit.bn].op_type == "BatchNormalization"
    assert unit.bias is None and unit.affines == ()


def test_per_channel_bias_adds_are_affines() -> None:
    """The Add after MatMul / after the NHWC Transpose is recorded as a per-channel affine."""
    for model in (graphs.matmul_tokens(), graphs.nhwc_tf2onnx()):
        unit = by_name(find_units(GraphIndex(model)), "unit")
        assert [(a.op, a.constant, a.per_channel) for a in unit.affines] == [("Add", "unit_b", True)]
    unit = by_name(find_units(GraphIndex(graphs.nhwc_folded_bn())), "unit")
    assert [(a.op, a.constant, a.per_channel) for a in unit.affines] == [("Mul", "bn_scale", True), ("Add", "unit_b", True)]


def test_shared_weight_gives_two_units() -> None:
    units = find_units(GraphIndex(graphs.shared_weight()))
    unit, twin = by_name(units, "unit"), by_name(units, "twin")
    assert unit.weight == twin.weight == "unit_w"
    assert (twin.output, twin.activation, twin.prunable) == ("twin_out", "Relu", True)


def test_onnx_default_versions_are_refused_raw_and_normalised_by_load(tmp_path) -> None:
    raw = graphs.onnx_defaults()
    assert raw.ir_version > runtime.max_ir_version()
    with pytest.raises(Exception, match=r"Unsupported model IR version"):
        ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"])
    model = graphs.load(graphs.pattern("onnx_defaults"), tmp_path)
    assert model.ir_version <= runtime.max_ir_version()
    onnx.checker.check_model(model)
    (logits,) = graphs.run(model, graphs.samples(graphs.pattern("onnx_defaults")))
    assert logits.shape == (5, graphs.CLASSES) and np.isfinite(logits).all()


def test_swish_region_must_own_its_input() -> None:
    """x * Sigmoid(x) is an activation only if x feeds nothing else: a gate
    y = other * Sigmoid(x) with x also feeding another layer is no activation of x."""
    g = graphs._Builder(30)
    conv = g.node("Conv", ["x", g.weight("unit_w", (8, 3, 3, 3), 27)], ["conv"], pads=[1] * 4, name="unit")
    gate = g.node("Sigmoid", [conv], ["gate"])
    other = g.node("Relu", [conv], ["other"])
    g.pooled_head(g.node("Mul", [other, gate], ["gated"]))
    unit = by_name(find_units(GraphIndex(g.model((3, 6, 5)))), "unit")
    assert unit.activation is None and unit.output == "conv"


def test_activation_region_that_does_not_map_zero_to_zero_is_not_zero_preserving() -> None:
    """An elementwise tail after x*Sigmoid(x) that adds a constant (x*sigmoid(x) + 1) must not be folded."""
    g = graphs._Builder(31)
    conv = g.node("Conv", ["x", g.weight("unit_w", (8, 3, 3, 3), 27)], ["conv"], pads=[1] * 4, name="unit")
    swish = g.node("Mul", [conv, g.node("Sigmoid", [conv], ["sig"])], ["swish"])
    g.pooled_head(g.node("Add", [swish, g.const("one", np.float32(1.0))], ["unit_out"]))
    unit = by_name(find_units(GraphIndex(g.model((3, 6, 5)))), "unit")
    assert (unit.activation, unit.output, unit.zero_preserving) == ("Swish", "unit_out", False)
