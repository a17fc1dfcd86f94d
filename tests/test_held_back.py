"""No silent damage: every repair is checked, through the written model, on augmented clean samples the guard
never fitted on; a first plan that fails is planned again within tighter limits, a second failure is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import tree
from test_cli import invoke

import auditor
from auditor.mitigation.guard import distribution


def test_a_single_output_is_a_binary_decision_at_its_own_threshold() -> None:
    logits = np.array([[-2.0], [0.5], [3.0]])
    probabilities = np.array([[0.1], [0.7], [0.49]])
    assert distribution(logits).argmax(axis=1).tolist() == [0, 1, 1]
    assert distribution(probabilities).argmax(axis=1).tolist() == [0, 1, 0]
    np.testing.assert_allclose(distribution(probabilities)[:, 1], [0.1, 0.7, 0.49])
    np.testing.assert_allclose(distribution(logits).sum(axis=1), 1.0)


def test_the_check_is_recorded_and_passes_on_the_example(example, tmp_path: Path) -> None:
    report = auditor.repair(example.model, example.clean, tmp_path / "r.onnx", limit=10, device="cpu")
    kept = report.repair.held_back
    # 15 fresh augmented copies of each of the 10 samples, less those the original already sends down the shortcut
    # (to the patch's class from a sample of another): removing that is the repair's job, not damage
    assert kept.passed and 140 <= kept.samples <= 150
    assert kept.agreement >= kept.agreement_limit and kept.divergence <= kept.divergence_limit
    assert kept.agreement_limit < report.repair.settings.repair.floor  # z standard errors below the floor
    assert report.repair.replanned is None
    shape = json.loads(report.to_json())["repair"]
    assert shape["held_back"]["passed"] is True and shape["replanned"] is None


def test_a_plan_that_fails_the_check_is_planned_again_within_tighter_limits(tmp_path: Path) -> None:
    """With one augmented copy per sample the guard fits its plan to 20 samples; on the SIG-backdoored CNN the
    first plan then agrees 0.800 on the held-back copies (limit 0.812) and is planned again with the floor raised."""
    from zoo_samples import MANIFEST, ZOO, clean

    entry = MANIFEST["cnn_bn_folded-fmnist-sig-s1"]
    settings = auditor.Settings().override({"guard.augmented_per_sample": 1})
    report = auditor.repair(ZOO / entry["file"], clean(entry, tmp_path), tmp_path / "r.onnx", limit=10, device="cpu",
                            settings=settings)
    outcome = report.repair
    assert outcome.replanned is not None and "planned again within tighter limits" in outcome.replanned
    assert outcome.held_back.passed
    assert outcome.settings.repair.floor > settings.repair.floor  # the plan written had the tighter floor
    assert outcome.held_back.agreement_limit < settings.repair.floor  # but it is judged on the stated one


def test_a_repair_that_fails_twice_is_refused_and_nothing_is_written(example, tmp_path: Path) -> None:
    strict = ["--set", "repair.floor=1.0", "--set", "repair.held_back_z=0"]
    before = tree(tmp_path)
    with pytest.raises(auditor.RepairError, match="repair refused, nothing written"):
        auditor.repair(example.model, example.clean, tmp_path / "r.onnx", limit=10, device="cpu",
                       settings=auditor.Settings().override({"repair.floor": 1.0, "repair.held_back_z": 0}))
    result = invoke("repair", example.model, "--data", example.clean, "--limit", "10", "-o", tmp_path / "r.onnx", *strict)
    assert result.exit_code == 2
    assert next(line for line in result.stderr.splitlines() if line.strip()).startswith("error: repair refused, nothing written")
    assert tree(tmp_path) == before


def test_a_repair_that_moves_the_shortcut_to_another_class_is_refused(tmp_path: Path) -> None:
    """On the scikit-learn MLP with clean samples 30-39, the bounds the guard accepts leave a model whose corrupted
    samples go to class 8 more strongly (0.667) than the original's went to any class (0.489, class 7): a repaired
    model auditor itself would flag. No head unlearning to drop: refused, nothing written. The case needs the
    probe's blur of sigma 3 (shipped until 2026-12-07; no zoo draw moves the shortcut without it)."""
    from zoo_samples import MANIFEST, ZOO, clean

    entry = MANIFEST["sk_mlp_badnets_s0"]
    before = tree(tmp_path)
    samples = clean(entry, tmp_path, start=30)
    with_blur_3 = auditor.Settings().override({"probe.blur_sigmas": (0.5, 1.0, 1.5, 2.0, 3.0)})
    with pytest.raises(auditor.RepairError, match=r"sends 0\.667 of the corrupted samples to class 8 .*would move the shortcut"):
        auditor.repair(ZOO / entry["file"], samples, tmp_path / "r.onnx", limit=10, device="cpu", settings=with_blur_3)
    assert tree(tmp_path) == before | {samples.name}
