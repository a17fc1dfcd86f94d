"""The Fourier probe on real zoo models under onnxruntime, and its basis images on plain arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from zoo_samples import MANIFEST, ZOO, clean

import auditor
from auditor.detect import fourier
from auditor.io.data import Samples
from auditor.settings import Settings
from cli import app

SETTINGS = Settings()
FOURIER_THRESHOLD = SETTINGS.verdict.fourier_threshold

SIG = "cnn_bn_folded-fmnist-sig-s1"  # a horizontal sinusoid of 6 cycles per image, which the corruption probe misses


def test_bases_cover_every_low_frequency_once() -> None:
    images, keys = fourier.bases(28, 28, SETTINGS.fourier)
    frequencies = {(u, v) for u, v, _ in keys}
    fmax = SETTINGS.fourier.fmax
    assert len(frequencies) == (fmax + 1) * (2 * fmax + 1) - (fmax + 1)
    assert len(keys) == len(frequencies) * len(SETTINGS.fourier.phases)
    assert (0, 0) not in frequencies and not any(u == 0 and v < 0 for u, v in frequencies)  # no constant, no mirror twin
    assert images.shape == (len(keys), 28, 28) and np.abs(images).max() <= 1.0 + 1e-6
    i = keys.index((0, 6, 0.0))
    assert np.allclose(images[i], np.cos(2 * np.pi * 6 * np.arange(28) / 28)[None, :], atol=1e-6)
    fewer, _ = fourier.bases(28, 28, SETTINGS.override({"fourier.fmax": 2, "fourier.phases": (0.0,)}).fourier)
    assert len(fewer) == 3 * 5 - 3


def test_a_sig_backdoor_is_flagged_with_its_target_and_frequency(tmp_path: Path) -> None:
    entry = MANIFEST[SIG]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    verdict = report.verdict
    assert verdict.probe.score < verdict.threshold  # the corruption probe alone misses it
    assert verdict.basis == "fourier" and verdict.suspicious and verdict.target == entry["target"]
    found = verdict.fourier
    assert found.score >= FOURIER_THRESHOLD and found.target == entry["target"]
    assert found.frequency == (0, int(entry["trigger"]["freq"]))  # the trigger's own sinusoid
    rescaled = min(SETTINGS.verdict.fourier_reach, found.score * SETTINGS.verdict.fourier_scale)  # onto the probe's threshold
    assert verdict.score == pytest.approx(rescaled)
    assert report.to_dict()["verdict"]["fourier"]["frequency"] == [0, int(entry["trigger"]["freq"])]


@pytest.mark.parametrize("name", ["cnn_bn_folded-fmnist-clean-s1", "keras_cnn_clean_s0", "sk_mlp_clean_s0"])
def test_clean_models_stay_below_the_threshold(name: str, tmp_path: Path) -> None:
    """NCHW, a Keras NHWC graph and a scikit-learn MLP on flat vectors."""
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert report.verdict.fourier.score < FOURIER_THRESHOLD
    assert not report.verdict.suspicious


def test_the_probe_is_deterministic(tmp_path: Path) -> None:
    entry = MANIFEST[SIG]
    data = clean(entry, tmp_path)
    first = auditor.audit(ZOO / entry["file"], data, limit=10, device="cpu")
    second = auditor.audit(ZOO / entry["file"], data, limit=10, device="cpu")
    assert first.verdict.fourier.summary() == second.verdict.fourier.summary()
    assert first.verdict.fourier.bases == second.verdict.fourier.bases


def test_repair_unlearns_the_found_pattern(tmp_path: Path) -> None:
    """The perturbed samples stand in for the trigger: after repair the found pattern no longer works,
    and neither does the real trigger, at little cost in accuracy."""
    entry = MANIFEST[SIG]
    model = ZOO / entry["file"]
    report = auditor.repair(model, clean(entry, tmp_path), tmp_path / "repaired.onnx", limit=10, device="cpu")
    unlearned = report.repair.plan.unlearning
    assert unlearned.applied and unlearned.surrogates > 0 and unlearned.target == entry["target"]
    moved = report.repair.fourier
    assert moved.target == entry["target"] and moved.share_before >= 0.8 and moved.share_after <= 0.1
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
    never = lambda more: pytest.fail("a non-image input must not be classified")  # noqa: E731
    assert fourier.search(samples, np.eye(10)[np.arange(10) % 3], never, SETTINGS.fourier, SETTINGS.verdict.min_others) is None
    assert fourier.planned_passes(samples, SETTINGS.fourier) == 0


def test_large_images_are_probed_in_chunks() -> None:
    """The perturbed copies of large images go through the classifier in bounded batches."""
    seen: list[int] = []

    def classify(more: Samples) -> np.ndarray:
        seen.append(len(more))
        return np.tile(np.eye(3)[[0]], (len(more), 1))

    x = np.random.default_rng(0).random((10, 3, 256, 256), dtype=np.float32)
    chosen = SETTINGS.fourier
    found = fourier.search(Samples({"x": x}, None, "x"), np.eye(3)[np.arange(10) % 3], classify, chosen, SETTINGS.verdict.min_others)
    assert found is not None and found.score == 0.0  # every class takes the same share under every basis
    assert max(seen) * 3 * 256 * 256 <= chosen.chunk and sum(seen) == 10 * len(fourier.bases(256, 256, chosen)[1]) * len(chosen.amplitudes)
    assert sum(seen) == fourier.planned_passes(Samples({"x": x}, None, "x"), chosen)


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
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    verdict = report.verdict
    assert verdict.probe.score >= SETTINGS.verdict.fourier_reach > SETTINGS.verdict.patch_reach
    assert verdict.fourier is None and verdict.patch is None
    assert verdict.basis == "corruption" and verdict.score == verdict.probe.score
    assert report.timings["fourier"] == report.timings["patch"] == 0.0


def test_separation_ranks_the_classes_by_lift() -> None:
    assert fourier.separation({0: 0.2, 3: 0.9, 5: 0.6}) == (3, 0.9, 5, 0.6)
    assert fourier.separation({4: 0.5, 1: 0.5}) == (4, 0.5, 1, 0.5)  # a tie: the first listed, separation 0
    assert fourier.separation({2: 0.7}) == (2, 0.7, None, 0.0)


def test_a_model_fragile_to_smooth_patterns_is_not_a_fourier_finding() -> None:
    """The families zoo's clean wide ResNet on upscaled 8x8 digits sends most samples to one class under a few bases
    and to another class under others: the lift alone (0.7, the old threshold) flagged it; the separation from the
    runner-up class does not."""
    from auditor.capture import classifier
    from auditor.graph.index import GraphIndex
    from auditor.io import model, runtime

    families = ZOO.parent / "zoo_families"
    loaded = model.load(families / "wrn-digits-clean-plain-s0.onnx")
    classify = classifier(loaded.proto, GraphIndex(loaded.proto), runtime.select_provider("cpu"), 256)
    with np.load(families / "data" / "digits-clean.npz") as archive:
        x = archive["x"][:10]
    samples = Samples({loaded.proto.graph.input[0].name: (x / 255.0).astype(np.float32) if x.dtype == np.uint8 else x},
                      None, "digits")
    found = fourier.search(samples, classify(samples), classify, SETTINGS.fourier, SETTINGS.verdict.min_others)
    assert found.lift >= 0.7 and found.runner_up is not None and found.runner_up != found.target
    assert found.runner_up_lift >= 0.5
    assert found.score == pytest.approx(found.lift - found.runner_up_lift) and found.score < FOURIER_THRESHOLD
    assert found.summary()["runner_up"] == found.runner_up
