"""Pass: remove one spatial frequency (the span of an orthonormal basis) from an image input."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import fresh, in_front, tensor_names


def notch_input(model: onnx.ModelProto, name: str, axes: tuple[int, ...], basis: np.ndarray) -> PassResult:
    """A copy of `model` in which the image input `name` loses the span of `basis` ([H*W, k]) on
    every channel before anything reads it: x - reshape(Q (Q^T x)), with x viewed as [N, C, H*W]
    (NCHW), [N, H*W, C] (NHWC) or [N, H*W]. Changes: input name -> "notch"."""
    tensor = next(v.type.tensor_type for v in model.graph.input if v.name == name)
    rank, dtype = len(tensor.shape.dim), helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    pixels = basis.shape[0]
    taken = tensor_names(model) | {t.name for t in model.graph.initializer}

    def made(suffix: str) -> str:
        new = fresh(f"{name}__auditor_notch_{suffix}", taken)
        taken.add(new)
        return new

    q, q_t, view_shape, shape, flat, coefficients, component, removed, result = (
        made(key) for key in ("basis", "basis_t", "view", "shape", "flat", "coefficients", "component", "removed", "result"))
    if rank == 4 and axes == (1, 2):  # [N, H, W, C] -> [N, HW, C]; Q (Q^T x)
        view = [0, pixels, -1]
        project = [helper.make_node("MatMul", [q_t, flat], [coefficients]),
                   helper.make_node("MatMul", [q, coefficients], [component])]
    else:  # [N, C, H, W] -> [N, C, HW], or [N, H, W] / [N, HW] -> [N, HW]; (x Q) Q^T
        view = [0, -1, pixels] if rank == 4 else [0, pixels]
        project = [helper.make_node("MatMul", [flat, q], [coefficients]),
                   helper.make_node("MatMul", [coefficients, q_t], [component])]
    front = [helper.make_node("Reshape", [name, view_shape], [flat]), *project,
             helper.make_node("Shape", [name], [shape]),
             helper.make_node("Reshape", [component, shape], [removed]),
             helper.make_node("Sub", [name, removed], [result])]
    for k, node in enumerate(front):
        node.name = f"__auditor_notch_{k}"
    out = in_front(model, front, {name: result})
    values = np.asarray(basis, dtype=dtype)
    out.graph.initializer.extend([numpy_helper.from_array(values, q),
                                  numpy_helper.from_array(np.ascontiguousarray(values.T), q_t),
                                  numpy_helper.from_array(np.asarray(view, dtype=np.int64), view_shape)])
    return ensure(model, PassResult(out, {name: "notch"}), "notch_input")
