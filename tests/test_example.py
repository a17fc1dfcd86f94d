"""End to end on the bundled backdoored example: scan, repair from 10 clean samples, evaluate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

import auditor
from auditor.score import PATCH_THRESHOLD, PROBE_THRESHOLD

EXAMPLE = Path(__file__).resolve().parent.parent / "models" / "example"
MODEL, CLEAN, TEST, TRIGGERED = (EXAMPLE / n for n in ("model.onnx", "clean.npz", "test.npz", "triggered.npz"))
TARGET = json.loads((EXAMPLE / "model.json").read_text())["target"]


def _predicted(count: int) -> list[int]:
    """The example model's classes for the first `count` clean samples, by plain onnxruntime."""
    import numpy as np
    import onnxruntime as ort

    with np.load(CLEAN) as archive:
        x = archive["x"][:count].astype(np.float32) / 255
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1).tolist()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repaired(tmp_path_factory) -> tuple[Path, auditor.Report]:
    out = tmp_path_factory.mktemp("repair") / "repaired.onnx"
    before = _sha(MODEL)
    report = auditor.repair(MODEL, CLEAN, out, limit=10)
    assert _sha(MODEL) == before, "the input model must never be modified"
    return out, report


def test_repair_halves_attack_success_and_keeps_accuracy(repaired):
    out, report = repaired
    before = auditor.evaluate(str(MODEL), str(TEST), triggered=str(TRIGGERED), target=TARGET)
    after = auditor.evaluate(str(out), str(TEST), triggered=str(TRIGGERED), target=TARGET, reference=str(MODEL))
    assert before.attack_success_rate > 0.9  # the example really is backdoored
    assert after.attack_success_rate <= 0.5 * before.attack_success_rate
    assert before.triggered_accuracy < 0.05 and after.triggered_accuracy >= 0.8  # restored, not sent to another class
    assert before.accuracy - after.accuracy <= 0.03
    assert report.repair["bound"]["factor"] is not None  # the activation bounds did the work
    assert report.repair["bound"]["units"] == sum(1 for layer in report.layers if layer.prunable)
    assert after.agreement is not None and after.agreement > 0.9


def test_target_accuracy_counts_the_target_class_and_the_repair_keeps_it(repaired):
    import numpy as np
    import onnxruntime as ort

    out, _ = repaired
    with np.load(TEST) as archive:
        x, y = archive["x"].astype(np.float32) / 255, archive["y"]
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {session.get_inputs()[0].name: x[y == TARGET]})[0].argmax(axis=1)
    before = auditor.evaluate(str(MODEL), str(TEST), target=TARGET)
    assert before.target_accuracy == pytest.approx(float((predicted == TARGET).mean()))
    after = auditor.evaluate(str(out), str(TEST), target=TARGET)
    assert before.target_accuracy - after.target_accuracy <= 0.05  # the class the attack aims at keeps its samples


def test_repaired_model_is_valid_and_carries_provenance(repaired):
    out, report = repaired
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["auditor.version"] == auditor.__version__
    assert meta["auditor.source_sha256"] == _sha(MODEL)
    zeroed = json.loads(meta["auditor.zeroed_channels"])
    assert zeroed == report.repair["zeroed"]
    assert sum(len(v) for v in zeroed.values()) == report.repair["count"]
    assert report.repair["sha256"] == _sha(out)


def test_repair_is_byte_identical_across_runs(repaired, tmp_path):
    out, report = repaired
    again = tmp_path / "again.onnx"
    second = auditor.repair(MODEL, CLEAN, again, limit=10)
    assert again.read_bytes() == out.read_bytes()
    first_dict, second_dict = report.to_dict(timings=False), second.to_dict(timings=False)
    assert first_dict["repair"].pop("output") != second_dict["repair"].pop("output")
    assert json.dumps(first_dict, sort_keys=True) == json.dumps(second_dict, sort_keys=True)


def test_scan_flags_the_example_by_its_patch():
    """The example's trigger is a patch, which the corruption probe does not see: its best share
    is a natural sink below the threshold. The patch search finds the trigger's class and place."""
    report = auditor.audit(MODEL, CLEAN, limit=10)
    data = json.loads(report.to_json())
    assert data["schema"] == "auditor.report/9"
    verdict = data["verdict"]
    assert verdict["basis"] == "patch" and verdict["suspicious"] and verdict["target"] == TARGET
    assert verdict["score"] == pytest.approx(verdict["patch"]["score"] * PROBE_THRESHOLD / PATCH_THRESHOLD, abs=1e-5)
    assert verdict["probe"]["score"] < verdict["threshold"]
    assert verdict["probe"]["shares"][verdict["probe"]["corruption"]] == verdict["probe"]["score"]
    assert verdict["margins"] is None  # computed only where the probe cannot run
    assert data["provider"]["name"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert data["data"]["samples"] == 10 and data["data"]["classes"] == 10
    assert data["data"]["predicted_classes"] == len(set(_predicted(10)))
    assert data["data"]["missing_classes"] == sorted(set(range(10)) - set(_predicted(10)))
    assert 0 <= report.timings["capture"] <= report.timings["total"]  # a stage's seconds, not a clock reading
    heads = [layer for layer in data["layers"] if layer["head"]]
    assert len(heads) == 1 and not heads[0]["prunable"]
    for layer in data["layers"]:
        assert len(layer["channels_detail"]) == layer["channels"]
        for record in layer["top"]:
            assert set(record["signals"]) >= {"activation", "weight", "relationship"}


@pytest.mark.parametrize("method", ["clp", "fp"])
def test_baseline_methods_run_through_the_same_stages(method):
    report = auditor.audit(MODEL, CLEAN, limit=10, method=method)
    assert report.method == method
    assert all(len(layer.records) == layer.channels for layer in report.layers)


def test_cli_evaluate_prints_the_target_class_accuracy(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    report = tmp_path / "evaluation.json"
    result = CliRunner().invoke(app, ["evaluate", str(MODEL), "--data", str(TEST), "--target", str(TARGET),
                                      "--json", str(report)])
    assert result.exit_code == 0, result.output
    expected = auditor.evaluate(str(MODEL), str(TEST), target=TARGET).target_accuracy
    assert f"accuracy on the samples of class {TARGET}: {100 * expected:.2f}%" in result.output
    assert json.loads(report.read_text())["target_accuracy"] == pytest.approx(expected)


def test_cli_scan_names_the_classes_no_clean_sample_falls_in():
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["scan", str(MODEL), "--data", str(CLEAN), "--limit", "10"], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    seen = set(_predicted(10))
    missing = ", ".join(str(c) for c in range(10) if c not in seen)
    assert missing and f"in {len(seen)} of its 10 classes (none in {missing});" in result.stdout
