"""Models whose exporter fixed the batch dimension (torch.onnx.export without dynamic axes fixes it
at the dummy input's batch): a batch of 1 is audited one sample per run, with the same results as
a dynamic batch. (Any other fixed batch is refused with one line: tests/test_cli.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hostile_cases import fixed_batch

import auditor


def test_a_batch_of_one_gives_the_same_verdict_and_repair_as_a_dynamic_batch(example, tmp_path: Path) -> None:
    fixed = fixed_batch(example.model, 1, tmp_path / "fixed.onnx")
    scanned = auditor.audit(fixed, example.clean, limit=10, device="cpu")
    reference = auditor.audit(example.model, example.clean, limit=10, device="cpu")
    assert scanned.verdict.to_dict() == reference.verdict.to_dict()
    repaired = auditor.repair(fixed, example.clean, tmp_path / "repaired.onnx", limit=10, device="cpu")
    dynamic = auditor.repair(example.model, example.clean, tmp_path / "dynamic.onnx", limit=10, device="cpu")
    assert repaired.repair.plan.zeroed == dynamic.repair.plan.zeroed
    assert repaired.repair.changes == dynamic.repair.changes and repaired.repair.actions() == dynamic.repair.actions()
    assert repaired.repair.plan.unlearning.applied == dynamic.repair.plan.unlearning.applied
    after = auditor.evaluate(tmp_path / "repaired.onnx", example.test, triggered=example.triggered, target=example.target,
                             device="cpu")
    reference_after = auditor.evaluate(tmp_path / "dynamic.onnx", example.test, triggered=example.triggered,
                                       target=example.target, device="cpu")
    assert after.accuracy == reference_after.accuracy and after.attack_success_rate == reference_after.attack_success_rate


def test_large_inputs_run_in_batches_bounded_by_input_values(example) -> None:
    """capture.batch_values bounds the samples per run by their size (a 224 px batch of 64 held GBs of activations);
    the batch changes memory and speed, never the result."""
    from auditor.detect import scan as detection
    from auditor.io import runtime
    from auditor.settings import Settings

    provider = runtime.select_provider("cpu")
    shipped = detection.scan(example.model, example.clean, 20, "sus", provider, Settings())
    bounded = detection.scan(example.model, example.clean, 20, "sus", provider,
                             Settings().override({"capture.batch_values": 28 * 28 * 3}))
    assert shipped.batch == 64 and bounded.batch == 3
    assert bounded.verdict.to_dict() == shipped.verdict.to_dict()
    np.testing.assert_allclose(bounded.capture.scores, shipped.capture.scores, rtol=1e-5, atol=1e-5)
