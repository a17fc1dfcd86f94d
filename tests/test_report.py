"""The report stage: the JSON schema matches the typed results, and each fact is worded once."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import onnx
import pytest

import auditor
from auditor import report as report_module
from auditor.report import ChannelRecord

EXAMPLE = Path(__file__).resolve().parent.parent / "models" / "example"


@pytest.fixture(scope="module")
def repaired(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "repaired.onnx"
    settings = auditor.Settings().override({"verdict.min_others": 3})  # the default: no difference recorded
    made = auditor.repair(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", out, limit=10, device="cpu", settings=settings)
    return made, out


def _documented() -> str:
    return report_module.__doc__


def test_every_json_key_is_in_the_documented_schema(repaired):
    made, _ = repaired
    shape = json.loads(made.to_json())
    assert shape["schema"] == report_module.SCHEMA == "auditor.report/16"
    doc = _documented()
    for key in shape:
        assert re.search(rf"\b{key}\b", doc), f"top-level key {key} is not documented"
    for section in ("verdict", "repair"):
        for key in shape[section]:
            assert re.search(rf"\b{key}\b", doc), f"{section}.{key} is not documented"
    for key in shape["repair"]["unlearning"]:
        assert re.search(rf"\b{key}\b", doc), f"repair.unlearning.{key} is not documented"


def test_typed_results_are_what_the_json_holds(repaired):
    made, _ = repaired
    shape = json.loads(made.to_json())
    assert isinstance(made.verdict, auditor.Verdict) and isinstance(made.repair, auditor.RepairOutcome)
    assert shape["verdict"]["basis"] == made.verdict.basis == "patch" and shape["verdict"]["target"] == made.verdict.target == 0
    assert shape["repair"]["occlusion"]["applied"] is made.repair.plan.occlusion.applied is True
    assert shape["repair"]["how"]["input:x"] == "occlude+clamp"
    assert shape["settings"] == {}  # an override equal to the default is no difference
    for field in dataclasses.fields(made.verdict):
        assert field.name in shape["verdict"]


def test_what_the_repair_did_is_worded_once(repaired):
    """The JSON's actions, the HTML page and the repaired model's metadata say the same words."""
    made, out = repaired
    actions = json.loads(made.to_json())["repair"]["actions"]
    assert any("replaced by the clean samples' mean" in a for a in actions) and any("clean maximum" in a for a in actions)
    metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert [v for v in metadata.values() if v in actions] == actions
    page = made.to_html()
    for action in actions:
        assert action.replace("'", "&#x27;") in page


def test_settings_that_differ_are_recorded():
    changed = auditor.audit(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu", patch_search=False,
                            fourier_probe=False, settings=auditor.Settings().override({"verdict.probe_threshold": 0.9}))
    assert changed.verdict.threshold == 0.9
    assert json.loads(changed.to_json())["settings"] == {"verdict.probe_threshold": 0.9}


def test_nan_is_null_never_zero(repaired):
    made, _ = repaired
    broken = dataclasses.replace(made.layers[0], records=(ChannelRecord(0, float("nan"), {"weight": float("inf")}, {}),))
    copy = dataclasses.replace(made, layers=[broken], repair=None)
    layer = json.loads(copy.to_json())["layers"][0]
    assert layer["channels_detail"][0]["score"] is None and layer["channels_detail"][0]["signals"]["weight"] is None
    assert "NaN" not in copy.to_json() and "NaN" not in copy.to_sarif()
