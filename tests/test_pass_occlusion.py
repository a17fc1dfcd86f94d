"""The occlude_input pass under onnxruntime: one window of the image input holds the clean mean, in
every layout, exactly as the guard's Occlusion.apply fills it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from auditor.detect.images import to_images
from auditor.detect.patch import Patch
from auditor.graph.passes.occlusion import occlude_input
from auditor.io.data import Samples
from auditor.mitigation.filters import occlusion

# One image input per layout the occlusion must handle: (batch shape, image axes, element type).
LAYOUTS = [
    ((3, 2, 28, 28), (2, 3), TensorProto.FLOAT),  # NCHW, two channels
    ((3, 28, 28, 3), (1, 2), TensorProto.FLOAT),  # NHWC (Keras)
    ((3, 784), (1, 2), TensorProto.DOUBLE),  # flat float64 vectors (scikit-learn)
]


def _identity(shape: tuple[int, ...], elem: int) -> onnx.ModelProto:
    tensor = helper.make_tensor_value_info("x", elem, ["n", *shape[1:]])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [tensor],
                              [helper.make_tensor_value_info("y", elem, ["n", *shape[1:]])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _found(dtype) -> Patch:
    """A 4x4 patch at row 24, column 5 of a 28x28 image."""
    return Patch(1.0, 0, 1.0, 24, 5, np.ones((4, 4, 1), dtype), 0.0)


@pytest.mark.parametrize(("shape", "axes", "elem"), LAYOUTS)
def test_the_pass_leaves_its_input_alone_and_names_what_it_did(shape: tuple[int, ...], axes: tuple[int, ...], elem: int) -> None:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    covered = occlusion(Samples({"x": np.random.default_rng(2).random(shape).astype(dtype)}, None, "x"), _found(dtype), 1)
    model = _identity(shape, elem)
    before = model.SerializeToString()
    result = occlude_input(model, "x", covered.keep, covered.fill)
    assert model.SerializeToString() == before
    assert result.model is not model and [n.op_type for n in result.model.graph.node] == ["Mul", "Add", "Identity"]
    assert result.changes == {"x": "occlude"}


@pytest.mark.parametrize(("shape", "axes", "elem"), LAYOUTS)
def test_the_occlusion_graph_covers_the_window_as_the_guard_does(shape: tuple[int, ...], axes: tuple[int, ...], elem: int) -> None:
    """onnxruntime runs the rewritten input: inside the window (the patch and one pixel around it,
    clipped to the image) every channel holds the samples' mean, outside it the input passes, and
    the graph computes what Occlusion.apply does."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    x = np.random.default_rng(0).random(shape).astype(dtype)
    samples = Samples({"x": x}, None, "x")
    covered = occlusion(samples, _found(dtype), 1)
    assert covered is not None and covered.window == (23, 4, 5, 6)  # rows 23-27 (the image ends), columns 4-9
    model = occlude_input(_identity(shape, elem), "x", covered.keep, covered.fill).model
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x})
    assert got.dtype == dtype
    assert np.allclose(got, covered.apply(samples).inputs["x"], atol=1e-6)
    images, before = to_images(got, axes), to_images(x, axes)
    assert np.allclose(images[:, 23:28, 4:10, :], before.mean(axis=0)[23:28, 4:10, :], atol=1e-6)
    outside = np.ones(images.shape[1:], dtype=bool)
    outside[23:28, 4:10, :] = False
    assert np.array_equal(images[:, outside], before[:, outside])
