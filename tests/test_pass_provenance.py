"""The stamp pass and the provenance it writes: what the repair did, in the repaired model's
metadata_props, with one entry per key however often a model is repaired."""

from __future__ import annotations

import json

import graphs
import onnx
import pytest
from pass_cases import units_of

from auditor.graph.passes.channels import zero_and_cap
from auditor.graph.passes.provenance import stamp
from auditor.mitigation.filters import FilterOutcome
from auditor.mitigation.guard import NO_BOUNDS, BoundPlan, Fidelity
from auditor.mitigation.plan import ACTION_KEYS, RepairPlan, provenance
from auditor.mitigation.unlearn import UnlearnOutcome
from auditor.version import __version__

SOURCE_SHA = "ab" * 32


def _plan(zeroed: dict[str, list[int]], factor: float | None = None, position: tuple[int, float] | None = None,
          input_radius: int | None = None, notch: FilterOutcome | None = None, occlusion: FilterOutcome | None = None,
          unlearning: UnlearnOutcome | None = None) -> RepairPlan:
    bounds = BoundPlan(factor, position, NO_BOUNDS, Fidelity(1.0, 0.0), input_radius)
    return RepairPlan(zeroed, sum(map(len, zeroed.values())), bounds, notch, occlusion, unlearning, None, Fidelity(1.0, 0.0), 0, 0)


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_the_pass_leaves_its_input_alone_and_names_what_it_did() -> None:
    model = graphs.conv2d()
    before = model.SerializeToString()
    meta = provenance(_plan({"unit": [1, 5]}), __version__, SOURCE_SHA, "sus")
    result = stamp(model, meta)
    assert model.SerializeToString() == before and not model.metadata_props
    assert result.model is not model and _meta(result.model) == meta
    assert result.changes == {key: "metadata" for key in meta}
    assert list(result.model.graph.node) == list(model.graph.node)  # metadata only


def test_provenance_metadata() -> None:
    model = graphs.conv2d()
    zeroed = {"unit": [5, 1], "other": []}
    meta = _meta(stamp(zero_and_cap(model, list(units_of(model).values()), zeroed).model,
                       provenance(_plan(zeroed), __version__, SOURCE_SHA, "clp")).model)
    assert meta["auditor.version"] == __version__
    assert meta["auditor.source_sha256"] == SOURCE_SHA
    assert meta["auditor.method"] == "clp"
    assert json.loads(meta["auditor.zeroed_channels"]) == {"unit": [1, 5]}  # sorted, empty units left out
    assert not set(meta) & set(ACTION_KEYS)  # zeroing alone words no action


@pytest.mark.parametrize(("plan", "key", "words"), [
    (_plan({}, factor=0.5), "auditor.activation_bound", "0.5 x clean maximum per channel"),
    (_plan({}, factor=0.5, position=(1, 0.25)), "auditor.activation_bound",
     "0.5 x clean maximum per channel, per position: the clean maximum within 1 positions, at least 0.25 x the channel's cap"),
    (_plan({}, input_radius=0), "auditor.activation_bound", "inputs clamped to their clean range within 0 positions"),
    (_plan({}, notch=FilterOutcome("notch", True, frequency=(0, 6))), "auditor.input_notch",
     "spatial frequency (0, 6) removed from the image input"),
    (_plan({}, notch=FilterOutcome("notch", True, frequency=(0, 6), phase=0.4)), "auditor.input_notch",
     "the basis image of spatial frequency (0, 6) at phase 0.400000 removed from the image input"),
    (_plan({}, occlusion=FilterOutcome("occlusion", True, window=(23, 4, 5, 6))), "auditor.input_occlusion",
     "rows 23-27, columns 4-9 of the image input replaced by the clean samples' mean"),
    (_plan({}, unlearning=UnlearnOutcome(applied=True, target=3)), "auditor.head_correction",
     "class 3: head row refit so that corrupted clean inputs leave it"),
], ids=["factor", "position", "inputs", "notch", "phase-notch", "occlusion", "unlearning"])
def test_each_applied_step_is_worded(plan: RepairPlan, key: str, words: str) -> None:
    meta = provenance(plan, __version__, SOURCE_SHA, "sus")
    assert meta[key] == words
    assert [k for k in ACTION_KEYS if k in meta] == [key]


def test_steps_not_applied_are_not_worded() -> None:
    plan = _plan({}, notch=FilterOutcome("notch", False, reason="broke"), occlusion=FilterOutcome("occlusion", False, reason="broke"),
                 unlearning=UnlearnOutcome(target=3, cause="fidelity"))
    assert not set(provenance(plan, __version__, SOURCE_SHA, "sus")) & set(ACTION_KEYS)


def test_repairing_a_repaired_model_keeps_metadata_keys_unique() -> None:
    """A second repair overwrites the auditor.* entries: duplicate metadata keys fail onnx.checker."""
    model = graphs.conv2d()
    first = stamp(zero_and_cap(model, list(units_of(model).values()), {"unit": [1]}).model,
                  provenance(_plan({"unit": [1]}, factor=0.5), __version__, SOURCE_SHA, "sus")).model
    again = zero_and_cap(first, list(units_of(first).values()), {"unit": [2]}).model
    second = stamp(again, provenance(_plan({"unit": [2]}), __version__, "cd" * 32, "sus")).model
    onnx.checker.check_model(second)
    keys = [p.key for p in second.metadata_props]
    assert len(keys) == len(set(keys))
    meta = _meta(second)
    assert json.loads(meta["auditor.zeroed_channels"]) == {"unit": [2]} and meta["auditor.source_sha256"] == "cd" * 32
    assert meta["auditor.activation_bound"] == "0.5 x clean maximum per channel"  # a key the second repair does not write stays
