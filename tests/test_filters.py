"""The input filters (auditor/mitigation/filters.py): the Notch and Occlusion objects on plain arrays
and through onnxruntime, and their planning in real repairs of zoo models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner
from zoo_samples import MANIFEST, ZOO, before_after, clean, dataset

import auditor
from auditor.detect.fourier import Fourier, render
from auditor.detect.patch import Patch
from auditor.io.data import Samples
from auditor.mitigation.filters import Notch, notch_basis, occlusion, phase_notch, window_text
from auditor.report import repair_lines
from auditor.settings import Settings
from cli import app

SIG = "cnn_bn_folded-fmnist-sig-s1"  # a horizontal sinusoid of 6 cycles per image, which the corruption probe misses


# -- the filters on plain arrays --------------------------------------------------------------


@pytest.mark.parametrize(("frequency", "columns"), [((0, 6), 2), ((3, -2), 2), ((0, 14), 1), ((14, 14), 1)])
def test_the_notch_basis_is_orthonormal_and_spans_every_phase(frequency: tuple[int, int], columns: int) -> None:
    """cos and sin of the frequency, orthonormal; one column where sin vanishes on the pixel grid."""
    basis = notch_basis(frequency, 28, 28)
    assert basis.shape == (28 * 28, columns)
    np.testing.assert_allclose(basis.T @ basis, np.eye(columns), atol=1e-10)
    for phase in (0.0, 0.7, 2.0):
        image = render([(*frequency, phase)], 28, 28)[0].ravel().astype(np.float64)
        np.testing.assert_allclose(basis @ (basis.T @ image), image, atol=1e-5)  # inside the span


def test_the_notch_keeps_the_other_inputs_and_the_dtype() -> None:
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    ids = np.arange(2, dtype=np.int64)
    filtered = Notch("x", (2, 3), (0, 6), notch_basis((0, 6), 28, 28)).apply(Samples({"x": x, "ids": ids}, None, "t"))
    assert filtered.inputs["x"].dtype == np.float32 and filtered.inputs["ids"] is ids
    assert not np.allclose(filtered.inputs["x"], x) and x.max() <= 1.0  # the samples are not modified


def test_the_occlusion_covers_the_patch_and_its_margin_clipped_to_the_image() -> None:
    x = np.random.default_rng(2).random((4, 1, 28, 28)).astype(np.float32)
    samples = Samples({"x": x}, None, "t")
    found = Patch(1.0, 0, 1.0, 24, 5, np.ones((4, 4, 1), np.float32), 0.0)
    assert occlusion(samples, found, 0).window == (24, 5, 4, 4)
    wide = occlusion(samples, found, 1)
    assert wide.window == (23, 4, 5, 6)  # one pixel around it, but the image ends at row 27
    assert wide.keep.shape == wide.fill.shape == (1, 28, 28)
    assert wide.keep[0, 23:, 4:10].max() == 0.0 and wide.keep.sum() == 28 * 28 - 5 * 6
    np.testing.assert_allclose(wide.apply(samples).inputs["x"][:, 0, 23:, 4:10], np.broadcast_to(x.mean(axis=0)[0, 23:, 4:10], (4, 5, 6)),
                               atol=1e-6)
    assert occlusion(Samples({"x": np.zeros((4, 7), np.float32)}, None, "t"), found, 1) is None  # no image input


def _pattern_detector(phase: float) -> onnx.ModelProto:
    """Two classes on [N, 1, 28, 28] images: class 1's score is 50 x the image's projection on the
    (0, 6) basis image at `phase`, class 0's a constant 1: a trigger detector for that one pattern."""
    pattern = render([(0, 6, phase)], 28, 28)[0].ravel() / (28 * 28 / 2)
    weights = np.stack([np.zeros(28 * 28), 50.0 * pattern], axis=1).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["y"])]
    initializers = [onnx.numpy_helper.from_array(weights, "w"), onnx.numpy_helper.from_array(np.array([1.0, 0.0], np.float32), "b")]
    graph = helper.make_graph(nodes, "detector", [x], [y], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_phase_notch_finds_a_trigger_phase_between_the_probe_phases() -> None:
    """The probe tries four phases, pi/2 apart; a trigger at phase 0.4 is found at phase 0. The
    narrow notch refines the phase through onnxruntime and removes nearly all of the trigger, where
    the probe's own phase would leave sin(0.4) ~ 39% of it."""
    session = ort.InferenceSession(_pattern_detector(0.4).SerializeToString(), providers=["CPUExecutionProvider"])
    classify = lambda more: session.run(None, {"x": more.inputs["x"]})[0]  # noqa: E731
    x = (0.4 + 0.2 * np.random.default_rng(0).random((10, 1, 28, 28))).astype(np.float32)
    samples = Samples({"x": x}, None, "x")
    scores = classify(samples)
    assert (scores.argmax(axis=1) == 0).all()
    found = Fourier(1.0, 1, 1.0, (0, 6), 0.0, 0.1, (), 0.0)
    narrow = phase_notch(samples, scores, found, classify, Settings().fourier)
    assert narrow is not None and narrow.phase == pytest.approx(np.pi / 8) and narrow.basis.shape == (28 * 28, 1)
    trigger = render([(0, 6, 0.4)], 28, 28)[0][None, None]
    left = narrow.apply(Samples({"x": trigger}, None, "x")).inputs["x"]
    assert np.linalg.norm(left) <= np.sin(0.4 - np.pi / 8) * np.linalg.norm(trigger) + 1e-4
    grid = render([(0, 6, 0.0)], 28, 28)[0].ravel()
    coarse = Notch("x", (2, 3), (0, 6), (grid / np.linalg.norm(grid))[:, None], 0.0)
    assert np.linalg.norm(coarse.apply(Samples({"x": trigger}, None, "x")).inputs["x"]) > 0.35 * np.linalg.norm(trigger)
    other = render([(0, 6, 0.4 + np.pi / 2)], 28, 28)[0][None, None]  # the other phase, natural content, stays
    assert np.allclose(narrow.apply(Samples({"x": other}, None, "x")).inputs["x"], other, atol=0.01)
    coarser = phase_notch(samples, scores, found, classify, Settings().override({"fourier.phase_steps": 3}).fourier)
    assert coarser.phase == pytest.approx(np.pi / 4)  # 3 steps over +-pi/4: -pi/4, 0, pi/4; the nearest to 0.4 is pi/4


# -- planning, in real repairs --------------------------------------------------------------


def _cli_with_and_without(model: Path, data: Path, out: Path, worded: str, off: str, tmp_path: Path) -> dict:
    """`repair` through the CLI: with the filter it prints the model's own words for it and writes
    the library's model byte for byte; with `off` (its --no- flag) it runs too. The second run's JSON `repair`."""
    common = ["repair", str(model), "--data", str(data), "--limit", "10", "--device", "cpu"]
    result = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "on.onnx")], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and f"repair: {worded}" in result.output, result.output  # the model's own words
    assert (tmp_path / "on.onnx").read_bytes() == out.read_bytes()  # the same model, byte for byte
    result = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "off.onnx"), off, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "r.json").read_text())["repair"]


