"""Clean samples as a folder of image files (auditor/io/images.py): read with the model's preprocessing, under
onnxruntime, on the bundled example's PNGs and on small RGB models built here, checked against numpy references."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import auditor
from auditor.errors import DataError, SettingsError
from auditor.io import data
from auditor.settings import PreprocessSettings, Settings

EXAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "models" / "example" / "images"
SIDE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _example_order(labels: np.ndarray) -> list[int]:
    """Indices of clean.npz's samples in the folder's order: sorted by relative path <label>/<index>.png."""
    return sorted(range(len(labels)), key=lambda i: f"{labels[i]}/{i:02d}.png")


def _specs(path: Path) -> list[data.InputSpec]:
    return data.input_specs(onnx.load(str(path)))


def test_the_example_folder_reads_as_its_npz_samples_exactly(example) -> None:
    """20 grey PNGs in label folders, default preprocessing: clean.npz's uint8 samples / 255 bit for bit, labels included."""
    samples = data.load(EXAMPLE_IMAGES, _specs(example.model))
    with np.load(example.clean) as archive:
        x, y = archive["x"][:20], archive["y"][:20]
    order = _example_order(y)
    assert samples.inputs["x"].dtype == np.float32 and samples.inputs["x"].shape == (20, 1, 28, 28)
    assert np.array_equal(samples.inputs["x"], x[order].astype(np.float32) / np.float32(255))
    assert np.array_equal(samples.labels, y[order])
    assert samples.preprocessing == {"files": 20, "resize": 0, "crop": 0, "scale": 1 / 255, "mean": [0.0], "std": [1.0],
                                     "channel_order": "rgb", "layout": "nchw", "resized_to_model": None}
    assert data.load(example.clean, _specs(example.model)).preprocessing is None


def test_the_example_folder_audits_as_the_same_samples_in_an_npz(example, tmp_path: Path) -> None:
    """The folder and an .npz of the same samples in the same order: the same verdict; the report records the folder's
    preprocessing, and null for the .npz."""
    with np.load(example.clean) as archive:
        x, y = archive["x"][:20], archive["y"][:20]
    order = _example_order(y)
    np.savez(tmp_path / "same.npz", x=x[order], y=y[order])
    from_folder = auditor.audit(example.model, EXAMPLE_IMAGES, limit=10, device="cpu")
    from_npz = auditor.audit(example.model, tmp_path / "same.npz", limit=10, device="cpu")
    assert from_folder.verdict.to_dict() == from_npz.verdict.to_dict()
    assert from_folder.verdict.suspicious and from_folder.verdict.target == example.target  # the example is backdoored
    assert from_folder.to_dict()["data"]["preprocessing"]["files"] == 10
    assert from_npz.to_dict()["data"]["preprocessing"] is None
    assert from_folder.settings == {}  # preprocessing given by default is no setting changed


# ---- colour images, resize, crop, mean/std, channel order, layout ------------------------------------------------

