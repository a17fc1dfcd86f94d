"""Graph-edit primitives the passes share: fresh names, nodes put in front of every reader of a
graph input, per-unit Mul/Min chains, constants' element types. None mutates its input."""

from __future__ import annotations

import copy

import onnx
from onnx import TensorProto, helper

from auditor.graph.units import Unit


def fresh(name: str, taken) -> str:
    """`name`, or `name_1`, `name_2`, ... : the first not in `taken`."""
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    return candidate


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor a node reads or writes, and every graph input."""
    return {n for node in model.graph.node for n in (*node.input, *node.output)} | {v.name for v in model.graph.input}


def rename_reads(node: onnx.NodeProto, renamed: dict[str, str]) -> None:
    """Make `node` (in place; callers pass their own copy) read `renamed[name]` wherever it read `name`, in the
    bodies of control flow too, except where a body defines `name` itself."""
    for i, value in enumerate(node.input):
        if value in renamed:
            node.input[i] = renamed[value]
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            local = {v.name for v in body.input} | {t.name for t in body.initializer}
            local |= {o for inner in body.node for o in inner.output}
            inner_renamed = {k: v for k, v in renamed.items() if k not in local}
            if inner_renamed:
                for inner in body.node:
                    rename_reads(inner, inner_renamed)
                for output in body.output:
                    if output.name in inner_renamed:
                        output.name = inner_renamed[output.name]


def in_front(model: onnx.ModelProto, front: list[onnx.NodeProto], rerouted: dict[str, str]) -> onnx.ModelProto:
    """Copy of `model` with the `front` nodes first and every read of a graph input `name` in
    `rerouted` reading `rerouted[name]` (what the front nodes make of it) instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rest = []
    for node in out.graph.node:
        replaced = copy.deepcopy(node)
        rename_reads(replaced, rerouted)
        rest.append(replaced)
    for output in out.graph.output:
        if output.name in rerouted:
            raise ValueError(f"graph input {output.name} is also an output")
    del out.graph.node[:]
    out.graph.node.extend([*front, *rest])
    return out


def clamp_front(model: onnx.ModelProto, names: list[str], operands) -> onnx.ModelProto:
    """Copy of `model` in which each listed graph input is clamped, Max(Min(x, high), low), before
    anything reads it; `operands(k)` gives the (low, high) tensor names for the k-th input."""
    taken = tensor_names(model)
    clamped, front = {}, []
    for k, name in enumerate(names):
        low, high = operands(k)
        capped, result = fresh(f"{name}__auditor_capped", taken), fresh(f"{name}__auditor_clamped", taken)
        taken |= {capped, result}
        front += [helper.make_node("Min", [name, high], [capped], name=f"__auditor_clamp_min_{k}"),
                  helper.make_node("Max", [capped, low], [result], name=f"__auditor_clamp_max_{k}")]
        clamped[name] = result
    return in_front(model, front, clamped)


def mask_shape(unit: Unit) -> list[int]:
    """Shape that broadcasts a [C] mask along the unit's channel axis (axis is negative)."""
    return [unit.channels] + [1] * (-unit.axis - 1)


def after_units(model: onnx.ModelProto, units: list[Unit], factor_name, bound_name=None) -> onnx.ModelProto:
    """Copy of `model` with Mul(unit.output, factor), then Min(bound) when given,
    after each unit's output. A name function returning None skips that op for the unit."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {name for node in model.graph.node for name in (*node.input, *node.output)}
    taken |= {t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
    plans = {u.name: [step for step in (("Mul", factor_name(u), "mul"), ("Min", bound_name(u) if bound_name else None, "bound_min"))
                      if step[1] is not None] for u in units}
    units = [u for u in units if plans[u.name]]  # a unit with nothing to insert keeps its output's name
    renamed: dict[str, str] = {}
    for u in units:  # fresh names: a repaired model already holds "<output>__auditor_masked"
        renamed[u.output] = fresh(f"{u.output}__auditor_masked", taken)
        taken.add(renamed[u.output])
    node_names = {node.name for node in model.graph.node}  # onnxruntime refuses duplicate node names
    inserted: dict[str, list[onnx.NodeProto]] = {}
    for i, u in enumerate(units):
        steps = plans[u.name]
        chain, current = [], u.output
        for k, (op, operand, tag) in enumerate(steps):
            name = fresh(f"__auditor_{tag}_{i}", node_names)
            node_names.add(name)
            result = renamed[u.output] if k == len(steps) - 1 else fresh(f"{u.output}__auditor_{tag}", taken)
            taken.add(result)
            chain.append(helper.make_node(op, [current, operand], [result], name=name))
            current = result
        inserted[u.output] = chain
    nodes = []
    for node in out.graph.node:
        replaced = onnx.NodeProto()
        replaced.CopyFrom(node)
        rename_reads(replaced, renamed)
        nodes.append(replaced)
        for name in node.output:
            if name in inserted:
                nodes.extend(inserted[name])
    for unit in units:
        if unit.output in {i.name for i in out.graph.input}:
            raise ValueError(f"unit output {unit.output} is a graph input")
    for output in out.graph.output:
        if output.name in renamed:
            output.name = renamed[output.name]  # rare: a hidden unit exported as an output
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def weight_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every constant. A unit's output has its weight's type: Conv, Gemm and
    MatMul bind input, weight and output to one type, and the ops after them keep it."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                types[node.output[0]] = attr.t.data_type
    return types


def elem_type(model: onnx.ModelProto, unit: Unit) -> int:
    """The element type of `unit`'s output (its weight's)."""
    return weight_types(model).get(unit.weight, TensorProto.FLOAT)


def reads(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    """What `node` (of the model `model` was rewritten from) reads as its first input in `model`.
    Rewrites rename the tensors a node reads, never the ones it writes, so outputs identify it."""
    for candidate in model.graph.node:
        if list(candidate.output) == list(node.output):
            return candidate.input[0]
    raise ValueError(f"no node writes {list(node.output)}")
