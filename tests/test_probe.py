"""The corruption probe on real zoo models under onnxruntime, and its parts on plain arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from zoo_samples import MANIFEST, ZOO, before_after, clean

import auditor
from auditor.detect import probe
from auditor.detect.images import blur, spatial_axes
from auditor.detect.shares import largest_share
from auditor.io.data import Samples
from auditor.settings import Settings

SETTINGS = Settings()
PROBE_THRESHOLD = SETTINGS.verdict.probe_threshold


@pytest.mark.parametrize(("name", "corruption"), [
    ("cnn_bn-fmnist-blended-s0", "noise"),  # a blended noise trigger: noisy inputs fall to the target
    ("cnn-mnist-sig-s1", "noise"),  # a sinusoidal signal
    ("resnet-fmnist-wanet-s0", "blur"),  # a warping trigger: blurred inputs fall to the target
    ("mlp-mnist-blended-s0", "blend"),  # flat inputs of a square image; a noise blend takes all, noise 72%
    ("vit-fmnist-blended-s0", "blend"),  # additive noise sends 45% of these samples to the target: under the threshold
])
def test_whole_image_backdoors_are_flagged_with_their_target(name: str, corruption: str, tmp_path: Path) -> None:
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    verdict = report.verdict
    assert verdict.basis == "corruption" and verdict.suspicious
    assert verdict.target == entry["target"] == verdict.probe.target
    assert verdict.probe.corruption.startswith(corruption) and verdict.score == verdict.probe.score >= PROBE_THRESHOLD
    assert verdict.probe.shares[verdict.probe.corruption] == pytest.approx(verdict.probe.score, abs=1e-6)


@pytest.mark.parametrize("name", ["cnn-mnist-clean-s1", "cnn_bn_folded-fmnist-clean-s1", "mlp-mnist-clean-s0"])
def test_clean_models_stay_below_the_threshold(name: str, tmp_path: Path) -> None:
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert report.verdict.basis in ("corruption", "patch", "fourier") and not report.verdict.suspicious
    assert report.verdict.probe.score < PROBE_THRESHOLD and report.verdict.score < PROBE_THRESHOLD


def test_repair_reports_the_probe_on_the_repaired_model(tmp_path: Path) -> None:
    """The bounds remove this blended backdoor from ten samples and the probe sees it gone;
    on this WaNet MobileNet neither the bounds nor unlearning remove it (every correction that
    keeps the fidelity bounds on all guard samples moves the target's own clean copies past the
    anchor check: it would cost the class, as it did before that check, 44 points), and the probe
    on the repaired model says so."""
    removed = MANIFEST["mlp-mnist-blended-s0"]
    report = auditor.repair(ZOO / removed["file"], clean(removed, tmp_path), tmp_path / "mlp.onnx", limit=10, device="cpu")
    assert report.verdict.suspicious and not report.repair.probe.above_threshold
    assert report.repair.to_dict()["probe"]["above_threshold"] is False
    kept = MANIFEST["mobilenet-fmnist-wanet-s0"]
    report = auditor.repair(ZOO / kept["file"], clean(kept, tmp_path), tmp_path / "mobilenet.onnx", limit=10, device="cpu")
    unlearned = report.repair.plan.unlearning
    assert not unlearned.applied and "fidelity" in unlearned.reason
    assert unlearned.cause == "fidelity" and report.repair.patch is None
    left = report.repair.probe
    assert left.above_threshold and left.suspected_target == kept["target"] and left.suspected_target_share >= 0.6


def test_a_correction_that_breaks_the_fidelity_bounds_is_refused_and_the_probe_says_the_shortcut_stays(tmp_path: Path) -> None:
    """On the WaNet ResNet with clean samples 40-49 every unlearning strength moves the clean outputs past the
    fidelity bounds: the repair keeps the original head, says why, and the probe still sees the shortcut."""
    entry = MANIFEST["resnet-fmnist-wanet-s0"]
    report = auditor.repair(ZOO / entry["file"], clean(entry, tmp_path, start=40), tmp_path / "resnet.onnx", limit=10,
                            device="cpu")
    done = report.repair.plan.unlearning
    assert report.verdict.suspicious and report.verdict.target == entry["target"]
    assert not done.applied and done.cause == "fidelity" and "fidelity" in done.reason and done.correction is None
    assert report.repair.probe.above_threshold and report.repair.probe.suspected_target == entry["target"]
    assert not any(what == "correction" for what in report.repair.changes.values())  # the original head is kept


def test_the_probe_is_deterministic(tmp_path: Path) -> None:
    entry = MANIFEST["cnn-mnist-sig-s1"]
    first = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    second = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert first.verdict.to_dict() == second.verdict.to_dict()


def test_blur_is_the_same_image_operation_in_every_layout() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 12, 12)).astype(np.float32)
    assert blur(images, 1.0) is None  # [N, A, B] is a sequence unless its kind says image
    reference = blur(images, 1.0, axes=(1, 2))
    assert reference is not None and reference.shape == images.shape
    assert np.allclose(blur(images[:, None], 1.0)[:, 0], reference)  # NCHW
    assert np.allclose(blur(images[..., None], 1.0)[..., 0], reference)  # NHWC
    assert np.allclose(blur(images.reshape(3, -1), 1.0).reshape(3, 12, 12), reference)  # flat square
    assert np.allclose(blur(np.full((2, 1, 9, 9), 0.3, np.float32), 2.0), 0.3)  # constants stay
    assert abs(float(reference.mean()) - float(images.mean())) < 0.02  # smoothing, not darkening
    assert float(reference.std()) < float(images.std())


@pytest.mark.parametrize("shape", [(4, 10), (4, 50), (4, 6, 6), (4, 16, 3, 5), (4, 2, 3, 4, 5)])
def test_inputs_that_are_not_images_get_no_blur(shape: tuple[int, ...]) -> None:
    assert spatial_axes(np.zeros(shape, np.float32)) is None
    samples = Samples({"x": np.zeros(shape, np.float32)}, None, "test")
    chosen = SETTINGS.probe
    names = [name for name, _, _ in probe.corruptions(samples, chosen)]
    assert names == [f"noise {level:g}" for level in chosen.noise_levels] + [f"blend {level:g}" for level in chosen.blend_levels]


def test_noise_stays_in_the_clean_range_and_leaves_integer_inputs_alone() -> None:
    rng = np.random.default_rng(1)
    samples = Samples({"x": rng.uniform(-2, 3, (5, 1, 8, 8)).astype(np.float32), "k": np.arange(5, dtype=np.int64)}, None, "t")
    for name, corrupted, origin in probe.corruptions(samples, SETTINGS.probe):
        x = corrupted.inputs["x"]
        assert x.dtype == np.float32 and x.min() >= samples.inputs["x"].min() and x.max() <= samples.inputs["x"].max()
        assert np.array_equal(corrupted.inputs["k"], samples.inputs["k"][origin]), name


def test_a_noise_blend_fades_the_image_towards_noise() -> None:
    """(1 - a) x + a u: a black image gains at most a of the range, a white one loses at most a,
    and the image's own contrast shrinks by 1 - a, as under a blended trigger."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (4, 1, 10, 10)).astype(np.float32)
    x[0], x[1] = 0.0, 1.0
    levels = SETTINGS.probe.blend_levels
    blends = {name: (corrupted.inputs["x"], origin)
              for name, corrupted, origin in probe.corruptions(Samples({"x": x}, None, "t"), SETTINGS.probe) if name.startswith("blend")}
    assert list(blends) == [f"blend {level:g}" for level in levels]
    for level, (blended, origin) in zip(levels, blends.values(), strict=True):
        black, white = blended[origin == 0], blended[origin == 1]
        assert black.min() >= 0.0 and black.max() <= level + 1e-6 and black.std() > 0
        assert white.max() <= 1.0 and white.min() >= 1.0 - level - 1e-6
        rest = origin >= 2
        faded = (blended[rest] - level * 0.5) / (1 - level)  # minus the noise's mean: the faded image
        assert abs(float(np.corrcoef(faded.ravel(), x[origin[rest]].ravel())[0, 1])) > 0.8