def _rgb_model(path: Path, layout: str, side: int | None = SIDE) -> Path:
    """Conv(3 -> 4, 3x3) + GlobalAveragePool + Flatten + Gemm(4 -> 5) on a float image; NHWC: a Transpose first."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "G"),
             numpy_helper.from_array(np.zeros(5, np.float32), "C")]
    nodes = [helper.make_node("Conv", ["image", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "G", "C"], ["logits"])]
    hw = [side or "H", side or "W"]
    shape = ["N", 3, *hw] if layout == "nchw" else ["N", *hw, 3]
    name = "x"
    if layout == "nhwc":
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["image"], perm=[0, 3, 1, 2]))
    else:
        name = "image"
    graph = helper.make_graph(nodes, "rgb", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _rgb_folder(folder: Path) -> dict[str, tuple[int, int]]:
    """Three colour images of other sizes than the model's, PNG and JPEG, one in a subfolder; beside them files that
    are no images or are hidden. Returns {relative path: (width, height)} in the order the folder is read."""
    rng = np.random.default_rng(7)
    sizes = {"a.png": (48, 40), "b.jpg": (40, 48), "sub/c.JPEG": (44, 44)}
    for relative, (width, height) in sizes.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(folder / relative)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork, not a PNG")
    return sizes


def _reference(folder: Path, boxes: dict[str, tuple[tuple[int, int], tuple[int, int, int, int] | None]],
               order: str, mean, std) -> np.ndarray:
    """[N, H, W, 3] float64 by hand: Pillow decode and bilinear resize to the given size, crop box, channel order,
    / 255, mean/std."""
    out = []
    for relative, (size, box) in boxes.items():
        with Image.open(folder / relative) as opened:
            picture = opened.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        if box is not None:
            picture = picture.crop(box)
        pixels = np.asarray(picture, dtype=np.float64)
        if order == "bgr":
            pixels = pixels[:, :, ::-1]
        out.append((pixels / 255.0 - np.array(mean)) / np.array(std))
    return np.stack(out)


def test_colour_images_get_resize_crop_mean_std_bgr_in_either_layout(tmp_path: Path) -> None:
    """Shorter side to 36 (the longer one truncated, as torchvision), centre 32 crop, BGR, ImageNet mean/std: the same
    numbers as the reference, transposed for NCHW and as they are for NHWC; both models then give the same scores."""
    folder = tmp_path / "images"
    _rgb_folder(folder)
    preprocess = Settings().override({"preprocess.resize": "36", "preprocess.crop": "32", "preprocess.channel_order": "bgr",
                                      "preprocess.mean": ",".join(map(str, MEAN)), "preprocess.std": ",".join(map(str, STD))}).preprocess
    # 48x40 -> 43x36, crop from (6, 2) (round(5.5) = 6); 40x48 -> 36x43, from (2, 6); 44x44 -> 36x36, from (2, 2)
    boxes = {"a.png": ((43, 36), (6, 2, 38, 34)), "b.jpg": ((36, 43), (2, 6, 34, 38)), "sub/c.JPEG": ((36, 36), (2, 2, 34, 34))}
    expected = _reference(folder, boxes, "bgr", MEAN, STD)
    scores = {}
    for layout in ("nchw", "nhwc"):
        model = _rgb_model(tmp_path / f"{layout}.onnx", layout)
        samples = data.load(folder, _specs(model), preprocess=preprocess)
        (name, array), = samples.inputs.items()
        assert array.dtype == np.float32 and samples.labels is None
        np.testing.assert_allclose(array, expected.transpose(0, 3, 1, 2) if layout == "nchw" else expected, rtol=0, atol=1e-6)
        assert samples.preprocessing == {"files": 3, "resize": 36, "crop": 32, "scale": 1 / 255, "mean": list(MEAN), "std": list(STD),
                                         "channel_order": "bgr", "layout": layout, "resized_to_model": None}
        scores[layout] = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {name: array})[0]
    np.testing.assert_allclose(scores["nchw"], scores["nhwc"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(scores["nchw"][0], scores["nchw"][1])  # the samples differ, so the check above could fail


def test_images_are_resized_to_the_models_fixed_size_and_that_is_recorded(tmp_path: Path) -> None:
    """No resize or crop asked, the model fixes 32x32: each image is resized to it (bilinear), and the report says so.
    A model with free height and width takes the images as they are, when they share one size."""
    folder = tmp_path / "images"
    sizes = _rgb_folder(folder)
    samples = data.load(folder, _specs(_rgb_model(tmp_path / "m.onnx", "nchw")))
    expected = _reference(folder, {r: ((SIDE, SIDE), None) for r in sizes}, "rgb", (0.0,), (1.0,))
    np.testing.assert_allclose(samples.inputs["image"], expected.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    assert samples.preprocessing["resized_to_model"] == [SIDE, SIDE]
    free = _rgb_model(tmp_path / "free.onnx", "nhwc", side=None)
    square = data.load(folder, _specs(free), preprocess=PreprocessSettings(crop=40))
    assert square.inputs["x"].shape == (3, 40, 40, 3) and square.preprocessing["resized_to_model"] is None
    with pytest.raises(DataError, match=r"b\.jpg gives a sample of shape \(48, 40, 3\).*set preprocess\.resize and preprocess\.crop"):
        data.load(folder, _specs(free))


def test_labels_come_from_integer_folders_and_the_limit_takes_the_first_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    for relative, shift in {"10/z.png": 3, "1/b.png": 2, "0/a.png": 1, "1/deeper/c.bmp": 4}.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey + np.uint8(shift)).save(folder / relative)
    specs = [data.InputSpec("x", np.dtype(np.float32), (None, 1, 28, 28))]
    samples = data.load(folder, specs)
    assert samples.labels.tolist() == [0, 1, 1, 10]  # 0/a, 1/b, 1/deeper/c, 10/z
    assert samples.inputs["x"][:, 0, 0, 0].tolist() == [np.float32(v) / np.float32(255) for v in (1, 2, 4, 3)]
    limited = data.load(folder, specs, limit=2)
    assert limited.labels.tolist() == [0, 1] and np.array_equal(limited.inputs["x"], samples.inputs["x"][:2])
    assert limited.preprocessing["files"] == 2
    Image.fromarray(grey).save(folder / "loose.png")  # one image outside a label folder: no labels at all
    assert data.load(folder, specs).labels is None
    flat = data.load(folder, [data.InputSpec("x", np.dtype(np.float32), (None, 784))])  # a flat grey input (an MLP)
    assert flat.preprocessing["layout"] == "flat" and np.array_equal(flat.inputs["x"][0], samples.inputs["x"][0].reshape(-1))
    with pytest.raises(DataError, match=r"holds 5 images, fewer than the limit of 9"):
        data.load(folder, specs, limit=9)
    exact = 5 * 28 * 28 * 4  # five float32 samples
    assert len(data.load(folder, specs, max_bytes=exact)) == 5
    with pytest.raises(DataError, match=r"5 images of shape \(1, 28, 28\) make 15,680 bytes of samples, over limits\.data_bytes \(15,679\)"):
        data.load(folder, specs, max_bytes=exact - 1)
    with pytest.raises(DataError, match=r"0/a\.png is 28x28 pixels, over limits\.data_bytes \(1,000\) once decoded"):
        data.load(folder, specs, max_bytes=1000)


# ---- refusals: one line each ------------------------------------------------------------------------------------

def _two_input_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, 28, 28]) for n in ("a", "b")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 28, 28])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _refused(error: type[Exception], pattern: str, call) -> None:
    with pytest.raises(error, match=pattern) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_folders_that_cannot_feed_the_model_are_refused_in_one_line(example, tmp_path: Path) -> None:
    specs = _specs(example.model)
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(DataError, r"is a directory holding no image files \(.png .jpg .jpeg .bmp\)", lambda: data.load(empty, specs))
    (empty / "readme.txt").write_text("no images here")
    _refused(DataError, r"holding no image files", lambda: data.load(empty, specs))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "0.png").write_bytes((EXAMPLE_IMAGES / "0" / "00.png").read_bytes())
    (corrupt / "1.png").write_bytes(b"this is not a png")
    _refused(DataError, r"cannot read 1\.png as an image", lambda: data.load(corrupt, specs))
    (corrupt / "1.png").write_bytes((EXAMPLE_IMAGES / "0" / "00.png").read_bytes()[:-60])  # truncated inside the image data
    _refused(DataError, r"cannot read 1\.png as an image", lambda: data.load(corrupt, specs))
    Image.fromarray(np.full((28, 28), 40000, np.uint16)).save(corrupt / "1.png")  # 16 bits per pixel: not divided by 255
    _refused(DataError, r"1\.png has I;?1?6? pixels \(16-bit or more\); save it with 8 bits per channel", lambda: data.load(corrupt, specs))
    _refused(DataError, r"the model has 2 inputs \(a, b\): give an \.npz with one array per input",
             lambda: data.load(EXAMPLE_IMAGES, _specs(_two_input_model(tmp_path / "two.onnx"))))
    _refused(DataError, r"takes int64; a folder of images feeds float inputs only",
             lambda: data.load(EXAMPLE_IMAGES, [data.InputSpec("x", np.dtype(np.int64), (None, 1, 28, 28))]))
    _refused(DataError, r"read as nhwc, has 28 channels; images give 1 \(grey\) or 3",
             lambda: data.load(EXAMPLE_IMAGES, specs, preprocess=PreprocessSettings(layout="nhwc")))
    _refused(DataError, r"cannot tell the layout .* \[\?, 3, 8, 3\]: set preprocess\.layout",
             lambda: data.load(EXAMPLE_IMAGES, [data.InputSpec("x", np.dtype(np.float32), (None, 3, 8, 3))]))
    _refused(DataError, r"preprocess\.crop 30 is larger than the image \(28x28 pixels\)",
             lambda: data.load(EXAMPLE_IMAGES, specs, preprocess=PreprocessSettings(crop=30)))
    _refused(SettingsError, r"preprocess\.mean has 3 values, the model's input has 1 channel: give 1 or 1",
             lambda: data.load(EXAMPLE_IMAGES, specs, preprocess=PreprocessSettings(mean=MEAN)))
    _refused(DataError, r"the sample limit must be at least 1", lambda: data.load(EXAMPLE_IMAGES, specs, limit=0))


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("preprocess.resize", "-1", r"preprocess\.resize must be 0 \(none\) or a number of pixels"),
    ("preprocess.crop", "-5", r"preprocess\.crop must be 0"),
    ("preprocess.scale", "0", r"preprocess\.scale must be a positive number"),
    ("preprocess.mean", "0.1,0.2", r"preprocess\.mean takes 1 or 3 finite numbers"),
    ("preprocess.std", "0.2,0,0.2", r"preprocess\.std values must be positive"),
    ("preprocess.channel_order", "rgba", r"preprocess\.channel_order must be rgb or bgr"),
    ("preprocess.layout", "nwhc", r"preprocess\.layout must be auto, nchw or nhwc"),
    ("preprocess.resize", "1.5", r"'preprocess\.resize' takes a int"),
])
def test_bad_preprocess_values_are_refused_naming_the_key(key: str, value: str, pattern: str) -> None:
    _refused(SettingsError, pattern, lambda: Settings().override({key: value}))


def test_a_missing_pillow_is_a_data_error_saying_what_to_install(example, monkeypatch) -> None:
    """Pillow is an optional extra: without it (an import that fails, as on a core install) a folder is refused in one
    line naming the extra; an .npz still reads."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    specs = _specs(example.model)
    _refused(DataError, r"needs Pillow: pip install 'auditor\[images\]'", lambda: data.load(EXAMPLE_IMAGES, specs))
    assert len(data.load(example.clean, specs, limit=3)) == 3