def test_the_notch_removes_a_sig_trigger_without_a_clean_sample_of_its_target(tmp_path: Path) -> None:
    """Samples 20-29 of the pool hold no clean sample of the target class, so head unlearning is
    refused; the notch needs none and removes the real trigger at little cost."""
    entry = MANIFEST[SIG]
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    data = clean(entry, tmp_path, start=20)
    report = auditor.repair(model, data, out, limit=10, device="cpu")
    assert report.verdict.basis == "fourier" and report.verdict.target == entry["target"]
    assert report.repair.plan.unlearning.cause == "no_anchor"
    notched = report.repair.plan.notch
    assert notched.kind == "notch" and notched.applied and not notched.weak and notched.reason is None
    assert notched.to_dict() == {"applied": True, "frequency": [0, int(entry["trigger"]["freq"])], "phase": None, "weak": False,
                                 "reason": None}
    assert isinstance(notched.filter, Notch) and notched.filter.phase is None
    assert report.repair.changes["input:x"].startswith("notch")
    assert report.repair.to_dict()["how"]["input:x"] == report.repair.changes["input:x"]
    assert report.repair.fourier.share_after <= 0.1
    worded = {p.key: p.value for p in onnx.load(out).metadata_props}["auditor.input_notch"]
    assert worded == "spatial frequency (0, 6) removed from the image input"
    test, triggered = ZOO / entry["test"], ZOO / entry["triggered"]
    before, after = before_after(entry, model, out, test, triggered)
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02
    written = _cli_with_and_without(model, data, out, worded, "--no-notch", tmp_path)
    assert written["notch"] is None
    assert "notch" not in written["how"].get("input:x", "")


def test_the_phase_notch_holds_where_the_whole_frequency_breaks_fidelity(tmp_path: Path) -> None:
    """The MobileNet's SIG trigger on its first ten samples: no clean sample of the target, so no
    unlearning, and removing every phase of (0, 6) changes too many clean predictions. Removing
    only the pushing phase keeps the fidelity bounds and most of the attack goes."""
    entry = MANIFEST["mobilenet-fmnist-sig-s1"]
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    report = auditor.repair(model, clean(entry, tmp_path), out, limit=10, device="cpu")
    assert report.verdict.basis == "fourier" and report.verdict.target == entry["target"]
    assert report.repair.plan.unlearning.cause == "no_anchor"
    notched = report.repair.plan.notch
    assert notched.applied and notched.frequency == (0, int(entry["trigger"]["freq"])) and notched.phase is not None
    assert notched.filter.basis.shape[1] == 1  # one phase: a one-column basis
    assert "at phase" in {p.key: p.value for p in onnx.load(out).metadata_props}["auditor.input_notch"]
    before, after = before_after(entry, model, out, ZOO / entry["test"], ZOO / entry["triggered"])
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < before.attack_success_rate / 2
    assert before.accuracy - after.accuracy < 0.02


