"""The patch search on real zoo models under onnxruntime, and its layout handling on plain arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner
from zoo_samples import MANIFEST, ZOO, clean

import auditor
from auditor import capture
from auditor.detect import fourier, patch
from auditor.detect.images import from_images, to_images
from auditor.graph.index import GraphIndex
from auditor.io import data
from auditor.io.data import Samples
from auditor.io.runtime import select_provider
from auditor.settings import Settings
from cli import app

SETTINGS = Settings()
PATCH_THRESHOLD = SETTINGS.verdict.patch_threshold
MIN_OTHERS = SETTINGS.verdict.min_others
EXAMPLE = Path(__file__).resolve().parent.parent / "models" / "example"


def _classifier(model: onnx.ModelProto):
    """samples -> class scores through a plain CPU session, as the scan gives the searches."""
    return capture.classifier(model, GraphIndex(model), select_provider("cpu"), SETTINGS.capture.batch)


def _example(limit: int) -> tuple[onnx.ModelProto, Samples]:
    model = onnx.load(EXAMPLE / "model.onnx")
    return model, data.load(EXAMPLE / "clean.npz", data.input_specs(model), limit=limit)


# The BatchNormalization CNN on pool samples 10-19: on samples 0-9 the random search peaks at 0.86, under
# the 0.9 it needs (a miss BENCHMARKS.md counts); on 10-19, 20-29 and 30-39 it flags the model.
@pytest.mark.parametrize(("name", "start"), [("cnn-mnist-badnets-s0", 0), ("cnn_bn-fmnist-badnets-s1", 10),
                                             ("keras_cnn_badnets_s0", 0)])
def test_patch_backdoors_are_flagged_with_their_target(name: str, start: int, tmp_path: Path) -> None:
    """NCHW with and without BatchNormalization, and a Keras NHWC graph: the search finds a patch
    that sends the clean samples to the attack's target, on or touching the trigger (a convolution's
    trigger detector also answers a patch one patch-width off)."""
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path, start=start), limit=10, device="cpu")
    verdict = report.verdict
    assert verdict.basis == "patch" and verdict.suspicious
    assert verdict.target == entry["target"] == verdict.patch.target
    assert verdict.patch.score >= PATCH_THRESHOLD and verdict.patch.share >= 0.9
    assert verdict.score == pytest.approx(verdict.patch.score * SETTINGS.verdict.patch_reach)  # rescaled onto the probe's threshold
    trigger = entry.get("trigger") or {}
    if "top" in trigger:  # the found patch overlaps or touches the trigger
        found = verdict.patch
        assert abs(found.row - trigger["top"]) <= trigger["height"] and abs(found.column - trigger["left"]) <= trigger["width"]


@pytest.mark.parametrize("name", ["cnn-mnist-clean-s1", "resnet-fmnist-clean-s0", "keras_cnn_clean_s0", "vit-fmnist-clean-s0"])
def test_no_patch_takes_over_a_clean_model(name: str, tmp_path: Path) -> None:
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert report.verdict.patch.score < PATCH_THRESHOLD
    assert not report.verdict.suspicious


def test_repair_removes_the_found_patch(tmp_path: Path) -> None:
    """On the bundled example the patch search flags the model and the repair's activation bounds
    alone stop the found patch: nothing is left for head unlearning to fit on."""
    report = auditor.repair(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", tmp_path / "repaired.onnx", limit=10, device="cpu")
    assert report.verdict.basis == "patch" and report.verdict.target == 0
    assert report.repair.plan.unlearning.cause == "bounds_removed" and not report.repair.plan.unlearning.applied
    moved = report.repair.patch
    assert moved.target == 0 and moved.share_before >= 0.9 and moved.share_after <= 0.1
    assert report.repair.to_dict()["patch"] == {"target": 0, "share_before": moved.share_before, "share_after": moved.share_after}
    after = auditor.evaluate(tmp_path / "repaired.onnx", EXAMPLE / "test.npz", triggered=EXAMPLE / "triggered.npz", target=0,
                             device="cpu")
    assert after.attack_success_rate < 0.1


def test_repair_unlearns_the_found_patch(tmp_path: Path) -> None:
    """Where the bounds leave the found patch working (the folded-BatchNormalization CNN) and the
    occlusion is off (by default it covers the patch, and nothing is left to unlearn), repair refits
    the target's row on the patched samples: the patch stops working and the real trigger's attack
    success rate falls from 100% to under 15%."""
    entry = MANIFEST["cnn_bn_folded-fmnist-badnets-s0"]
    report = auditor.repair(ZOO / entry["file"], clean(entry, tmp_path), tmp_path / "repaired.onnx", limit=10, device="cpu",
                            occlude=False)
    assert report.repair.plan.occlusion is None and report.repair.to_dict()["occlusion"] is None
    assert report.verdict.basis == "patch" and report.verdict.target == entry["target"]
    unlearned = report.repair.plan.unlearning
    assert unlearned.applied and unlearned.surrogates > 0
    moved = report.repair.patch
    assert moved.share_before >= 0.9 and moved.share_after <= 0.1
    before = auditor.evaluate(ZOO / entry["file"], ZOO / entry["test"], device="cpu")
    after = auditor.evaluate(tmp_path / "repaired.onnx", ZOO / entry["test"], triggered=ZOO / entry["triggered"],
                             target=entry["target"], device="cpu")
    assert after.attack_success_rate < 0.15 and before.accuracy - after.accuracy < 0.02


def test_the_search_can_be_switched_off(tmp_path: Path) -> None:
    """Without the search the example's patch trigger goes unseen, as the probe alone misses it."""
    report = auditor.audit(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu", patch_search=False)
    assert report.verdict.patch is None and report.verdict.basis == "corruption" and not report.verdict.suspicious
    assert report.timings["patch"] == 0.0


def test_the_search_is_deterministic(tmp_path: Path) -> None:
    entry = MANIFEST["keras_cnn_badnets_s0"]
    first = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    second = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert first.verdict.to_dict() == second.verdict.to_dict()
    assert np.array_equal(first.verdict.patch.pixels, second.verdict.patch.pixels)


def test_restarts_keep_the_better_of_independent_searches() -> None:
    """On the example, the searches with seeds 2 and 3 end on different patches; two restarts from
    seed 2 give exactly the better one."""
    model, samples = _example(10)
    classify = _classifier(model)
    scores = classify(samples)
    alone = [patch.search(samples, scores, classify, SETTINGS.override({"patch.seed": seed}).patch, MIN_OTHERS) for seed in (2, 3)]
    assert alone[0].summary() != alone[1].summary()
    both = patch.search(samples, scores, classify, SETTINGS.override({"patch.seed": 2, "patch.restarts": 2}).patch, MIN_OTHERS)
    better = max(alone, key=lambda found: found.score)
    assert both.summary() == better.summary() and np.array_equal(both.pixels, better.pixels)


def test_a_row_scores_the_same_whatever_shares_its_batch() -> None:
    """The search reuses the score of a patch it has seen, while the rows around it in a batch
    change from step to step: that returns what running it again would only because onnxruntime
    scores each row independently of its batch-mates (checked here bit for bit on the CPU)."""
    model, samples = _example(30)
    x = samples.inputs["x"].copy()
    x[:, :, 20:24, 20:24] = np.random.default_rng(0).integers(0, 2, (30, 1, 4, 4))  # a patch on every row
    classify = _classifier(model)
    whole = classify(Samples({"x": x}, None, "x"))
    for start, stop in ((0, 1), (3, 10), (10, 27), (29, 30)):
        np.testing.assert_array_equal(classify(Samples({"x": x[start:stop]}, None, "x")), whole[start:stop])


@pytest.mark.parametrize(("shape", "axes"), [((2, 3, 12, 10), (2, 3)), ((2, 12, 10, 3), (1, 2)), ((2, 12, 10), (1, 2)),
                                             ((2, 144), (1, 2))])
def test_images_round_trip_in_every_layout(shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    images = to_images(array, axes)
    assert images.ndim == 4 and images.shape[0] == 2
    assert np.array_equal(from_images(images, array, axes), array)


def test_paste_writes_the_pixels_where_the_patch_sits_in_every_layout() -> None:
    pixels = np.full((3, 3, 1), 1.0, dtype=np.float32)
    found = patch.Patch(1.0, 0, 1.0, row=2, column=5, pixels=pixels, seconds=0.0)
    blank = np.zeros((2, 1, 12, 12), dtype=np.float32)
    for name, array in (("nchw", blank), ("flat", blank.reshape(2, -1)),  # [N, H, W] reads as a sequence
                        ("nhwc", np.ascontiguousarray(blank.transpose(0, 2, 3, 1)))):
        pasted = patch.paste(Samples({"x": array}, None, name), found)
        images = pasted.inputs["x"].reshape(2, 12, 12)
        assert images[:, 2:5, 5:8].min() == 1.0 and images.sum() == 2 * 9, name
        assert array.max() == 0.0  # the samples are not modified


def test_shifted_copies_stay_inside_the_image() -> None:
    found = patch.Patch(1.0, 0, 1.0, row=0, column=9, pixels=np.ones((3, 3, 1), dtype=np.float32), seconds=0.0)
    samples = Samples({"x": np.zeros((2, 1, 12, 12), dtype=np.float32)}, None, "x")
    shifts = SETTINGS.patch.unlearn_shifts
    assert shifts == ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
    pasted = patch.paste(samples, found, shifts)
    assert len(pasted) == 2 * 3  # (-1, 0) and (0, 1) would leave the image
    images = pasted.inputs["x"].reshape(3, 2, 12, 12)
    assert images[0, :, 0:3, 9:12].min() == 1.0 and images[1, :, 1:4, 9:12].min() == 1.0 and images[2, :, 0:3, 8:11].min() == 1.0
    (name, copies, origin), = patch.variants(samples, found, SETTINGS.patch)  # what unlearning fits on
    assert name == "patch" and np.array_equal(copies.inputs["x"], pasted.inputs["x"]) and origin.tolist() == [0, 1] * 3


def test_non_image_inputs_are_not_searched() -> None:
    samples = Samples({"x": np.zeros((10, 7), dtype=np.float32)}, None, "x")
    never = lambda more: pytest.fail("a non-image input must not be classified")  # noqa: E731
    assert patch.search(samples, np.eye(10)[np.arange(10) % 3], never, SETTINGS.patch, MIN_OTHERS) is None
    assert patch.planned_passes(samples, 10, SETTINGS.patch) == 0


def test_the_cli_flags_the_example_unless_the_search_is_off(tmp_path: Path) -> None:
    """`auditor scan` exits 1 on the example (the patch search flags it) and 0 with --no-patch-search."""
    runner = CliRunner()
    args = ["scan", str(EXAMPLE / "model.onnx"), "--data", str(EXAMPLE / "clean.npz"), "--limit", "10", "--device", "cpu"]
    flagged = runner.invoke(app, [*args, "--json", str(tmp_path / "on.json")])
    assert flagged.exit_code == 1, flagged.output
    assert json.loads((tmp_path / "on.json").read_text())["verdict"]["basis"] == "patch"
    skipped = runner.invoke(app, [*args, "--no-patch-search", "--json", str(tmp_path / "off.json")])
    assert skipped.exit_code == 0, skipped.output
    assert json.loads((tmp_path / "off.json").read_text())["verdict"]["patch"] is None


@pytest.mark.parametrize("lengths", [(9,), (9, 8, 9, 10), (1, 2, 3, 1, 2, 3), (5, 5, 5)])
def test_segment_means_are_bit_identical_to_each_segments_own_mean(lengths: tuple[int, ...]) -> None:
    """The search scores every class's patch from one batch; its segment means must equal what
    averaging each class's rows alone gives, to the bit, or a tie in the search could break otherwise."""
    rng = np.random.default_rng(len(lengths))
    values = rng.normal(size=sum(lengths)) * 37.0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    expected = [values[s:s + n].mean() for s, n in zip(starts, lengths)]
    assert patch.segment_means(values, patch.segments(lengths)).tolist() == expected
    flags = values > 0
    assert patch.segment_means(flags, patch.segments(lengths)).tolist() == [flags[s:s + n].mean() for s, n in zip(starts, lengths)]


@pytest.mark.parametrize("restarts", [1, 2])
def test_the_planned_passes_bound_what_the_searches_run(restarts: int) -> None:
    """The forecast counts the forward passes before the searches run: the Fourier probe's exactly,
    the patch search's as a bound (patches already scored do not run again). Counted on the example."""
    chosen = SETTINGS.override({"patch.restarts": restarts})
    model, samples = _example(10)
    plain = _classifier(model)
    scores = plain(samples)
    ran = []

    def classify(more: Samples) -> np.ndarray:
        ran.append(len(more))
        return plain(more)

    fourier.search(samples, scores, classify, chosen.fourier, MIN_OTHERS)
    assert sum(ran) == fourier.planned_passes(samples, chosen.fourier) == 448 * 10
    ran.clear()
    patch.search(samples, scores, classify, chosen.patch, MIN_OTHERS)
    planned = patch.planned_passes(samples, scores.shape[1], chosen.patch)
    assert 0 < sum(ran) <= planned == restarts * (11_150 + 625 * 3 + 5 * 10)  # search, then the sweep
    assert fourier.planned_passes(Samples({"x": np.zeros((10, 7), dtype=np.float32)}, None, "x"), chosen.fourier) == 0


def test_a_long_search_is_announced_before_it_starts() -> None:
    """Where the probe's pace forecasts the searches over `run.notice_seconds`, `notice` hears it
    first, with the switches that skip them (the CLI words them as its flags); the example's
    searches (well under a second) stay quiet at the default."""
    heard: list[str] = []
    args = (EXAMPLE / "model.onnx", EXAMPLE / "clean.npz")
    auditor.audit(*args, limit=10, device="cpu", notice=heard.append)
    assert heard == []
    always = SETTINGS.override({"run.notice_seconds": 0.0})
    auditor.audit(*args, limit=10, device="cpu", notice=heard.append, settings=always)
    assert len(heard) == 1 and heard[0].startswith("the Fourier probe and the patch search will run up to 17,555 forward passes")
    assert heard[0].endswith("(switched off by: fourier_probe, patch_search)")
    heard.clear()
    auditor.audit(*args, limit=10, device="cpu", notice=heard.append, fourier_probe=False, settings=always)
    assert len(heard) == 1 and heard[0].startswith("the patch search will run") and heard[0].endswith("(switched off by: patch_search)")
    result = CliRunner().invoke(app, ["scan", str(args[0]), "--data", str(args[1]), "--limit", "10", "--device", "cpu",
                                      "--set", "run.notice_seconds=0"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "note: the Fourier probe and the patch search will run up to 17,555 forward passes" in result.stdout
    assert "(--no-fourier-probe / --no-patch-search skip them)" in result.stdout


def test_the_sweep_grid_is_every_position_or_an_even_grid_of_at_most_its_cap() -> None:
    chosen = SETTINGS.patch
    assert patch.patch_side(28, 28, chosen) == 4
    small = patch.sweep_grid(28, 28, 4, chosen)
    assert len(small) == 625 and small[0] == (0, 0) and small[-1] == (24, 24)
    large = patch.sweep_grid(224, 224, patch.patch_side(224, 224, chosen), chosen)
    assert 0 < len(large) <= chosen.sweep_positions and large[0] == (0, 0)
    assert len({r for r, _ in large}) == len({c for _, c in large})  # as many rows as columns, evenly spaced
    assert patch.sweep_grid(28, 28, 4, SETTINGS.override({"patch.sweep_positions": 1}).patch) == [(0, 0)]
    assert patch.patch_side(28, 28, SETTINGS.override({"patch.size": 0.25}).patch) == 7


def test_the_sweep_moves_the_vits_found_patch_from_the_next_token_onto_the_trigger(tmp_path: Path) -> None:
    """The ViT reads 7x7-pixel tokens through one shared embedding: its BadNets checker (rows and
    columns 23-26) also works one token to the left, where the random search ends on the first ten
    samples (seen with a sweep grid of one position, the corner, which beats nothing). Tried at
    every position, the found pixels score highest on the trigger itself."""
    entry = MANIFEST["vit-fmnist-badnets-s1"]
    path = clean(entry, tmp_path)
    cornered = SETTINGS.override({"patch.sweep_positions": 1})
    before = auditor.audit(ZOO / entry["file"], path, limit=10, device="cpu", settings=cornered)
    found = before.verdict.patch
    assert found.column == 16 and found.score < PATCH_THRESHOLD
    assert not (before.verdict.suspicious and before.verdict.basis == "patch")  # the patch one token off flags nothing
    assert before.settings == {"patch.sweep_positions": 1}
    after = auditor.audit(ZOO / entry["file"], path, limit=10, device="cpu").verdict
    found = after.patch
    assert (found.row, found.column, found.target) == (23, 23, entry["target"]) and found.score == 1.0
    assert after.suspicious and after.basis == "patch"
    # the forecast still bounds the passes, the sweep's included
    model = onnx.load(ZOO / entry["file"])
    samples = data.load(path, data.input_specs(model), limit=10)
    plain = _classifier(model)
    scores, ran = plain(samples), []
    patch.search(samples, scores, lambda more: ran.append(len(more)) or plain(more), SETTINGS.patch, MIN_OTHERS)
    assert 0 < sum(ran) <= patch.planned_passes(samples, scores.shape[1], SETTINGS.patch)


def _with_decoys(source: Path, target: Path, classes: int = 1000, seed: int = 0) -> Path:
    """`source` (ten classes) with `classes` - 10 decoy classes, each a scaled and lowered copy of one real class's
    score (as many fine-grained classes of a large model resemble each other): a clean sample's runner-up classes
    are then decoys of its own class."""
    model = onnx.load(source)
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["inner" if name == out else name for name in node.output]
    rng = np.random.default_rng(seed)
    extra = classes - 10
    graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.integers(0, 10, extra).astype(np.int64), "decoy_of"),
        onnx.numpy_helper.from_array(rng.uniform(0.7, 0.95, extra).astype(np.float32), "decoy_scale"),
        onnx.numpy_helper.from_array(-rng.uniform(0.5, 3.0, extra).astype(np.float32), "decoy_shift")])
    graph.node.extend([onnx.helper.make_node("Gather", ["inner", "decoy_of"], ["decoys"], axis=1),
                       onnx.helper.make_node("Mul", ["decoys", "decoy_scale"], ["decoys_scaled"]),
                       onnx.helper.make_node("Add", ["decoys_scaled", "decoy_shift"], ["decoys_lowered"]),
                       onnx.helper.make_node("Concat", ["inner", "decoys_lowered"], [out], axis=1)])
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", classes]))
    onnx.save(model, target)
    return target


def test_a_thousand_class_model_is_searched_for_the_class_a_patch_reaches(tmp_path: Path) -> None:
    """With more classes than `patch.max_classes`, no class is searched alone: patches free to serve whichever class
    they push furthest find the backdoor's target among 1000 classes, in no more passes than the ten-class search
    plans. The rule it replaced (the ten classes clean samples rank highest after their own) searched only decoys."""
    entry = MANIFEST["cnn_bn-fmnist-badnets-s1"]
    model = onnx.load(_with_decoys(ZOO / entry["file"], tmp_path / "wide.onnx"))
    samples = data.load(clean(entry, tmp_path), data.input_specs(model), limit=10)
    plain = _classifier(model)
    scores = plain(samples)
    assert scores.shape == (10, 1000)
    runner_up = np.where(np.arange(1000) == scores.argmax(axis=1)[:, None], -np.inf, scores).mean(axis=0)
    assert entry["target"] not in np.argsort(-runner_up, kind="stable")[:SETTINGS.patch.max_classes]
    ran = []

    def classify(more: Samples) -> np.ndarray:
        ran.append(len(more))
        return plain(more)

    found = patch.search(samples, scores, classify, SETTINGS.patch, MIN_OTHERS)
    assert found.target == entry["target"] and found.score >= PATCH_THRESHOLD
    assert 0 < sum(ran) <= patch.planned_passes(samples, 10, SETTINGS.patch) == patch.planned_passes(samples, 1000, SETTINGS.patch)


def test_the_any_class_screen_scores_a_class_though_others_score_minus_infinity() -> None:
    """Log-probabilities underflow to -inf: a class whose samples score -inf must not turn the screen's score of
    another class into NaN (-inf x 0), or the patch that reached it would be lost."""
    images = np.zeros((5, 8, 8, 1), dtype=np.float32)
    clean = np.arange(5)

    def run(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
        bright = batch.reshape(len(batch), -1).mean(axis=1)
        out = np.full((len(batch), 20), -np.inf)
        out[np.arange(len(batch)), clean[rows]] = np.where(bright > 0, -np.inf, 0.0)  # its own class, until patched
        out[:, 12] = 8.0 * bright - 0.5  # a bright patch lifts class 12
        return out

    allowed = np.ones(20, dtype=bool)
    classes, *_ = patch._screen_any_class(images, clean, allowed, 1.0, run, 4, np.array([0.0, 1.0], np.float32),
                                          np.random.default_rng(0), SETTINGS.patch, MIN_OTHERS)
    assert classes[0] == 12
