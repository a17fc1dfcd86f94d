"""In-graph statistics against numpy on the full activations, over several batches."""

from __future__ import annotations

import graphs
import numpy as np
import pytest

from auditor.capture import build_capture_model, capture, channel_max, probe_ranks
from auditor.graph.index import GraphIndex
from auditor.graph.units import find_units
from auditor.io import runtime
from auditor.io.data import Samples

CPU = runtime.Provider("CPUExecutionProvider", "test")
SAMPLES, BATCH = 7, 3  # three batches, the last one short: accumulation across batches is tested


def _rows(value: np.ndarray, axis: int) -> np.ndarray:
    """[.., C, ..] -> [samples x positions, C] float64."""
    moved = np.moveaxis(value.astype(np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1])


@pytest.mark.parametrize("name", ["conv2d", "nhwc_tf2onnx", "matmul_tokens", "matmul_tokens_seq_first", "conv_bn_relu",
                                  "conv_gelu_erf", "conv1d"])
def test_statistics_equal_numpy_on_full_activations(name: str) -> None:
    pattern = graphs.pattern(name)
    model = pattern.build()
    index = GraphIndex(model)
    units = find_units(index)
    x = graphs.samples(pattern, count=SAMPLES, seed=3)
    captured = capture(model, index, units, Samples({"x": x}, None, "test"), CPU, batch=BATCH)

    bn_inputs = {u.name: index.node(u.bn).input[0] for u in units if u.bn is not None}
    names = [u.output for u in units] + list(bn_inputs.values())
    values = dict(zip(names, graphs.run(model, x, names), strict=True))
    (logits,) = graphs.run(model, x, ["logits"])
    np.testing.assert_allclose(captured.scores, logits, rtol=1e-5, atol=1e-5)
    assert captured.scores.shape == (SAMPLES, graphs.CLASSES)

    for unit in units:
        stats = captured.stats[unit.name]
        rows = _rows(values[unit.output], unit.axis)
        assert rows.shape[1] == unit.channels
        assert stats.count == rows.shape[0]
        np.testing.assert_allclose(stats.sum, rows.sum(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(stats.sumsq, (rows**2).sum(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(stats.max, rows.max(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(stats.gram, rows.T @ rows, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(stats.var, rows.var(0), rtol=1e-4, atol=1e-5)
        batch_axis = 1 if name.endswith("seq_first") and not unit.head else 0  # per-position maxima: over each half's samples
        for half in (0, 1):
            np.testing.assert_array_equal(stats.half_position_max[half],
                                          np.take(values[unit.output], np.arange(half, SAMPLES, 2), batch_axis).max(batch_axis))
        if unit.bn is None:
            assert stats.bn_count == 0 and stats.bn_sum.size == 0
        else:
            bn_rows = _rows(values[bn_inputs[unit.name]], 1 - values[bn_inputs[unit.name]].ndim)
            assert stats.bn_count == bn_rows.shape[0]
            np.testing.assert_allclose(stats.bn_sum, bn_rows.sum(0), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(stats.bn_sumsq, (bn_rows**2).sum(0), rtol=1e-5, atol=1e-4)


def test_batch_size_does_not_change_the_statistics() -> None:
    model = graphs.conv2d()
    index = GraphIndex(model)
    units = find_units(index)
    samples = Samples({"x": graphs.samples(graphs.pattern("conv2d"), count=SAMPLES, seed=4)}, None, "test")
    one = capture(model, index, units, samples, CPU, batch=1).stats["unit"]
    whole = capture(model, index, units, samples, CPU, batch=SAMPLES).stats["unit"]
    assert one.count == whole.count == SAMPLES * 6 * 5
    np.testing.assert_allclose(one.sum, whole.sum, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one.gram, whole.gram, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(one.max, whole.max)
    np.testing.assert_array_equal(one.half_position_max, whole.half_position_max)
    assert one.half_position_max.shape[0] == 2  # even- and odd-indexed samples
    np.testing.assert_array_equal(channel_max(one.half_position_max.max(axis=0), units[0].axis), one.max)


def test_capture_leaves_the_model_alone() -> None:
    model = graphs.nhwc_tf2onnx()
    before = model.SerializeToString()
    index = GraphIndex(model)
    units = find_units(index)
    x = graphs.samples(graphs.pattern("nhwc_tf2onnx"), count=2)
    ranks = probe_ranks(model, index, units, Samples({"x": x}, None, "test"), CPU)
    assert ranks == {"unit_out": 4, "logits": 2}
    extra, outputs = build_capture_model(model, index, units, ranks)
    assert model.SerializeToString() == before
    assert len(outputs) == 6 * len(units)  # sum, sumsq, max, gram, count, per-position max
    with runtime.extended(model, extra) as captured:
        assert [o.name for o in captured.graph.output] == ["logits", *outputs]
        runtime.session(captured, CPU)  # the instrumented graph is one onnxruntime runs
    assert model.SerializeToString() == before  # the instruments are gone again


def test_a_wide_unit_relates_an_evenly_spaced_sample_of_its_channels() -> None:
    """The Gram matrix of a unit wider than capture.gram_channels covers only the sampled channels, and equals the
    full one restricted to them; the relationship signal regresses the sampled channels on each other."""
    import dataclasses

    from auditor.capture import gram_index
    from auditor.detect.channels import relationship

    pattern = graphs.pattern("conv2d")
    model = pattern.build()
    index = GraphIndex(model)
    units = find_units(index)
    samples = Samples({"x": graphs.samples(pattern, count=SAMPLES, seed=3)}, None, "test")
    full = capture(model, index, units, samples, CPU, batch=BATCH)
    wide = max(units, key=lambda u: u.channels)
    most = wide.channels // 2
    sampled = capture(model, index, units, samples, CPU, batch=BATCH, gram_channels=most)
    chosen = gram_index(wide.channels, most)
    assert chosen is not None and len(chosen) == most and chosen[0] == 0 and chosen[-1] == wide.channels - 1
    stats, whole = sampled.stats[wide.name], full.stats[wide.name]
    np.testing.assert_array_equal(stats.gram_index, chosen)
    np.testing.assert_allclose(stats.gram, whole.gram[np.ix_(chosen, chosen)], rtol=1e-5, atol=1e-6)
    restricted = dataclasses.replace(whole, sum=whole.sum[chosen], gram=whole.gram[np.ix_(chosen, chosen)])
    r2 = relationship(stats)
    np.testing.assert_allclose(r2[chosen], relationship(restricted), rtol=1e-4, atol=1e-6)
    others = np.setdiff1d(np.arange(wide.channels), chosen)
    assert np.all(r2[others] == np.median(r2[chosen]))
    assert full.stats[wide.name].gram_index is None and gram_index(wide.channels, wide.channels) is None
