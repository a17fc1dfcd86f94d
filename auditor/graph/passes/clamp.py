"""Pass: clamp graph inputs to a range, Max(Min(x, high), low), before anything reads them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import clamp_front, fresh


def clamp_inputs(model: onnx.ModelProto, clamps: Mapping[str, np.ndarray]) -> PassResult:
    """A copy of `model` in which each graph input `name` of `clamps` ({name: [2, ...] = (low, high)},
    float32) is clamped first. Changes: input name -> "clamp"."""
    names = sorted(clamps)
    if not names:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return ensure(model, PassResult(out), "clamp_inputs")
    taken = {t.name for t in model.graph.initializer}
    pairs, constants = [], []
    for k, name in enumerate(names):
        low, high = np.asarray(clamps[name], dtype=np.float32)
        made = tuple(fresh(f"__auditor_clamp_{side}_const_{k}", taken) for side in ("low", "high"))
        taken.update(made)
        constants += [numpy_helper.from_array(values, tensor) for tensor, values in zip(made, (low, high))]
        pairs.append(made)
    out = clamp_front(model, names, lambda k: pairs[k])
    out.graph.initializer.extend(constants)
    return ensure(model, PassResult(out, {name: "clamp" for name in names}), "clamp_inputs")