def test_largest_share_counts_only_samples_taken_from_other_classes() -> None:
    clean = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    # class 3 takes 4 of the 6 samples that were not 3; its own two staying 3 do not count
    predicted = np.array([3, 3, 3, 1, 3, 2, 3, 3])
    others = SETTINGS.verdict.min_others
    assert largest_share(predicted, clean, 4, others) == (pytest.approx(4 / 6), 3)
    assert largest_share(clean, clean, 4, others) == (0.0, None)
    # a class needs min_others samples from elsewhere to be measured at all
    assert largest_share(np.array([1, 1]), np.array([0, 0]), 2, others) == (0.0, None)
    assert largest_share(np.array([1, 1]), np.array([0, 0]), 2, 2) == (1.0, 1)


def test_a_class_that_takes_samples_unsure_is_a_sink_not_a_shortcut() -> None:
    """The same intake (4 of 6 samples from other classes) counts in full when taken as surely as clean samples are
    classified, in proportion when taken unsure (probe.confidence), and a declared background class never counts."""
    clean = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    predicted = np.array([3, 3, 3, 1, 3, 2, 3, 3])
    others, confidence = SETTINGS.verdict.min_others, SETTINGS.probe.confidence
    taken = (predicted == 3) & (clean != 3)  # the 4 samples class 3 took from others: only their margins count
    sure = np.where(taken, 1.0, 0.01)  # taken as surely as clean samples are classified; the rest hardly
    assert largest_share(predicted, clean, 4, others, (), sure, confidence) == (pytest.approx(4 / 6), 3)
    unsure = np.where(taken, confidence / 4, 5.0)  # taken at a quarter of the margin that counts in full
    assert largest_share(predicted, clean, 4, others, (), unsure, confidence) == (pytest.approx(4 / 6 / 4), 3)
    assert largest_share(predicted, clean, 4, others, (), unsure, 0.0) == (pytest.approx(4 / 6), 3)  # 0: no discount
    assert largest_share(predicted, clean, 4, others, (3,), sure, confidence) == (0.0, None)  # declared background