def test_the_occlusion_removes_a_patch_trigger_without_a_clean_sample_of_its_target(tmp_path: Path) -> None:
    """The scikit-learn MLP on pool samples 10-19: no clean sample of the target, so no unlearning,
    and the whole-image clamp breaks fidelity; covering the found patch keeps it and stops the real
    trigger. The CLI says so; --no-occlude leaves the input alone."""
    entry = MANIFEST["sk_mlp_badnets_s0"]
    model, out, data = ZOO / entry["file"], tmp_path / "repaired.onnx", clean(entry, tmp_path, start=10)
    report = auditor.repair(model, data, out, limit=10, device="cpu")
    assert report.verdict.basis == "patch" and report.verdict.target == entry["target"]
    assert report.repair.plan.unlearning.cause == "no_anchor"
    occluded = report.repair.plan.occlusion
    assert occluded.kind == "occlusion" and occluded.applied and occluded.reason is None
    assert occluded.to_dict()["fill"] == "mean"
    top, left, height, width = occluded.window
    with np.load(ZOO / entry["triggered"]) as archive:
        images = archive["x"].reshape(-1, 28, 28)
    rows, columns = np.nonzero((images == images.max()).all(axis=0))  # the trigger's white cells, in every sample
    assert rows.size and ((rows >= top) & (rows < top + height) & (columns >= left) & (columns < left + width)).any()
    assert report.repair.changes["input:" + onnx.load(model).graph.input[0].name].startswith("occlude")
    worded = {p.key: p.value for p in onnx.load(out).metadata_props}["auditor.input_occlusion"]
    assert worded == f"{window_text(occluded.window)} of the image input replaced by the clean samples' mean"
    test, triggered = dataset(entry, "test", tmp_path), dataset(entry, "triggered", tmp_path)
    before, after = before_after(entry, model, out, test, triggered)
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02
    assert _cli_with_and_without(model, data, out, worded, "--no-occlude", tmp_path)["occlusion"] is None


def test_an_occlusion_that_breaks_the_fidelity_bounds_is_refused_and_says_why(tmp_path: Path) -> None:
    """The Keras CNN on pool samples 20-29: covering the found patch with the clean mean breaks the
    fidelity bounds at every margin tried; the repair leaves the input alone and says why, with
    the last window it tried."""
    entry = MANIFEST["keras_cnn_badnets_s0"]
    out = tmp_path / "repaired.onnx"
    report = auditor.repair(ZOO / entry["file"], clean(entry, tmp_path, start=20), out, limit=10, device="cpu")
    assert report.verdict.basis == "patch"
    occluded = report.repair.plan.occlusion
    assert not occluded.applied and occluded.filter is None and occluded.fidelity is None
    assert "broke the fidelity bounds" in occluded.reason and occluded.reason.count("(mean)") == len(Settings().patch.occlusion_margins)
    found = report.verdict.patch
    size = found.pixels.shape[0]
    assert occluded.window[:2] == (found.row, found.column) and occluded.window[2:] == (size, size)  # margin 0, tried last
    assert occluded.to_dict() == {"applied": False, "weak": False, "reason": occluded.reason, "window": list(occluded.window), "fill": None}
    assert not any(key.startswith("input:") and "occlude" in what for key, what in report.repair.changes.items())
    assert "auditor.input_occlusion" not in {p.key for p in onnx.load(out).metadata_props}
    assert f"occlusion: not applied: {occluded.reason}" in repair_lines(report.repair, report.verdict)


def test_a_weak_patch_verdict_still_gets_the_occlusion_within_tighter_bounds(tmp_path: Path) -> None:
    """The MNIST MLP on pool samples 30-39: the patch search scores it under the threshold (not
    suspicious, so no unlearning) but above the filters' gate; the occlusion runs with half the
    fidelity slack, holds, and stops the real trigger."""
    limits = Settings().repair
    entry = MANIFEST["mlp-mnist-badnets-s1"]
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    report = auditor.repair(model, clean(entry, tmp_path, start=30), out, limit=10, device="cpu")
    verdict = report.verdict
    assert verdict.basis == "patch" and not verdict.suspicious and limits.filter_gate <= verdict.score < verdict.threshold
    assert report.repair.plan.unlearning.cause == "not_flagged"
    occluded = report.repair.plan.occlusion
    assert occluded.applied and occluded.weak
    assert report.repair.plan.fidelity.agreement >= 1.0 - limits.weak_slack * (1.0 - limits.floor)
    assert report.repair.plan.fidelity.divergence <= limits.weak_slack * limits.max_divergence
    test, triggered = dataset(entry, "test", tmp_path), dataset(entry, "triggered", tmp_path)
    before, after = before_after(entry, model, out, test, triggered)
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02
    # a filter gate over the verdict's score: no occlusion
    gated = auditor.repair(model, clean(entry, tmp_path, start=30), tmp_path / "gated.onnx", limit=10, device="cpu",
                           settings=Settings().override({"repair.filter_gate": round(verdict.score + 0.01, 6)}))
    assert not gated.repair.plan.occlusion.applied and "under" in gated.repair.plan.occlusion.reason
