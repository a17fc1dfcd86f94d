"""Pass: replace one window of an input by constants, x * keep + fill, before anything reads it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import fresh, in_front, tensor_names


def occlude_input(model: onnx.ModelProto, name: str, keep: np.ndarray, fill: np.ndarray) -> PassResult:
    """A copy of `model` in which the input `name` becomes x * keep + fill (`keep`, `fill`: one
    sample's shape, broadcast over the batch). Changes: input name -> "occlude"."""
    tensor = next(v.type.tensor_type for v in model.graph.input if v.name == name)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    taken = tensor_names(model) | {t.name for t in model.graph.initializer}
    names = []
    for suffix in ("keep", "fill", "kept", "result"):
        names.append(fresh(f"{name}__auditor_occlude_{suffix}", taken))
        taken.add(names[-1])
    keep_name, fill_name, kept, result = names
    front = [helper.make_node("Mul", [name, keep_name], [kept], name="__auditor_occlude_0"),
             helper.make_node("Add", [kept, fill_name], [result], name="__auditor_occlude_1")]
    out = in_front(model, front, {name: result})
    out.graph.initializer.extend([numpy_helper.from_array(np.asarray(keep, dtype=dtype), keep_name),
                                  numpy_helper.from_array(np.asarray(fill, dtype=dtype), fill_name)])
    return ensure(model, PassResult(out, {name: "occlude"}), "occlude_input")
