"""Models whose exporter fixed the batch dimension (torch.onnx.export without dynamic axes fixes it
at the dummy input's batch): a batch of 1 is audited one sample per run, with the same results as
a dynamic batch; any other fixed batch is refused with one line."""

from __future__ import annotations

from pathlib import Path

import onnx
from typer.testing import CliRunner

import auditor
from cli import app

EXAMPLE = Path(__file__).resolve().parent.parent / "models" / "example"
MODEL, CLEAN, TEST, TRIGGERED = (EXAMPLE / n for n in ("model.onnx", "clean.npz", "test.npz", "triggered.npz"))


def _fixed(batch: int, path: Path) -> Path:
    proto = onnx.load(str(MODEL))
    for value in [*proto.graph.input, *proto.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    onnx.save(proto, str(path))
    return path


def test_a_batch_of_one_gives_the_same_verdict_and_repair_as_a_dynamic_batch(tmp_path: Path) -> None:
    fixed = _fixed(1, tmp_path / "fixed.onnx")
    scanned = auditor.audit(fixed, CLEAN, limit=10, device="cpu")
    reference = auditor.audit(MODEL, CLEAN, limit=10, device="cpu")
    assert scanned.verdict == reference.verdict
    repaired = auditor.repair(fixed, CLEAN, tmp_path / "repaired.onnx", limit=10, device="cpu")
    dynamic = auditor.repair(MODEL, CLEAN, tmp_path / "dynamic.onnx", limit=10, device="cpu")
    assert repaired.repair["zeroed"] == dynamic.repair["zeroed"]
    assert repaired.repair["unlearning"]["applied"] == dynamic.repair["unlearning"]["applied"]
    after = auditor.evaluate(tmp_path / "repaired.onnx", TEST, triggered=TRIGGERED, target=0, device="cpu")
    reference_after = auditor.evaluate(tmp_path / "dynamic.onnx", TEST, triggered=TRIGGERED, target=0, device="cpu")
    assert after.accuracy == reference_after.accuracy and after.attack_success_rate == reference_after.attack_success_rate


def test_another_fixed_batch_is_refused_with_one_line(tmp_path: Path) -> None:
    fixed = _fixed(4, tmp_path / "fixed.onnx")
    before = fixed.read_bytes()
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["scan", str(fixed), "--data", str(CLEAN), "--json", str(report)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "batch dimension is fixed at 4" in lines[0] and "dynamic batch" in lines[0]
    assert not report.exists() and fixed.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx"]
