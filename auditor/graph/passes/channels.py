"""Pass: zero channels and cap activations of hidden units.

Zeroing folds exactly into initializers where the chain maps 0 to 0 (BN gamma/beta, else kernel
slice and bias, and per-channel Adds after them); otherwise a constant mask Mul follows the unit.
Caps are a Min after the unit (per channel, or per position: any shape that broadcasts against
one sample). Mask first, then cap: the order the guard measured.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from auditor.graph.index import GraphIndex
from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import after_units, fresh, mask_shape, weight_types
from auditor.graph.units import Unit


def _foldable(index: GraphIndex, unit: Unit) -> bool:
    if not unit.zero_preserving:
        return False
    names = [unit.weight] + ([unit.bias] if unit.bias else [])
    if unit.bias and index.constant(unit.bias).size != unit.channels:
        return False  # a scalar or full-matrix Gemm C cannot be zeroed per channel
    if unit.bn is not None:
        names += list(index.node(unit.bn).input[1:3])
    for affine in unit.affines:
        if affine.op in ("Add", "Sub"):
            if not affine.per_channel:
                return False
            names.append(affine.constant)
    return all(name in index.initializers for name in names)


def zero_and_cap(model: onnx.ModelProto, units: list[Unit], zeroed: Mapping[str, list[int]],
                 caps: Mapping[str, np.ndarray] | None = None) -> PassResult:
    """A copy of `model` whose listed channels output exactly zero and whose units' outputs are
    capped by `caps` (unit name -> bound). Changes: unit -> fold | mask | bound | fold+bound | mask+bound."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    uses: dict[str, int] = {}
    for node in out.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    inits = {t.name: t for t in out.graph.initializer}
    how: dict[str, str] = {}
    masked: list[Unit] = []
    for unit in units:
        channels = sorted(set(zeroed.get(unit.name, [])))
        if not channels:
            continue
        if not _foldable(index, unit):
            masked.append(unit)
            how[unit.name] = "mask"
            continue
        how[unit.name] = "fold"
        edits: list[tuple[int, int, int | None]] = [(unit.node, 1, unit.weight_axis)]  # (node, input slot, axis)
        if unit.bias:
            edits.append((unit.node, 2, None))
        if unit.bn is not None:
            edits += [(unit.bn, 1, 0), (unit.bn, 2, 0)]
            edits = [e for e in edits if e[0] == unit.bn]  # zero gamma and beta: BN output is 0
        for affine in unit.affines:
            if affine.op in ("Add", "Sub"):
                node = out.graph.node[affine.node]
                edits.append((affine.node, list(node.input).index(affine.constant), None))
        for node_position, slot, axis in edits:
            node = out.graph.node[node_position]
            name = node.input[slot]
            array = numpy_helper.to_array(inits[name]).copy()
            if axis is None:  # per-channel constant of any broadcast shape: flat order = channel
                flat = array.reshape(-1)
                flat[channels] = 0
                array = flat.reshape(array.shape)
            else:
                np.moveaxis(array, axis, 0)[channels] = 0
            if uses.get(name, 0) > 1:  # shared: give this node its own copy
                uses[name] -= 1  # the last user left edits the original in place: none goes unused
                name = fresh(f"{name}__auditor_{unit.name}", inits)
                uses[name] = 1
                node.input[slot] = name
                tensor = numpy_helper.from_array(array, name)
                out.graph.initializer.append(tensor)
                inits[name] = tensor
            else:
                inits[name].CopyFrom(numpy_helper.from_array(array, name))
    types = weight_types(out)
    constants: list[onnx.TensorProto] = []
    factors: dict[str, str] = {}
    bounded: dict[str, str] = {}

    def constant(prefix: str, unit: Unit, values: np.ndarray) -> str:
        """A [C] constant in the unit's own type (Mul and Min bind both inputs to one type)."""
        dtype = helper.tensor_dtype_to_np_dtype(types.get(unit.weight, TensorProto.FLOAT))
        name = fresh(f"{prefix}{len(constants)}", inits)
        values = np.asarray(values, dtype=dtype)
        tensor = numpy_helper.from_array(values.reshape(mask_shape(unit)) if values.size == unit.channels else values, name)
        constants.append(tensor)
        inits[name] = tensor
        return name

    for unit in masked:
        mask = np.ones(unit.channels)
        mask[sorted(set(zeroed[unit.name]))] = 0.0
        factors[unit.name] = constant("__auditor_mask_const_", unit, mask)
    for unit in units:
        if caps and unit.name in caps and np.isfinite(caps[unit.name]).any():  # an all-infinite cap is no cap: no node
            bounded[unit.name] = constant("__auditor_bound_const_", unit, caps[unit.name])
            how[unit.name] = how[unit.name] + "+bound" if unit.name in how else "bound"
    touched = [u for u in units if u.name in factors or u.name in bounded]
    if touched:
        out = after_units(out, touched, lambda u: factors.get(u.name), lambda u: bounded.get(u.name))
    if constants:
        out.graph.initializer.extend(constants)
    return ensure(model, PassResult(out, how), "zero_and_cap")
