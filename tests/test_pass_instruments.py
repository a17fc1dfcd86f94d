"""The instrument pass (the guard's graph, with masks, caps and input clamps as graph inputs) on
real graphs under onnxruntime: neutral feeds reproduce the original, and what is left out of the
graph is left out of the feeds."""

from __future__ import annotations

import graphs
import numpy as np
import pytest
from pass_cases import PassCase, half_the_clean_max, units_of

from auditor.graph.passes.instruments import BOUND_PREFIX, CLAMP_PREFIX, MASK_PREFIX, clamp_feed, instrument, mask_feed


def test_the_pass_leaves_its_input_alone_and_names_what_it_did(pass_case: PassCase) -> None:
    case = pass_case
    before = case.model.SerializeToString()
    result = instrument(case.model, case.units, bound=True, clamp=(case.input,))
    assert case.model.SerializeToString() == before == case.before
    assert result.model is not case.model
    assert result.changes == {**{u.name: "instrumented" for u in case.units}, case.input: "instrumented"}
    added = {i.name for i in result.model.graph.input} - {i.name for i in case.model.graph.input}
    assert added == {*(f"{prefix}{k}" for prefix in (MASK_PREFIX, BOUND_PREFIX) for k in range(len(case.units))),
                     f"{CLAMP_PREFIX}low_0", f"{CLAMP_PREFIX}high_0"}
    bare = instrument(case.model, case.units, masks=False)
    assert bare.changes == {} and case.model.SerializeToString() == before


def test_neutral_feeds_reproduce_the_original(pass_case: PassCase) -> None:
    """Masks of ones, caps of +inf and clamps of (-inf, +inf) change nothing, to the bit."""
    case = pass_case
    guarded = instrument(case.model, case.units, bound=True, clamp=(case.input,)).model
    feed = {**mask_feed(case.units, {}, caps={}), **clamp_feed((case.input,), None)}
    (got,) = graphs.run(guarded, case.x, ["logits"], feed)
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    np.testing.assert_array_equal(got, plain)


@pytest.mark.parametrize("per_position", [False, True], ids=["per-channel", "per-position"])
def test_caps_without_masks_match_the_masked_graph_with_nothing_zeroed(pass_case: PassCase, per_position: bool) -> None:
    case = pass_case
    caps = half_the_clean_max(case, per_position)
    bare = instrument(case.model, case.units, bound=True, masks=False).model
    assert not [i for i in bare.graph.input if i.name.startswith(MASK_PREFIX)]
    muls = lambda m: sum(n.op_type == "Mul" for n in m.graph.node)  # noqa: E731
    assert muls(bare) == muls(case.model)
    (got,) = graphs.run(bare, case.x, ["logits"], mask_feed(case.units, {}, caps=caps, masks=False))
    masked = instrument(case.model, case.units, bound=True).model
    (want,) = graphs.run(masked, case.x, ["logits"], mask_feed(case.units, {}, caps=caps))
    np.testing.assert_array_equal(got, want)
    (plain,) = graphs.run(case.model, case.x, ["logits"])
    assert not np.allclose(got, plain, atol=1e-4), "a cap at half the clean maximum must change the logits"
    with pytest.raises(ValueError, match="without mask inputs"):
        mask_feed(case.units, case.zeroed, caps=caps, masks=False)
    # neither masks nor caps: nothing is inserted, and the graph is the original's
    untouched = instrument(case.model, case.units, masks=False).model
    assert [n.op_type for n in untouched.graph.node] == [n.op_type for n in case.model.graph.node]
    (same,) = graphs.run(untouched, case.x, ["logits"], {})
    np.testing.assert_array_equal(same, plain)


def test_the_feeds_say_what_each_input_is_given() -> None:
    """mask_feed: zeros at the zeroed channels, shaped to broadcast on the channel axis, +inf caps
    where none is given; clamp_feed: each input's range, else (-inf, +inf)."""
    model = graphs.conv2d()
    units = list(units_of(model).values())
    (position,) = [k for k, u in enumerate(units) if u.name == "unit"]
    feed = mask_feed(units, {"unit": [1, 5]}, caps={})
    mask = feed[f"{MASK_PREFIX}{position}"]
    assert mask.shape == (graphs.HIDDEN, 1, 1) and mask.ravel().tolist() == [0.0 if c in (1, 5) else 1.0 for c in range(graphs.HIDDEN)]
    assert np.isposinf(feed[f"{BOUND_PREFIX}{position}"]).all()
    assert not any(key.startswith(BOUND_PREFIX) for key in mask_feed(units, {}))  # no caps mapping: no cap inputs
    low, high = np.zeros((3, 6, 5), np.float32), np.ones((3, 6, 5), np.float32)
    fed = clamp_feed(("x", "y"), {"x": np.stack([low, high])})
    assert np.array_equal(fed[f"{CLAMP_PREFIX}low_0"], low) and np.array_equal(fed[f"{CLAMP_PREFIX}high_0"], high)
    assert fed[f"{CLAMP_PREFIX}low_1"].tolist() == [-np.inf] and fed[f"{CLAMP_PREFIX}high_1"].tolist() == [np.inf]
