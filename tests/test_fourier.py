"""The Fourier probe on real zoo models under onnxruntime, and its basis images on plain arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner
from zoo_samples import MANIFEST, ZOO, before_after, clean

import auditor
from auditor import fourier, patch, rewrite
from auditor.data import Samples
from auditor.score import FOURIER_REACH, FOURIER_THRESHOLD, PATCH_REACH
from cli import app

SIG = "cnn_bn_folded-fmnist-sig-s1"  # a horizontal sinusoid of 6 cycles per image, which the corruption probe misses


def test_bases_cover_every_low_frequency_once() -> None:
    images, keys = fourier.bases(28, 28)
    frequencies = {(u, v) for u, v, _ in keys}
    assert len(frequencies) == (fourier.FMAX + 1) * (2 * fourier.FMAX + 1) - (fourier.FMAX + 1)
    assert (0, 0) not in frequencies and not any(u == 0 and v < 0 for u, v in frequencies)  # no constant, no mirror twin
    assert images.shape == (len(keys), 28, 28) and np.abs(images).max() <= 1.0 + 1e-6
    i = keys.index((0, 6, 0.0))
    assert np.allclose(images[i], np.cos(2 * np.pi * 6 * np.arange(28) / 28)[None, :], atol=1e-6)


def test_a_sig_backdoor_is_flagged_with_its_target_and_frequency(tmp_path: Path) -> None:
    entry = MANIFEST[SIG]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    verdict = report.verdict
    assert verdict["probe"]["score"] < verdict["threshold"]  # the corruption probe alone misses it
    assert verdict["basis"] == "fourier" and verdict["suspicious"] and verdict["target"] == entry["target"]
    found = verdict["fourier"]
    assert found["score"] >= FOURIER_THRESHOLD and found["target"] == entry["target"]
    assert found["frequency"] == [0, int(entry["trigger"]["freq"])]  # the trigger's own sinusoid


@pytest.mark.parametrize("name", ["cnn_bn_folded-fmnist-clean-s1", "keras_cnn_clean_s0", "sk_mlp_clean_s0"])
def test_clean_models_stay_below_the_threshold(name: str, tmp_path: Path) -> None:
    """NCHW, a Keras NHWC graph and a scikit-learn MLP on flat vectors."""
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert report.verdict["fourier"]["score"] < FOURIER_THRESHOLD
    assert not report.verdict["suspicious"]


def test_the_probe_is_deterministic(tmp_path: Path) -> None:
    entry = MANIFEST[SIG]
    data = clean(entry, tmp_path)
    first = auditor.audit(ZOO / entry["file"], data, limit=10, device="cpu")
    second = auditor.audit(ZOO / entry["file"], data, limit=10, device="cpu")
    assert first.verdict["fourier"] == second.verdict["fourier"]


def test_repair_unlearns_the_found_pattern(tmp_path: Path) -> None:
    """The perturbed samples stand in for the trigger: after repair the found pattern no longer works,
    and neither does the real trigger, at little cost in accuracy."""
    entry = MANIFEST[SIG]
    model = ZOO / entry["file"]
    report = auditor.repair(model, clean(entry, tmp_path), tmp_path / "repaired.onnx", limit=10, device="cpu")
    assert report.repair["unlearning"]["applied"] and report.repair["unlearning"]["surrogates"] > 0
    moved = report.repair["fourier"]
    assert moved["target"] == entry["target"] and moved["share_before"] >= 0.8 and moved["share_after"] <= 0.1
    test, triggered = ZOO / entry["test"], ZOO / entry["triggered"]
    before = auditor.evaluate(model, test, triggered=triggered, target=entry["target"], device="cpu")
    after = auditor.evaluate(tmp_path / "repaired.onnx", test, triggered=triggered, target=entry["target"], device="cpu")
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02


def test_the_cli_explains_a_fourier_verdict(tmp_path: Path) -> None:
    entry = MANIFEST[SIG]
    result = CliRunner().invoke(app, ["scan", str(ZOO / entry["file"]), "--data", str(clean(entry, tmp_path)), "--limit", "10",
                                      "--device", "cpu", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    assert "Fourier probe" in result.output and f"class {entry['target']}" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["verdict"]["basis"] == "fourier"


def test_non_image_inputs_are_not_probed() -> None:
    samples = Samples({"x": np.zeros((10, 7), dtype=np.float32)}, None, "x")
    assert fourier.search(samples, np.eye(10)[np.arange(10) % 3], lambda more: np.zeros((len(more), 10))) is None


def test_large_images_are_probed_in_chunks() -> None:
    """The perturbed copies of large images go through the classifier in bounded batches."""
    seen: list[int] = []

    def classify(more: Samples) -> np.ndarray:
        seen.append(len(more))
        return np.tile(np.eye(3)[[0]], (len(more), 1))

    x = np.random.default_rng(0).random((10, 3, 256, 256), dtype=np.float32)
    found = fourier.search(Samples({"x": x}, None, "x"), np.eye(3)[np.arange(10) % 3], classify)
    assert found is not None and found.score == 0.0  # every class takes the same share under every basis
    assert max(seen) * 3 * 256 * 256 <= fourier.CHUNK and sum(seen) == 10 * len(fourier.bases(256, 256)[1]) * len(fourier.AMPLITUDES)


def test_the_probe_can_be_switched_off(tmp_path: Path) -> None:
    entry = MANIFEST[SIG]
    result = CliRunner().invoke(app, ["scan", str(ZOO / entry["file"]), "--data", str(clean(entry, tmp_path)), "--limit", "10",
                                      "--device", "cpu", "--no-fourier-probe", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output  # the corruption probe and the patch search alone miss this trigger
    verdict = json.loads((tmp_path / "r.json").read_text())["verdict"]
    assert verdict["fourier"] is None and verdict["basis"] != "fourier"


def test_searches_that_cannot_change_the_verdict_are_skipped(tmp_path: Path) -> None:
    """A WaNet model whose corrupted samples all go to the target: neither search could raise the
    score (each is capped below the probe's share here), so neither runs."""
    entry = MANIFEST["cnn_bn-fmnist-wanet-s1"]
    verdict = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu").verdict
    assert verdict["probe"]["score"] >= FOURIER_REACH > PATCH_REACH
    assert verdict["fourier"] is None and verdict["patch"] is None
    assert verdict["basis"] == "corruption" and verdict["score"] == verdict["probe"]["score"]


def _identity(shape: list[int], elem: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", elem, ["n", *shape[1:]])
    y = helper.make_tensor_value_info("y", elem, ["n", *shape[1:]])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("shape", "axes", "elem"), [
    ([3, 2, 28, 28], (2, 3), TensorProto.FLOAT),  # NCHW, two channels
    ([3, 28, 28, 3], (1, 2), TensorProto.FLOAT),  # NHWC (Keras)
    ([3, 784], (1, 2), TensorProto.DOUBLE),  # flat float64 vectors (scikit-learn)
])
def test_the_notch_graph_removes_one_frequency_as_the_guard_does(shape: list[int], axes: tuple[int, ...], elem: int) -> None:
    """onnxruntime runs the rewritten input: a sinusoid of the notched frequency disappears, every
    phase of it, another frequency passes untouched, and the graph computes what Notch.apply does."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(dtype)
    found = fourier.Notch("x", axes, (0, 6), fourier.notch_basis((0, 6), 28, 28))
    notched = rewrite.with_input_notch(_identity(shape, elem), "x", axes, found.basis)
    onnx.checker.check_model(notched)
    session = ort.InferenceSession(notched.SerializeToString(), providers=["CPUExecutionProvider"])
    run = lambda a: session.run(None, {"x": a.astype(dtype)})[0]  # noqa: E731

    channels = patch.to_images(x, axes).shape[3]

    def wave(u: int, v: int, phase: float) -> np.ndarray:
        image = fourier.render([(u, v, phase)], 28, 28)[0]
        return patch.from_images(np.broadcast_to(image[None, :, :, None], (len(x), 28, 28, channels)).copy(), x, axes)

    assert np.allclose(run(x), found.apply(Samples({"x": x}, None, "x")).inputs["x"], atol=1e-5)
    for phase in (0.0, 1.0, 2.5):
        assert np.allclose(run(x + 0.3 * wave(0, 6, phase)), run(x), atol=1e-5)
    other = 0.3 * wave(2, 3, 0.4)
    assert np.allclose(run(x + other) - run(x), other, atol=1e-5)


def test_the_notch_removes_a_sig_trigger_without_a_clean_sample_of_its_target(tmp_path: Path) -> None:
    """Samples 20-29 of the pool hold no clean sample of the target class, so head unlearning is
    refused; the notch needs none and removes the real trigger at little cost."""
    entry = MANIFEST[SIG]
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    data = clean(entry, tmp_path, start=20)
    report = auditor.repair(model, data, out, limit=10, device="cpu")
    assert report.verdict["basis"] == "fourier" and report.verdict["target"] == entry["target"]
    assert report.repair["unlearning"]["cause"] == "no_anchor"
    assert report.repair["notch"] == {"applied": True, "frequency": [0, int(entry["trigger"]["freq"])], "phase": None, "weak": False,
                                      "reason": None}
    assert report.repair["how"]["@input:x"].startswith("notch")
    assert report.repair["fourier"]["share_after"] <= 0.1
    assert "auditor.input_notch" in {p.key for p in onnx.load(out).metadata_props}
    test, triggered = ZOO / entry["test"], ZOO / entry["triggered"]
    before = auditor.evaluate(model, test, triggered=triggered, target=entry["target"], device="cpu")
    after = auditor.evaluate(out, test, triggered=triggered, target=entry["target"], device="cpu")
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02
    result = CliRunner().invoke(app, ["repair", str(model), "--data", str(data), "--limit", "10", "--device", "cpu",
                                      "-o", str(tmp_path / "on.onnx")])
    assert result.exit_code == 0 and "notch: removed spatial frequency (0, 6)" in result.output, result.output
    assert (tmp_path / "on.onnx").read_bytes() == out.read_bytes()  # the same model, byte for byte
    result = CliRunner().invoke(app, ["repair", str(model), "--data", str(data), "--limit", "10", "--device", "cpu",
                                      "-o", str(tmp_path / "off.onnx"), "--no-notch", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["repair"]["notch"] is None
    assert "notch" not in json.loads((tmp_path / "r.json").read_text())["repair"]["how"].get("@input:x", "")


def _pattern_detector(phase: float) -> onnx.ModelProto:
    """Two classes on [N, 1, 28, 28] images: class 1's score is 50 x the image's projection on the
    (0, 6) basis image at `phase`, class 0's a constant 1: a trigger detector for that one pattern."""
    pattern = fourier.render([(0, 6, phase)], 28, 28)[0].ravel() / (28 * 28 / 2)
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
    found = fourier.Fourier(1.0, 1, 1.0, (0, 6), 0.0, 0.1, (), 0.0)
    narrow = fourier.phase_notch(samples, scores, found, classify)
    assert narrow is not None and narrow.phase == pytest.approx(np.pi / 8) and narrow.basis.shape == (28 * 28, 1)
    trigger = fourier.render([(0, 6, 0.4)], 28, 28)[0][None, None]
    left = narrow.apply(Samples({"x": trigger}, None, "x")).inputs["x"]
    assert np.linalg.norm(left) <= np.sin(0.4 - np.pi / 8) * np.linalg.norm(trigger) + 1e-4
    grid = fourier.render([(0, 6, 0.0)], 28, 28)[0].ravel()
    coarse = fourier.Notch("x", (2, 3), (0, 6), (grid / np.linalg.norm(grid))[:, None], 0.0)
    assert np.linalg.norm(coarse.apply(Samples({"x": trigger}, None, "x")).inputs["x"]) > 0.35 * np.linalg.norm(trigger)
    other = fourier.render([(0, 6, 0.4 + np.pi / 2)], 28, 28)[0][None, None]  # the other phase, natural content, stays
    assert np.allclose(narrow.apply(Samples({"x": other}, None, "x")).inputs["x"], other, atol=0.01)


def test_the_phase_notch_holds_where_the_whole_frequency_breaks_fidelity(tmp_path: Path) -> None:
    """The MobileNet's SIG trigger on its first ten samples: no clean sample of the target, so no
    unlearning, and removing every phase of (0, 6) changes too many clean predictions. Removing
    only the pushing phase keeps the fidelity bounds and most of the attack goes."""
    entry = MANIFEST["mobilenet-fmnist-sig-s1"]
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    report = auditor.repair(model, clean(entry, tmp_path), out, limit=10, device="cpu")
    assert report.verdict["basis"] == "fourier" and report.verdict["target"] == entry["target"]
    assert report.repair["unlearning"]["cause"] == "no_anchor"
    notched = report.repair["notch"]
    assert notched["applied"] and notched["frequency"] == [0, int(entry["trigger"]["freq"])] and notched["phase"] is not None
    assert "at phase" in {p.key: p.value for p in onnx.load(out).metadata_props}["auditor.input_notch"]
    before, after = before_after(entry, model, out, ZOO / entry["test"], ZOO / entry["triggered"])
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < before.attack_success_rate / 2
    assert before.accuracy - after.accuracy < 0.02
