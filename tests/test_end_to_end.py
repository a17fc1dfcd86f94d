"""End to end through the library (audit, repair, evaluate): the bundled backdoored example scanned, repaired
from 10 clean samples and measured; clean zoo models passed and repaired at little cost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from zoo_samples import MANIFEST, ZOO, clean, dataset

import auditor
from auditor import Settings


def _predicted(example, count: int) -> list[int]:
    """The example model's classes for the first `count` clean samples, by plain onnxruntime."""
    with np.load(example.clean) as archive:
        x = archive["x"][:count].astype(np.float32) / 255
    session = ort.InferenceSession(str(example.model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1).tolist()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repaired(example, tmp_path_factory) -> tuple[Path, auditor.Report]:
    out = tmp_path_factory.mktemp("repair") / "repaired.onnx"
    before = _sha(example.model)
    report = auditor.repair(example.model, example.clean, out, limit=10)
    assert _sha(example.model) == before, "the input model must never be modified"
    return out, report


def test_repair_halves_attack_success_and_keeps_accuracy(example, repaired):
    out, report = repaired
    before = auditor.evaluate(str(example.model), str(example.test), triggered=str(example.triggered), target=example.target)
    after = auditor.evaluate(str(out), str(example.test), triggered=str(example.triggered), target=example.target,
                             reference=str(example.model))
    assert before.attack_success_rate > 0.9  # the example really is backdoored
    assert after.attack_success_rate <= 0.5 * before.attack_success_rate
    assert before.triggered_accuracy < 0.05 and after.triggered_accuracy >= 0.8  # restored, not sent to another class
    assert before.accuracy - after.accuracy <= 0.03
    bounds = report.repair.plan.bounds
    assert bounds.factor is not None  # every hidden unit is capped
    assert report.repair.bound_units == sum(1 for layer in report.layers if layer.prunable)
    assert set(bounds.bounds.channels) == {layer.unit for layer in report.layers if layer.prunable}
    assert after.agreement is not None and after.agreement > 0.9


def test_the_found_patch_is_occluded_and_no_longer_takes_the_samples(example, repaired):
    """The verdict came from the patch search: the repair covers the found patch on the image input
    (behind the input clamp), and the patch sends no other clean sample to the target any more."""
    _, report = repaired
    occlusion = report.repair.plan.occlusion
    assert report.verdict.basis == "patch" and occlusion.applied and occlusion.kind == "occlusion"
    row, column, height, width = occlusion.window
    found = report.verdict.patch
    assert row <= found.row and column <= found.column  # the window holds the found patch
    assert row + height >= found.row + found.pixels.shape[0] and column + width >= found.column + found.pixels.shape[0]
    name = onnx.load(str(example.model)).graph.input[0].name
    assert report.repair.changes[f"input:{name}"] == "occlude+clamp"  # the filter runs before the clamp
    moved = report.repair.patch
    assert moved.target == example.target and moved.share_before > 0.9 and moved.share_after <= 0.1
    assert report.repair.fourier is None and report.repair.probe is None  # only the verdict's own evidence is rerun
    assert report.repair.to_dict()["how"][f"input:{name}"] == "occlude+clamp"


def test_target_accuracy_counts_the_target_class_and_the_repair_keeps_it(example, repaired):
    out, _ = repaired
    with np.load(example.test) as archive:
        x, y = archive["x"].astype(np.float32) / 255, archive["y"]
    session = ort.InferenceSession(str(example.model), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {session.get_inputs()[0].name: x[y == example.target]})[0].argmax(axis=1)
    before = auditor.evaluate(str(example.model), str(example.test), target=example.target)
    assert before.target_accuracy == pytest.approx(float((predicted == example.target).mean()))
    after = auditor.evaluate(str(out), str(example.test), target=example.target)
    assert before.target_accuracy - after.target_accuracy <= 0.05  # the class the attack aims at keeps its samples


def test_repaired_model_is_valid_and_carries_provenance(example, repaired):
    out, report = repaired
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["auditor.version"] == auditor.__version__
    assert meta["auditor.source_sha256"] == _sha(example.model)
    zeroed = json.loads(meta["auditor.zeroed_channels"])
    assert zeroed == {k: v for k, v in report.repair.plan.zeroed.items() if v}
    assert sum(len(v) for v in zeroed.values()) == report.repair.plan.count
    assert report.repair.sha256 == _sha(out)
    # every applied step is worded once: in the model's metadata and in the report's actions
    assert report.repair.actions() == [meta[k] for k in ("auditor.activation_bound", "auditor.input_occlusion") if k in meta]
    assert report.repair.to_dict()["actions"] == report.repair.actions()


def test_repair_is_byte_identical_across_runs(example, repaired, tmp_path):
    out, report = repaired
    again = tmp_path / "again.onnx"
    second = auditor.repair(example.model, example.clean, again, limit=10)
    assert again.read_bytes() == out.read_bytes()
    first_dict, second_dict = report.to_dict(timings=False), second.to_dict(timings=False)
    assert first_dict["repair"].pop("output") != second_dict["repair"].pop("output")
    assert json.dumps(first_dict, sort_keys=True) == json.dumps(second_dict, sort_keys=True)


def test_scan_flags_the_example_by_its_patch(example):
    """The example's trigger is a patch, which the corruption probe does not see: its best share
    is a natural sink below the threshold. The patch search finds the trigger's class and place."""
    report = auditor.audit(example.model, example.clean, limit=10)
    data = json.loads(report.to_json())
    assert data["schema"] == "auditor.report/16"
    assert data["settings"] == {}  # the shipped method
    verdict, shipped = data["verdict"], Settings().verdict
    assert verdict["basis"] == "patch" and verdict["suspicious"] and verdict["target"] == example.target
    assert verdict["threshold"] == shipped.probe_threshold
    assert verdict["score"] == pytest.approx(verdict["patch"]["score"] * shipped.patch_reach, abs=1e-5)
    assert verdict["probe"]["score"] < verdict["threshold"]
    assert verdict["probe"]["shares"][verdict["probe"]["corruption"]] == verdict["probe"]["score"]
    typed = report.verdict  # the JSON is the typed verdict's dict, rounded to six decimals
    assert set(verdict) == set(typed.to_dict()) and verdict["score"] == round(typed.score, 6)
    assert data["provider"]["name"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert data["data"]["samples"] == 10 and data["data"]["classes"] == 10
    assert data["data"]["predicted_classes"] == len(set(_predicted(example, 10)))
    assert data["data"]["missing_classes"] == sorted(set(range(10)) - set(_predicted(example, 10)))
    assert 0 <= report.timings["capture"] <= report.timings["total"]  # a stage's seconds, not a clock reading
    heads = [layer for layer in data["layers"] if layer["head"]]
    assert len(heads) == 1 and not heads[0]["prunable"]
    for layer in data["layers"]:
        assert len(layer["channels_detail"]) == layer["channels"]
        for record in layer["top"]:
            assert set(record["signals"]) >= {"activation", "weight", "relationship"}


def test_settings_passed_to_audit_change_the_verdict_and_are_recorded(example):
    """A variant of the method is a Settings override: a stricter probe threshold moves the verdict's
    threshold and the patch search's reach onto it, and the report records the difference."""
    stricter = Settings().override({"verdict.probe_threshold": 0.99})
    report = auditor.audit(example.model, example.clean, limit=10, settings=stricter)
    verdict = report.verdict
    assert verdict.threshold == 0.99 and verdict.basis == "patch"
    assert verdict.score == pytest.approx(max(0.0, verdict.patch.score) * stricter.verdict.patch_reach)
    assert verdict.suspicious == (verdict.score >= 0.99)
    assert report.settings == {"verdict.probe_threshold": 0.99}
    assert json.loads(report.to_json())["settings"] == {"verdict.probe_threshold": 0.99}


@pytest.mark.parametrize("method", ["clp", "fp"])
def test_baseline_methods_run_through_the_same_stages(example, method):
    report = auditor.audit(example.model, example.clean, limit=10, method=method)
    assert report.method == method
    assert all(len(layer.records) == layer.channels for layer in report.layers)
    # the baselines rank channels for pruning and give no verdict: the model is not assessed, whatever its scores
    assert report.verdict.basis == "channels" and report.verdict.probe is None
    assert not report.suspicious and not report.verdict.assessed and f"method {method}" in report.verdict.not_assessed


@pytest.mark.parametrize("name", ["keras_cnn_clean_s0", "cnn_bn-fmnist-clean-s0", "sk_mlp_clean_s0"])
def test_a_clean_zoo_model_passes_and_its_repair_costs_little(name: str, tmp_path: Path) -> None:
    """Clean models from three exporters (tf2onnx NHWC, torch, skl2onnx): the scan passes them, and a
    repair from 10 samples bounds activations only (no filter, no head correction) at little cost."""
    entry = MANIFEST[name]
    data, test = clean(entry, tmp_path), dataset(entry, "test", tmp_path)
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    assert not auditor.audit(model, data, limit=10, device="cpu").suspicious
    report = auditor.repair(model, data, out, limit=10, device="cpu")
    assert not report.suspicious
    plan = report.repair.plan
    assert plan.unlearning.cause == "not_flagged" and not any(step is not None and step.applied for step in (plan.notch, plan.occlusion))
    assert set(report.repair.changes.values()) <= {"bound", "clamp", "fold", "mask"}
    assert "auditor.head_correction" not in {p.key for p in onnx.load(str(out)).metadata_props}
    before = auditor.evaluate(model, test, device="cpu")
    after = auditor.evaluate(out, test, device="cpu", reference=model)
    assert before.accuracy - after.accuracy <= 0.03 and after.agreement >= 0.9
