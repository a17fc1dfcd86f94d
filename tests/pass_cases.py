"""One real graph per unit pattern (tests/graphs.py), loaded as auditor loads it, with the
zero_and_cap pass applied to its "unit": what the tests of the graph passes share
(the `pass_case` fixture in conftest.py builds one per pattern)."""

from __future__ import annotations

from dataclasses import dataclass

import graphs
import numpy as np
import onnx
import pytest
from graphs import Pattern

from auditor.graph.index import GraphIndex
from auditor.graph.passes import PassResult
from auditor.graph.passes.channels import zero_and_cap
from auditor.graph.passes.edit import mask_shape
from auditor.graph.units import Unit, find_units
from auditor.io import runtime

ZEROED = [1, 5]


@dataclass
class PassCase:
    pattern: Pattern
    model: onnx.ModelProto
    before: bytes  # model.SerializeToString() before any pass ran on it
    units: list[Unit]  # prunable units, as the repair passes them
    unit: Unit
    zeroed: dict[str, list[int]]
    result: PassResult  # zero_and_cap(model, units, zeroed)
    x: np.ndarray

    @property
    def input(self) -> str:
        """The graph's one real input (not an initializer)."""
        (name,) = [i.name for i in self.model.graph.input if i.name not in {t.name for t in self.model.graph.initializer}]
        return name


def build(pattern: Pattern, folder) -> PassCase:
    if runtime.max_opset() < pattern.min_opset:
        pytest.skip(f"onnxruntime runs opset <= {runtime.max_opset()}, {pattern.name} needs {pattern.min_opset}")
    model = graphs.load(pattern, folder)
    before = model.SerializeToString()
    units = [u for u in find_units(GraphIndex(model)) if u.prunable]
    (unit,) = [u for u in units if u.name == "unit"]
    zeroed = {"unit": list(ZEROED)}
    result = zero_and_cap(model, units, zeroed)
    return PassCase(pattern, model, before, units, unit, zeroed, result, graphs.samples(pattern, count=4))


def downstream(model: onnx.ModelProto, original: onnx.ModelProto, tensor: str) -> str:
    """The tensor that the layer after `tensor` (in `original`) reads in `model`: `tensor` itself
    when the pass folded, the mask Mul's (or the cap Min's) output when it inserted nodes."""
    consumer = next(n for n in original.graph.node if tensor in n.input)
    slot = list(consumer.input).index(tensor)
    return next(n for n in model.graph.node if n.name == consumer.name).input[slot]


def units_of(model: onnx.ModelProto) -> dict[str, Unit]:
    """The prunable units of `model`, by name."""
    return {u.name: u for u in find_units(GraphIndex(model)) if u.prunable}


def half_the_clean_max(case: PassCase, per_position: bool) -> dict[str, np.ndarray]:
    """Caps at half of the unit's maximum per channel (or per position) on the case's samples."""
    (activation,) = graphs.run(case.model, case.x, [case.unit.output])
    peak = activation.max(axis=0)  # one sample's shape
    if not per_position:
        peak = np.moveaxis(peak, case.unit.axis, -1).reshape(-1, case.unit.channels).max(axis=0)
        peak = peak.reshape(mask_shape(case.unit))
    return {"unit": (0.5 * peak).astype(np.float32)}
