"""The patch search on real zoo models under onnxruntime, and its layout handling on plain arrays."""

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
from auditor import patch, rewrite
from auditor.data import Samples
from auditor.score import PATCH_THRESHOLD
from cli import app


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
    assert verdict["basis"] == "patch" and verdict["suspicious"]
    assert verdict["target"] == entry["target"] == verdict["patch"]["target"]
    assert verdict["patch"]["score"] >= PATCH_THRESHOLD and verdict["patch"]["share"] >= 0.9
    trigger = entry.get("trigger") or {}
    if "top" in trigger:  # the found patch overlaps or touches the trigger
        found = verdict["patch"]
        assert abs(found["row"] - trigger["top"]) <= trigger["height"] and abs(found["column"] - trigger["left"]) <= trigger["width"]


@pytest.mark.parametrize("name", ["cnn-mnist-clean-s1", "resnet-fmnist-clean-s0", "keras_cnn_clean_s0", "vit-fmnist-clean-s0"])
def test_no_patch_takes_over_a_clean_model(name: str, tmp_path: Path) -> None:
    entry = MANIFEST[name]
    report = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert report.verdict["patch"]["score"] < PATCH_THRESHOLD
    assert not report.verdict["suspicious"]


def test_repair_removes_the_found_patch(tmp_path: Path) -> None:
    """On the bundled example the patch search flags the model and the repair's activation bounds
    alone stop the found patch: nothing is left for head unlearning to fit on."""
    example = Path(__file__).resolve().parent.parent / "models" / "example"
    report = auditor.repair(example / "model.onnx", example / "clean.npz", tmp_path / "repaired.onnx", limit=10, device="cpu")
    assert report.verdict["basis"] == "patch" and report.verdict["target"] == 0
    assert report.repair["unlearning"]["cause"] == "bounds_removed"
    moved = report.repair["patch"]
    assert moved["target"] == 0 and moved["share_before"] >= 0.9 and moved["share_after"] <= 0.1
    after = auditor.evaluate(tmp_path / "repaired.onnx", example / "test.npz", triggered=example / "triggered.npz", target=0,
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
    assert report.repair["occlusion"] is None
    assert report.verdict["basis"] == "patch" and report.verdict["target"] == entry["target"]
    assert report.repair["unlearning"]["applied"] and report.repair["unlearning"]["surrogates"] > 0
    moved = report.repair["patch"]
    assert moved["share_before"] >= 0.9 and moved["share_after"] <= 0.1
    before = auditor.evaluate(ZOO / entry["file"], ZOO / entry["test"], device="cpu")
    after = auditor.evaluate(tmp_path / "repaired.onnx", ZOO / entry["test"], triggered=ZOO / entry["triggered"],
                             target=entry["target"], device="cpu")
    assert after.attack_success_rate < 0.15 and before.accuracy - after.accuracy < 0.02


def test_the_search_can_be_switched_off(tmp_path: Path) -> None:
    """Without the search the example's patch trigger goes unseen, as the probe alone misses it."""
    example = Path(__file__).resolve().parent.parent / "models" / "example"
    report = auditor.audit(example / "model.onnx", example / "clean.npz", limit=10, device="cpu", patch_search=False)
    assert report.verdict["patch"] is None and report.verdict["basis"] == "corruption" and not report.verdict["suspicious"]
    assert report.timings["patch"] == 0.0


def test_the_search_is_deterministic(tmp_path: Path) -> None:
    entry = MANIFEST["keras_cnn_badnets_s0"]
    first = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    second = auditor.audit(ZOO / entry["file"], clean(entry, tmp_path), limit=10, device="cpu")
    assert first.verdict == second.verdict


def test_restarts_keep_the_better_of_independent_searches(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the example, the searches with seeds 2 and 3 end on different patches; two restarts from
    seed 2 give exactly the better one."""
    from auditor import capture, data
    from auditor.graph import GraphIndex
    from auditor.runtime import select_provider

    example = Path(__file__).resolve().parent.parent / "models" / "example"
    model = onnx.load(example / "model.onnx")
    samples = data.load(example / "clean.npz", data.input_specs(model), limit=10)
    classify = capture.classifier(model, GraphIndex(model), select_provider("cpu"))
    scores = classify(samples)
    alone = [patch.search(samples, scores, classify, seed=seed) for seed in (2, 3)]
    assert alone[0].summary() != alone[1].summary()
    monkeypatch.setattr(patch, "RESTARTS", 2)
    both = patch.search(samples, scores, classify, seed=2)
    better = max(alone, key=lambda found: found.score)
    assert both.summary() == better.summary() and np.array_equal(both.pixels, better.pixels)


def test_a_row_scores_the_same_whatever_shares_its_batch() -> None:
    """The search reuses the score of a patch it has seen, while the rows around it in a batch
    change from step to step: that returns what running it again would only because onnxruntime
    scores each row independently of its batch-mates (checked here bit for bit on the CPU)."""
    from auditor import capture, data
    from auditor.graph import GraphIndex
    from auditor.runtime import select_provider

    example = Path(__file__).resolve().parent.parent / "models" / "example"
    model = onnx.load(example / "model.onnx")
    samples = data.load(example / "clean.npz", data.input_specs(model), limit=30)
    x = samples.inputs["x"].copy()
    x[:, :, 20:24, 20:24] = np.random.default_rng(0).integers(0, 2, (30, 1, 4, 4))  # a patch on every row
    classify = capture.classifier(model, GraphIndex(model), select_provider("cpu"))
    whole = classify(Samples({"x": x}, None, "x"))
    for start, stop in ((0, 1), (3, 10), (10, 27), (29, 30)):
        np.testing.assert_array_equal(classify(Samples({"x": x[start:stop]}, None, "x")), whole[start:stop])


@pytest.mark.parametrize(("shape", "axes"), [((2, 3, 12, 10), (2, 3)), ((2, 12, 10, 3), (1, 2)), ((2, 12, 10), (1, 2)),
                                             ((2, 144), (1, 2))])
def test_images_round_trip_in_every_layout(shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    images = patch.to_images(array, axes)
    assert images.ndim == 4 and images.shape[0] == 2
    assert np.array_equal(patch.from_images(images, array, axes), array)


def test_paste_writes_the_pixels_where_the_patch_sits_in_every_layout() -> None:
    pixels = np.full((3, 3, 1), 1.0, dtype=np.float32)
    found = patch.Patch(1.0, 0, 1.0, row=2, column=5, pixels=pixels, seconds=0.0)
    blank = np.zeros((2, 1, 12, 12), dtype=np.float32)
    for name, array in (("nchw", blank), ("hw", blank[:, 0]), ("flat", blank.reshape(2, -1)),
                        ("nhwc", np.ascontiguousarray(blank.transpose(0, 2, 3, 1)))):
        pasted = patch.paste(Samples({"x": array}, None, name), found)
        images = pasted.inputs["x"].reshape(2, 12, 12)
        assert images[:, 2:5, 5:8].min() == 1.0 and images.sum() == 2 * 9, name
        assert array.max() == 0.0  # the samples are not modified


def test_shifted_copies_stay_inside_the_image() -> None:
    found = patch.Patch(1.0, 0, 1.0, row=0, column=9, pixels=np.ones((3, 3, 1), dtype=np.float32), seconds=0.0)
    samples = Samples({"x": np.zeros((2, 1, 12, 12), dtype=np.float32)}, None, "x")
    pasted = patch.paste(samples, found, patch.SHIFTS)
    assert len(pasted) == 2 * 3  # (-1, 0) and (0, 1) would leave the image


def test_non_image_inputs_are_not_searched() -> None:
    samples = Samples({"x": np.zeros((10, 7), dtype=np.float32)}, None, "x")
    assert patch.search(samples, np.eye(10)[np.arange(10) % 3], lambda more: np.zeros((len(more), 10))) is None


def test_the_cli_flags_the_example_unless_the_search_is_off(tmp_path: Path) -> None:
    """`auditor scan` exits 1 on the example (the patch search flags it) and 0 with --no-patch-search."""
    example = Path(__file__).resolve().parent.parent / "models" / "example"
    runner = CliRunner()
    args = ["scan", str(example / "model.onnx"), "--data", str(example / "clean.npz"), "--limit", "10", "--device", "cpu"]
    flagged = runner.invoke(app, [*args, "--json", str(tmp_path / "on.json")])
    assert flagged.exit_code == 1, flagged.output
    assert json.loads((tmp_path / "on.json").read_text())["verdict"]["basis"] == "patch"
    skipped = runner.invoke(app, [*args, "--no-patch-search", "--json", str(tmp_path / "off.json")])
    assert skipped.exit_code == 0, skipped.output
    assert json.loads((tmp_path / "off.json").read_text())["verdict"]["patch"] is None


# One image input per layout the occlusion must handle: (batch shape, image axes, element type).
OCCLUSION_LAYOUTS = [
    ((3, 2, 28, 28), (2, 3), TensorProto.FLOAT),  # NCHW, two channels
    ((3, 28, 28, 3), (1, 2), TensorProto.FLOAT),  # NHWC (Keras)
    ((3, 784), (1, 2), TensorProto.DOUBLE),  # flat float64 vectors (scikit-learn)
]


@pytest.mark.parametrize(("shape", "axes", "elem"), OCCLUSION_LAYOUTS)
def test_the_occlusion_graph_covers_the_window_as_the_guard_does(shape: tuple[int, ...], axes: tuple[int, ...], elem: int) -> None:
    """onnxruntime runs the rewritten input: inside the window (the patch and one pixel around it,
    clipped to the image) every channel holds the samples' mean, outside it the input passes, and
    the graph computes what Occlusion.apply does."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    x = np.random.default_rng(0).random(shape).astype(dtype)
    samples = Samples({"x": x}, None, "x")
    found = patch.Patch(1.0, 0, 1.0, 24, 5, np.ones((4, 4, 1), dtype), 0.0)
    occlusion = patch.occlusion(samples, found, 1)
    assert occlusion is not None and occlusion.window == (23, 4, 5, 6)  # rows 23-27 (the image ends), columns 4-9
    tensor = helper.make_tensor_value_info("x", elem, ["n", *shape[1:]])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [tensor],
                              [helper.make_tensor_value_info("y", elem, ["n", *shape[1:]])])
    model = rewrite.with_input_fill(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                                    "x", occlusion.keep, occlusion.fill)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x})
    assert np.allclose(got, occlusion.apply(samples).inputs["x"], atol=1e-6)
    images, before = patch.to_images(got, axes), patch.to_images(x, axes)
    assert np.allclose(images[:, 23:28, 4:10, :], before.mean(axis=0)[23:28, 4:10, :], atol=1e-6)
    outside = np.ones(images.shape[1:], dtype=bool)
    outside[23:28, 4:10, :] = False
    assert np.array_equal(images[:, outside], before[:, outside])


