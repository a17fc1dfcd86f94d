"""The notch_input pass under onnxruntime: one spatial frequency leaves the image input, in every
layout, exactly as the guard's Notch.apply removes it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from auditor.detect.fourier import render
from auditor.detect.images import from_images, to_images
from auditor.graph.passes.notch import notch_input
from auditor.io.data import Samples
from auditor.mitigation.filters import Notch, notch_basis

# One image input per layout the notch must handle: (batch shape, image axes, element type).
LAYOUTS = [
    ([3, 2, 28, 28], (2, 3), TensorProto.FLOAT),  # NCHW, two channels
    ([3, 28, 28, 3], (1, 2), TensorProto.FLOAT),  # NHWC (Keras)
    ([3, 784], (1, 2), TensorProto.DOUBLE),  # flat float64 vectors (scikit-learn)
]


def _identity(shape: list[int], elem: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", elem, ["n", *shape[1:]])
    y = helper.make_tensor_value_info("y", elem, ["n", *shape[1:]])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("shape", "axes", "elem"), LAYOUTS)
def test_the_pass_leaves_its_input_alone_and_names_what_it_did(shape: list[int], axes: tuple[int, ...], elem: int) -> None:
    model = _identity(shape, elem)
    before = model.SerializeToString()
    result = notch_input(model, "x", axes, notch_basis((0, 6), 28, 28))
    assert model.SerializeToString() == before
    assert result.model is not model and len(result.model.graph.node) > len(model.graph.node)
    assert result.changes == {"x": "notch"}
    assert result.model.graph.node[-1].input[0] != "x", "the model's own nodes read the notched input"


@pytest.mark.parametrize(("shape", "axes", "elem"), LAYOUTS)
def test_the_notch_graph_removes_one_frequency_as_the_guard_does(shape: list[int], axes: tuple[int, ...], elem: int) -> None:
    """onnxruntime runs the rewritten input: a sinusoid of the notched frequency disappears, every
    phase of it, another frequency passes untouched, and the graph computes what Notch.apply does."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(dtype)
    found = Notch("x", axes, (0, 6), notch_basis((0, 6), 28, 28))
    notched = notch_input(_identity(shape, elem), "x", axes, found.basis).model
    onnx.checker.check_model(notched)
    session = ort.InferenceSession(notched.SerializeToString(), providers=["CPUExecutionProvider"])
    run = lambda a: session.run(None, {"x": a.astype(dtype)})[0]  # noqa: E731

    channels = to_images(x, axes).shape[3]

    def wave(u: int, v: int, phase: float) -> np.ndarray:
        image = render([(u, v, phase)], 28, 28)[0]
        return from_images(np.broadcast_to(image[None, :, :, None], (len(x), 28, 28, channels)).copy(), x, axes)

    assert np.allclose(run(x), found.apply(Samples({"x": x}, None, "x")).inputs["x"], atol=1e-5)
    for phase in (0.0, 1.0, 2.5):
        assert np.allclose(run(x + 0.3 * wave(0, 6, phase)), run(x), atol=1e-5)
    other = 0.3 * wave(2, 3, 0.4)
    assert np.allclose(run(x + other) - run(x), other, atol=1e-5)


def test_a_one_phase_basis_removes_only_that_phase() -> None:
    """The narrow notch's basis has one column: its phase goes, the phase a quarter turn away stays."""
    image = render([(0, 6, 0.4)], 28, 28)[0].ravel().astype(np.float64)
    basis = (image / np.linalg.norm(image))[:, None]
    model = notch_input(_identity([3, 1, 28, 28], TensorProto.FLOAT), "x", (2, 3), basis).model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    same = render([(0, 6, 0.4)], 28, 28)[0][None, None]
    quarter = render([(0, 6, 0.4 + np.pi / 2)], 28, 28)[0][None, None]
    (gone,) = session.run(None, {"x": same})
    (kept,) = session.run(None, {"x": quarter})
    assert np.abs(gone).max() < 1e-4 and np.allclose(kept, quarter, atol=1e-4)
