"""Rewrite passes. None mutates its input; each returns a new ModelProto.

- `with_mask_inputs`: every prunable unit's output multiplied by a graph input, so one
  session can try any set of zeroed channels (the fidelity guard's search).
- `zero_channels`: the repaired model. Exact folding into initializers where the chain
  maps 0 to 0 (BN gamma/beta, else kernel slice and bias, and per-channel Adds after
  them); otherwise a constant mask Mul after the unit's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from auditor.graph import GraphIndex
from auditor.units import Unit

MASK_PREFIX = "__auditor_mask_"


@dataclass(frozen=True)
class RewriteResult:
    """The repaired model and, per unit name, how its channels were zeroed ("fold" or "mask")."""

    model: onnx.ModelProto
    how: dict[str, str]


def mask_shape(unit: Unit) -> list[int]:
    """Shape that broadcasts a [C] mask along the unit's channel axis (axis is negative)."""
    return [unit.channels] + [1] * (-unit.axis - 1)


def _with_muls(model: onnx.ModelProto, units: list[Unit], factor_name) -> onnx.ModelProto:
    """Copy of `model` with Mul(unit.output, factor) inserted after each unit's output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    renamed = {u.output: f"{u.output}__auditor_masked" for u in units}
    muls = {u.output: helper.make_node("Mul", [u.output, factor_name(u)], [renamed[u.output]], name=f"__auditor_mask_mul_{i}") for i, u in enumerate(units)}
    nodes = []
    for node in out.graph.node:
        replaced = onnx.NodeProto()
        replaced.CopyFrom(node)
        for i, name in enumerate(replaced.input):
            if name in renamed:
                replaced.input[i] = renamed[name]
        nodes.append(replaced)
        for name in node.output:
            if name in muls:
                nodes.append(muls[name])
    for unit in units:
        if unit.output in {i.name for i in out.graph.input}:
            raise ValueError(f"unit output {unit.output} is a graph input")
    for output in out.graph.output:
        if output.name in renamed:
            output.name = renamed[output.name]  # rare: a hidden unit exported as an output
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def with_mask_inputs(model: onnx.ModelProto, units: list[Unit]) -> onnx.ModelProto:
    """The model with a float mask input per unit (feed ones to reproduce the original)."""
    out = _with_muls(model, units, lambda u: MASK_PREFIX + str(units.index(u)))
    for position, unit in enumerate(units):
        out.graph.input.append(helper.make_tensor_value_info(MASK_PREFIX + str(position), TensorProto.FLOAT, mask_shape(unit)))
    return out


def mask_feed(units: list[Unit], zeroed: dict[str, list[int]]) -> dict[str, np.ndarray]:
    feed = {}
    for position, unit in enumerate(units):
        mask = np.ones(unit.channels, dtype=np.float32)
        mask[zeroed.get(unit.name, [])] = 0.0
        feed[MASK_PREFIX + str(position)] = mask.reshape(mask_shape(unit))
    return feed


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


def zero_channels(model: onnx.ModelProto, units: list[Unit], zeroed: dict[str, list[int]], provenance: dict[str, str]) -> RewriteResult:
    """A copy of `model` whose listed channels output exactly zero, with provenance metadata."""
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
                name = _fresh(f"{name}__auditor_{unit.name}", inits)
                node.input[slot] = name
                tensor = numpy_helper.from_array(array, name)
                out.graph.initializer.append(tensor)
                inits[name] = tensor
            else:
                inits[name].CopyFrom(numpy_helper.from_array(array, name))
    if masked:
        constants = []
        for position, unit in enumerate(masked):
            mask = np.ones(unit.channels, dtype=np.float32)
            mask[sorted(set(zeroed[unit.name]))] = 0.0
            name = _fresh(f"__auditor_mask_const_{position}", inits)
            constants.append(numpy_helper.from_array(mask.reshape(mask_shape(unit)), name))
        names = {u.name: c.name for u, c in zip(masked, constants)}
        out = _with_muls(out, masked, lambda u: names[u.name])
        out.graph.initializer.extend(constants)
    for key, value in sorted(provenance.items()):
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    return RewriteResult(model=out, how=how)


def _fresh(name: str, taken) -> str:
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    return candidate


def provenance(version: str, source_sha256: str, zeroed: dict[str, list[int]], method: str) -> dict[str, str]:
    """metadata_props written into a repaired model (deterministic, no timestamps)."""
    return {
        "auditor.version": version,
        "auditor.source_sha256": source_sha256,
        "auditor.method": method,
        "auditor.zeroed_channels": json.dumps({k: sorted(v) for k, v in sorted(zeroed.items()) if v}, sort_keys=True),
    }