@pytest.mark.parametrize(("shape", "axes", "elem"), OCCLUSION_LAYOUTS)
@pytest.mark.parametrize("opset", [11, 17])
def test_the_ring_occlusion_fills_the_window_with_each_samples_surroundings(
        shape: tuple[int, ...], axes: tuple[int, ...], elem: int, opset: int) -> None:
    """With the ring fill, each sample's window holds, on each channel, the mean of the pixels that
    border it (clipped to the image), the rest passes, and the graph (ReduceSum's axes an attribute
    before opset 13, an input after) computes what Occlusion.apply does."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    x = np.random.default_rng(1).random(shape).astype(dtype)
    samples = Samples({"x": x}, None, "x")
    found = patch.Patch(1.0, 0, 1.0, 24, 5, np.ones((4, 4, 1), dtype), 0.0)
    occlusion = patch.occlusion(samples, found, 1, fill="ring")
    assert occlusion is not None and occlusion.kind == "ring" and occlusion.window == (23, 4, 5, 6)
    tensor = helper.make_tensor_value_info("x", elem, ["n", *shape[1:]])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [tensor],
                              [helper.make_tensor_value_info("y", elem, ["n", *shape[1:]])])
    model = rewrite.with_input_fill(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8),
                                    "x", occlusion.keep, occlusion.fill, occlusion.ring, occlusion.axes)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x})
    assert np.allclose(got, occlusion.apply(samples).inputs["x"], atol=1e-6)
    images, before = patch.to_images(got, axes), patch.to_images(x, axes)
    # the ring: rows 22-27 x columns 3-10 (the image ends at row 27), less the window's rows 23-27 x columns 4-9
    ring = np.zeros(images.shape[1:3], dtype=bool)
    ring[22:28, 3:11] = True
    ring[23:28, 4:10] = False
    expected = before[:, ring, :].mean(axis=1)  # [N, C]
    assert np.allclose(images[:, 23:28, 4:10, :], expected[:, None, None, :], atol=1e-6)
    outside = np.ones(images.shape[1:], dtype=bool)
    outside[23:28, 4:10, :] = False
    assert np.array_equal(images[:, outside], before[:, outside])


def test_the_occlusion_removes_a_patch_trigger_without_a_clean_sample_of_its_target(tmp_path: Path) -> None:
    """The scikit-learn MLP on pool samples 10-19: no clean sample of the target, so no unlearning,
    and the whole-image clamp breaks fidelity; covering the found patch keeps it and stops the real
    trigger. The CLI says so; --no-occlude leaves the input alone."""
    entry = MANIFEST["sk_mlp_badnets_s0"]
    model, out, data = ZOO / entry["file"], tmp_path / "repaired.onnx", clean(entry, tmp_path, start=10)
    report = auditor.repair(model, data, out, limit=10, device="cpu")
    assert report.verdict["basis"] == "patch" and report.verdict["target"] == entry["target"]
    assert report.repair["unlearning"]["cause"] == "no_anchor"
    occluded = report.repair["occlusion"]
    assert occluded["applied"] and occluded["reason"] is None
    top, left, height, width = occluded["window"]
    with np.load(ZOO / entry["triggered"]) as archive:
        images = archive["x"].reshape(-1, 28, 28)
    rows, columns = np.nonzero((images == images.max()).all(axis=0))  # the trigger's white cells, in every sample
    assert rows.size and ((rows >= top) & (rows < top + height) & (columns >= left) & (columns < left + width)).any()
    assert report.repair["how"]["@input:" + onnx.load(model).graph.input[0].name].startswith("occlude")
    assert "auditor.input_occlusion" in {p.key for p in onnx.load(out).metadata_props}
    test, triggered = dataset(entry, "test", tmp_path), dataset(entry, "triggered", tmp_path)
    before, after = before_after(entry, model, out, test, triggered)
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02
    result = CliRunner().invoke(app, ["repair", str(model), "--data", str(data), "--limit", "10", "--device", "cpu",
                                      "-o", str(tmp_path / "on.onnx")])
    assert result.exit_code == 0 and "occlusion: covered rows" in result.output, result.output
    assert (tmp_path / "on.onnx").read_bytes() == out.read_bytes()
    result = CliRunner().invoke(app, ["repair", str(model), "--data", str(data), "--limit", "10", "--device", "cpu",
                                      "-o", str(tmp_path / "off.onnx"), "--no-occlude", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["repair"]["occlusion"] is None


def test_the_ring_fill_covers_the_patch_where_the_mean_breaks_the_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Keras CNN on pool samples 20-29, with the ring fill switched on (off by default,
    BENCHMARKS.md's variants): covering the found patch with the clean mean breaks the fidelity
    bounds at both margins, its surroundings' mean holds them and stops the trigger; the report,
    the CLI and the model's metadata say which fill went in."""
    entry = MANIFEST["keras_cnn_badnets_s0"]
    model, data = ZOO / entry["file"], clean(entry, tmp_path, start=20)
    shipped = auditor.repair(model, data, tmp_path / "mean.onnx", limit=10, device="cpu").repair["occlusion"]
    assert not shipped["applied"] and "(mean)" in shipped["reason"]
    monkeypatch.setattr(patch, "OCCLUSION_RING", True)
    out = tmp_path / "ring.onnx"
    report = auditor.repair(model, data, out, limit=10, device="cpu")
    occluded = report.repair["occlusion"]
    assert occluded["applied"] and occluded["fill"] == "ring" and occluded["window"] == [23, 22, 5, 6]  # clipped at the last row
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["auditor.input_occlusion"].endswith("replaced by the mean of the pixels around it")
    before, after = before_after(entry, model, out, dataset(entry, "test", tmp_path), dataset(entry, "triggered", tmp_path))
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.05
    assert before.accuracy - after.accuracy < 0.02
    result = CliRunner().invoke(app, ["repair", str(model), "--data", str(data), "--limit", "10", "--device", "cpu",
                                      "-o", str(tmp_path / "cli.onnx")], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "with the mean of the pixels around it" in result.stdout, result.output
    assert (tmp_path / "cli.onnx").read_bytes() == out.read_bytes()


def test_a_weak_patch_verdict_still_gets_the_occlusion_within_tighter_bounds(tmp_path: Path) -> None:
    """The MNIST MLP on pool samples 30-39: the patch search scores it under the threshold (not
    suspicious, so no unlearning) but above the filters' gate; the occlusion runs with half the
    fidelity slack, holds, and stops the real trigger."""
    from auditor.api import FILTER_GATE, WEAK_SLACK

    entry = MANIFEST["mlp-mnist-badnets-s1"]
    model, out = ZOO / entry["file"], tmp_path / "repaired.onnx"
    report = auditor.repair(model, clean(entry, tmp_path, start=30), out, limit=10, device="cpu")
    verdict = report.verdict
    assert verdict["basis"] == "patch" and not verdict["suspicious"] and FILTER_GATE <= verdict["score"] < verdict["threshold"]
    assert report.repair["unlearning"]["cause"] == "not_flagged"
    occluded = report.repair["occlusion"]
    assert occluded["applied"] and occluded["weak"]
    assert report.repair["agreement"] >= 1.0 - WEAK_SLACK * (1.0 - report.repair["floor"])
    test, triggered = dataset(entry, "test", tmp_path), dataset(entry, "triggered", tmp_path)
    before, after = before_after(entry, model, out, test, triggered)
    assert before.attack_success_rate > 0.9 and after.attack_success_rate < 0.1
    assert before.accuracy - after.accuracy < 0.02


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
def test_the_planned_passes_bound_what_the_searches_run(restarts: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forecast counts the forward passes before the searches run: the Fourier probe's exactly,
    the patch search's as a bound (patches already scored do not run again). Counted on the example."""
    from auditor import capture, data, fourier
    from auditor.graph import GraphIndex
    from auditor.runtime import select_provider

    example = Path(__file__).resolve().parent.parent / "models" / "example"
    model = onnx.load(example / "model.onnx")
    samples = data.load(example / "clean.npz", data.input_specs(model), limit=10)
    plain = capture.classifier(model, GraphIndex(model), select_provider("cpu"))
    scores = plain(samples)
    ran = []

    def classify(more: Samples) -> np.ndarray:
        ran.append(len(more))
        return plain(more)

    monkeypatch.setattr(patch, "RESTARTS", restarts)
    fourier.search(samples, scores, classify)
    assert sum(ran) == fourier.planned_passes(samples) == 448 * 10
    ran.clear()
    patch.search(samples, scores, classify)
    planned = patch.planned_passes(samples, scores.shape[1])
    assert 0 < sum(ran) <= planned == restarts * (11_150 + 625 * 3 + 5 * 10)  # search, then the sweep
    assert fourier.planned_passes(Samples({"x": np.zeros((10, 7), dtype=np.float32)}, None, "x")) == 0


def test_a_long_search_is_announced_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the probe's pace forecasts the searches over NOTICE_SECONDS, `notice` hears it first,
    with the flags that skip them; the example's searches (well under a second) stay quiet at the default."""
    from auditor import api

    example = Path(__file__).resolve().parent.parent / "models" / "example"
    heard: list[str] = []
    auditor.audit(example / "model.onnx", example / "clean.npz", limit=10, device="cpu", notice=heard.append)
    assert heard == []
    monkeypatch.setattr(api, "NOTICE_SECONDS", 0.0)
    auditor.audit(example / "model.onnx", example / "clean.npz", limit=10, device="cpu", notice=heard.append)
    assert len(heard) == 1 and "up to 17,555 forward passes" in heard[0]
    assert "--no-fourier-probe / --no-patch-search skip them" in heard[0]
    heard.clear()
    auditor.audit(example / "model.onnx", example / "clean.npz", limit=10, device="cpu", notice=heard.append,
                  fourier_probe=False)
    assert len(heard) == 1 and heard[0].startswith("the patch search will run") and heard[0].endswith("--no-patch-search skips it")
    result = CliRunner().invoke(app, ["scan", str(example / "model.onnx"), "--data", str(example / "clean.npz"),
                                      "--limit", "10", "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "note: the Fourier probe and the patch search will run up to 17,555 forward passes" in result.stdout


def test_the_sweep_grid_is_every_position_or_an_even_grid_of_at_most_its_cap() -> None:
    assert patch.patch_side(28, 28) == 4
    small = patch.sweep_grid(28, 28, 4)
    assert len(small) == 625 and small[0] == (0, 0) and small[-1] == (24, 24)
    large = patch.sweep_grid(224, 224, patch.patch_side(224, 224))
    assert 0 < len(large) <= patch.SWEEP_POSITIONS and large[0] == (0, 0)
    assert len({r for r, _ in large}) == len({c for _, c in large})  # as many rows as columns, evenly spaced


def test_the_sweep_moves_the_vits_found_patch_from_the_next_token_onto_the_trigger(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The ViT reads 7x7-pixel tokens through one shared embedding: its BadNets checker (rows and
    columns 23-26) also works one token to the left, where the random search ends on the first ten
    samples. Tried at every position, the found pixels score highest on the trigger itself."""
    from auditor import capture, data
    from auditor.graph import GraphIndex
    from auditor.runtime import select_provider

    entry = MANIFEST["vit-fmnist-badnets-s1"]
    path = clean(entry, tmp_path)
    monkeypatch.setattr(patch, "SWEEP", False)
    before = auditor.audit(ZOO / entry["file"], path, limit=10, device="cpu").verdict
    assert before["patch"]["column"] == 16 and before["patch"]["score"] < PATCH_THRESHOLD and before["basis"] != "patch"
    monkeypatch.setattr(patch, "SWEEP", True)
    after = auditor.audit(ZOO / entry["file"], path, limit=10, device="cpu").verdict
    found = after["patch"]
    assert (found["row"], found["column"], found["target"]) == (23, 23, entry["target"]) and found["score"] == 1.0
    assert after["suspicious"] and after["basis"] == "patch"
    # the forecast still bounds the passes, the sweep's included
    model = onnx.load(ZOO / entry["file"])
    samples = data.load(path, data.input_specs(model), limit=10)
    plain = capture.classifier(model, GraphIndex(model), select_provider("cpu"))
    scores, ran = plain(samples), []
    patch.search(samples, scores, lambda more: ran.append(len(more)) or plain(more))
    assert 0 < sum(ran) <= patch.planned_passes(samples, scores.shape[1])