def test_the_probe_corrupts_at_most_max_samples() -> None:
    for chosen in (SETTINGS.probe, SETTINGS.override({"probe.max_samples": 7, "probe.noise_draws": 2}).probe):
        samples = Samples({"x": np.zeros((chosen.max_samples + 50, 1, 8, 8), np.float32)}, None, "t")
        seen = []
        for name, corrupted, origin in probe.corruptions(samples, chosen):
            copies = 1 if name.startswith("blur") else chosen.noise_draws
            assert len(corrupted) == copies * chosen.max_samples and origin.max() == chosen.max_samples - 1
            seen.append(name)
        assert len(seen) == len(chosen.noise_levels) + len(chosen.blend_levels) + len(chosen.blur_sigmas)


def test_unlearning_a_blur_shortcut_removes_wanet(tmp_path: Path) -> None:
    """The MNIST CNN's WaNet backdoor shows as blurred samples sent to the target. Refitting the
    head's target row only takes the target's share away from the other classes' samples, which
    the fidelity guard does not count against it (guard.divergence, `spare`): the real warped
    inputs stop reaching the target at a small cost in accuracy."""
    entry = MANIFEST["cnn-mnist-wanet-s0"]
    report = auditor.repair(ZOO / entry["file"], clean(entry, tmp_path), tmp_path / "cnn.onnx", limit=10, device="cpu")
    assert report.verdict.basis == "corruption" and report.verdict.target == entry["target"]
    assert report.repair.plan.unlearning.applied and report.repair.plan.unlearning.target == entry["target"]
    before, after = before_after(entry, ZOO / entry["file"], tmp_path / "cnn.onnx", ZOO / entry["test"], ZOO / entry["triggered"])
    assert after.attack_success_rate <= 0.5 * before.attack_success_rate
    assert before.accuracy - after.accuracy <= 0.02


def test_a_sequence_is_blurred_along_time_only() -> None:
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (2, 30, 16)).astype(np.float32)  # [batch, time, features]
    smooth = blur(frames, 1.5, axes=(1,))
    assert np.allclose(smooth.mean(axis=1), frames.mean(axis=1), atol=0.05)  # each feature's level kept
    step = np.diff(smooth, axis=1).std(), np.diff(frames, axis=1).std()
    assert step[0] < 0.5 * step[1]  # smoothed in time
    columns = np.corrcoef(smooth[0].T)  # features stay apart: no mixing across the feature axis
    assert np.abs(columns[np.triu_indices(16, 1)]).mean() < 0.5


def test_corrupted_copies_are_filled_one_draw_at_a_time_with_the_same_values() -> None:
    """The copies are made draw by draw (memory no longer grows with draws x N in float64); the values and the random
    stream are those of making every draw at once, then casting."""
    from functools import partial

    from auditor.detect.probe import _copies, _noise
    from auditor.io.data import Samples as Batch

    rng_data = np.random.default_rng(7)
    inputs = {"a": rng_data.uniform(0, 1, (6, 3, 5, 5)).astype(np.float32), "b": rng_data.normal(size=(6, 4)).astype(np.float16),
              "ids": np.arange(6, dtype=np.int64)}
    samples = Batch(inputs, None, "test")
    floats = {k: v for k, v in inputs.items() if v.dtype.kind == "f"}
    made = _copies(samples, floats, 5, partial(_noise, np.random.default_rng(3), 0.2))
    reference_rng = np.random.default_rng(3)
    for name, array in inputs.items():
        if name not in floats:
            np.testing.assert_array_equal(made[name], np.concatenate([array] * 5))
            continue
        low, high = float(array.min()), float(array.max())
        expected = np.concatenate([np.clip(_noise(reference_rng, 0.2, array, low, high), low, high) for _ in range(5)]).astype(array.dtype)
        assert made[name].dtype == array.dtype
        np.testing.assert_array_equal(made[name], expected)


def test_large_samples_are_probed_fewer_at_a_time_so_that_memory_does_not_grow_with_them() -> None:
    """`max_values` bounds one corruption's copies: at 224 px the probe takes 11 samples, at 28 px its 100."""
    chosen = SETTINGS.probe
    assert probe.probed_count(1000, 3 * 224 * 224, chosen) == 11
    assert probe.probed_count(1000, 28 * 28, chosen) == chosen.max_samples
    assert probe.probed_count(4, 3 * 224 * 224, chosen) == 4
    small = Settings().override({"probe.max_values": 7 * chosen.noise_draws * 64}).probe
    samples = Samples({"x": np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)}, None, "t")
    for name, corrupted, origin in probe.corruptions(samples, small):
        assert origin.max() == 6 and len(corrupted) == (7 * small.noise_draws if name.startswith(("noise", "blend")) else 7), name
