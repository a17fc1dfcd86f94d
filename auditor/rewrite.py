"""Rewrite passes. None mutates its input; each returns a new ModelProto.

- `with_mask_inputs`: every prunable unit's output multiplied by a graph input, so one
  session can try any set of zeroed channels (the fidelity guard's search).
- `zero_channels`: the repaired model. Exact folding into initializers where the chain
  maps 0 to 0 (BN gamma/beta, else kernel slice and bias, and per-channel Adds after
  them); otherwise a constant mask Mul after the unit's output.
- `with_head_correction`: an affine correction added to the classifier head's output
  (head unlearning, auditor/unlearn.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from auditor.graph import GraphIndex
from auditor.patch import fill_text, window_text
from auditor.units import Unit

MASK_PREFIX = "__auditor_mask_"
BOUND_PREFIX = "__auditor_bound_"
CLAMP_PREFIX = "__auditor_clamp_"
HEAD_INPUTS = ("__auditor_head_weight_in", "__auditor_head_bias_in")  # the guard's head correction, fed
INPUT_KEY = "@input:"  # a bounds entry under INPUT_KEY + graph input name: [2, ...] = (low, high) of that input


def input_key(name: str) -> str:
    return INPUT_KEY + name


def _with_input_clamps(model: onnx.ModelProto, names: list[str], operands) -> onnx.ModelProto:
    """Copy of `model` in which each listed graph input is clamped, Max(Min(x, high), low), before
    anything reads it; `operands(k)` gives the (low, high) tensor names for the k-th input."""
    taken = _names(model)
    clamped, front = {}, []
    for k, name in enumerate(names):
        low, high = operands(k)
        capped, result = _fresh(f"{name}__auditor_capped", taken), _fresh(f"{name}__auditor_clamped", taken)
        taken |= {capped, result}
        front += [helper.make_node("Min", [name, high], [capped], name=f"__auditor_clamp_min_{k}"),
                  helper.make_node("Max", [capped, low], [result], name=f"__auditor_clamp_max_{k}")]
        clamped[name] = result
    return _in_front(model, front, clamped)


def _names(model: onnx.ModelProto) -> set[str]:
    return {n for node in model.graph.node for n in (*node.input, *node.output)} | {v.name for v in model.graph.input}


def _in_front(model: onnx.ModelProto, front: list[onnx.NodeProto], rerouted: dict[str, str]) -> onnx.ModelProto:
    """Copy of `model` with the `front` nodes first and every read of a graph input `name` in
    `rerouted` reading `rerouted[name]` (what the front nodes make of it) instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rest = []
    for node in out.graph.node:
        replaced = copy.deepcopy(node)
        for i, value in enumerate(replaced.input):
            if value in rerouted:
                replaced.input[i] = rerouted[value]
        rest.append(replaced)
    for output in out.graph.output:
        if output.name in rerouted:
            raise ValueError(f"graph input {output.name} is also an output")
    del out.graph.node[:]
    out.graph.node.extend([*front, *rest])
    return out


def with_input_notch(model: onnx.ModelProto, name: str, axes: tuple[int, ...], basis: np.ndarray) -> onnx.ModelProto:
    """Copy of `model` in which the image input `name` loses the span of `basis` ([H*W, k], one
    spatial frequency: see auditor.fourier.notch_basis) on every channel before anything reads it:
    x - reshape(Q (Q^T x)), with x viewed as [N, C, H*W] (NCHW), [N, H*W, C] (NHWC) or [N, H*W]."""
    tensor = next(v.type.tensor_type for v in model.graph.input if v.name == name)
    rank, dtype = len(tensor.shape.dim), helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    pixels = basis.shape[0]
    taken = _names(model) | {t.name for t in model.graph.initializer}

    def fresh(suffix: str) -> str:
        made = _fresh(f"{name}__auditor_notch_{suffix}", taken)
        taken.add(made)
        return made

    q, q_t, view_shape, shape, flat, coefficients, component, removed, result = (
        fresh(key) for key in ("basis", "basis_t", "view", "shape", "flat", "coefficients", "component", "removed", "result"))
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
    out = _in_front(model, front, {name: result})
    values = np.asarray(basis, dtype=dtype)
    out.graph.initializer.extend([numpy_helper.from_array(values, q),
                                  numpy_helper.from_array(np.ascontiguousarray(values.T), q_t),
                                  numpy_helper.from_array(np.asarray(view, dtype=np.int64), view_shape)])
    return out


def with_input_fill(model: onnx.ModelProto, name: str, keep: np.ndarray, fill: np.ndarray,
                    ring: np.ndarray | None = None, axes: tuple[int, ...] = ()) -> onnx.ModelProto:
    """Copy of `model` in which the input `name` becomes x * keep + fill before anything reads it,
    plus, with a `ring`, ReduceSum(x * ring, axes) * (1 - keep): the window takes the mean of the
    pixels around it (`keep`, `fill`, `ring`: one sample's shape, broadcast over the batch; see
    auditor.patch.Occlusion)."""
    tensor = next(v.type.tensor_type for v in model.graph.input if v.name == name)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    taken = _names(model) | {t.name for t in model.graph.initializer}

    def fresh(*suffixes: str) -> list[str]:
        made = []
        for suffix in suffixes:
            made.append(_fresh(f"{name}__auditor_occlude_{suffix}", taken))
            taken.add(made[-1])
        return made

    keep_name, fill_name, kept, result = fresh("keep", "fill", "kept", "result")
    constants = {keep_name: np.asarray(keep, dtype=dtype), fill_name: np.asarray(fill, dtype=dtype)}
    front = [helper.make_node("Mul", [name, keep_name], [kept], name="__auditor_occlude_0")]
    if ring is None:
        front.append(helper.make_node("Add", [kept, fill_name], [result], name="__auditor_occlude_1"))
    else:
        ring_name, inside_name, weighed, around, spread, filled, axes_name = fresh(
            "ring", "inside", "weighed", "around", "spread", "filled", "axes")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        if opset >= 13:  # the axes of ReduceSum became an input in opset 13
            reduce = helper.make_node("ReduceSum", [weighed, axes_name], [around], keepdims=1, name="__auditor_occlude_3")
            constants[axes_name] = np.asarray(axes, dtype=np.int64)
        else:
            reduce = helper.make_node("ReduceSum", [weighed], [around], axes=list(axes), keepdims=1, name="__auditor_occlude_3")
        front += [helper.make_node("Add", [kept, fill_name], [filled], name="__auditor_occlude_1"),
                  helper.make_node("Mul", [name, ring_name], [weighed], name="__auditor_occlude_2"),
                  reduce,
                  helper.make_node("Mul", [around, inside_name], [spread], name="__auditor_occlude_4"),
                  helper.make_node("Add", [filled, spread], [result], name="__auditor_occlude_5")]
        constants.update({ring_name: np.asarray(ring, dtype=dtype), inside_name: 1 - constants[keep_name]})
    out = _in_front(model, front, {name: result})
    out.graph.initializer.extend([numpy_helper.from_array(value, key) for key, value in constants.items()])
    return out


@dataclass(frozen=True)
class RewriteResult:
    """The repaired model and, per unit name, how its channels were zeroed ("fold" or "mask")."""

    model: onnx.ModelProto
    how: dict[str, str]


def mask_shape(unit: Unit) -> list[int]:
    """Shape that broadcasts a [C] mask along the unit's channel axis (axis is negative)."""
    return [unit.channels] + [1] * (-unit.axis - 1)


def _with_muls(model: onnx.ModelProto, units: list[Unit], factor_name, bound_name=None) -> onnx.ModelProto:
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
        renamed[u.output] = _fresh(f"{u.output}__auditor_masked", taken)
        taken.add(renamed[u.output])
    node_names = {node.name for node in model.graph.node}  # onnxruntime refuses duplicate node names
    inserted: dict[str, list[onnx.NodeProto]] = {}
    for i, u in enumerate(units):
        steps = plans[u.name]
        chain, current = [], u.output
        for k, (op, operand, tag) in enumerate(steps):
            name = _fresh(f"__auditor_{tag}_{i}", node_names)
            node_names.add(name)
            result = renamed[u.output] if k == len(steps) - 1 else _fresh(f"{u.output}__auditor_{tag}", taken)
            taken.add(result)
            chain.append(helper.make_node(op, [current, operand], [result], name=name))
            current = result
        inserted[u.output] = chain
    nodes = []
    for node in out.graph.node:
        replaced = onnx.NodeProto()
        replaced.CopyFrom(node)
        for i, name in enumerate(replaced.input):
            if name in renamed:
                replaced.input[i] = renamed[name]
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


def with_mask_inputs(model: onnx.ModelProto, units: list[Unit], bound: bool = False,
                     clamp: tuple[str, ...] = (), masks: bool = True) -> onnx.ModelProto:
    """The model with a float mask input per unit (feed ones to reproduce the original); with
    `bound`, a per-channel upper bound after it (feed +inf to reproduce the original); with `clamp`,
    low and high inputs that clamp those float32 graph inputs first (feed -inf and +inf). Without
    `masks` (a repair that zeroes nothing), no mask inputs: their all-ones Muls only cost time."""
    position = {u.name: i for i, u in enumerate(units)}
    types = weight_types(model)
    casts: list[onnx.NodeProto] = []

    def read(prefix: str, u: Unit) -> str:
        """The input's name, or its Cast when the unit is not float32 (Mul needs one type; feeds stay float32)."""
        name, elem = prefix + str(position[u.name]), types.get(u.weight, TensorProto.FLOAT)
        if elem == TensorProto.FLOAT:
            return name
        casts.append(helper.make_node("Cast", [name], [f"{name}__auditor_cast"], to=elem, name=f"{name}__auditor_cast"))
        return f"{name}__auditor_cast"

    bound_name = (lambda u: read(BOUND_PREFIX, u)) if bound else None
    out = _with_muls(model, units, (lambda u: read(MASK_PREFIX, u)) if masks else (lambda u: None), bound_name)
    if casts:  # graph inputs exist from the start: the casts go first, in topological order
        rest = [copy.deepcopy(node) for node in out.graph.node]
        del out.graph.node[:]
        out.graph.node.extend([*casts, *rest])
    for i, unit in enumerate(units):
        if masks:
            out.graph.input.append(helper.make_tensor_value_info(MASK_PREFIX + str(i), TensorProto.FLOAT, mask_shape(unit)))
        if bound:  # any shape that broadcasts: per channel [C, 1, ..] or per position (one sample's shape)
            out.graph.input.append(helper.make_tensor_value_info(BOUND_PREFIX + str(i), TensorProto.FLOAT, None))
    if clamp:
        out = _with_input_clamps(out, list(clamp), lambda k: (f"{CLAMP_PREFIX}low_{k}", f"{CLAMP_PREFIX}high_{k}"))
        for k in range(len(clamp)):
            for side in ("low", "high"):
                out.graph.input.append(helper.make_tensor_value_info(f"{CLAMP_PREFIX}{side}_{k}", TensorProto.FLOAT, None))
    return out


def clamp_feed(clamp: tuple[str, ...], bounds: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Feeds for the clamp inputs of `with_mask_inputs`: each input's (low, high), else (-inf, +inf)."""
    feed = {}
    for k, name in enumerate(clamp):
        pair = (bounds or {}).get(input_key(name))
        low, high = (np.float32(-np.inf), np.float32(np.inf)) if pair is None else pair
        feed[f"{CLAMP_PREFIX}low_{k}"] = np.asarray(low, np.float32).reshape(np.shape(low) or (1,))
        feed[f"{CLAMP_PREFIX}high_{k}"] = np.asarray(high, np.float32).reshape(np.shape(high) or (1,))
    return feed


def mask_feed(units: list[Unit], zeroed: dict[str, list[int]],
              bounds: dict[str, np.ndarray] | None = None, masks: bool = True) -> dict[str, np.ndarray]:
    """Feeds for `with_mask_inputs`: zeros at the listed channels, ones elsewhere (with `masks`);
    with `bounds` (a dict, possibly empty), each unit's bound [C] or +inf where none is given."""
    if zeroed and not masks:
        raise ValueError("channels to zero, but the graph was built without mask inputs")
    feed = {}
    for position, unit in enumerate(units):
        if masks:
            mask = np.ones(unit.channels, dtype=np.float32)
            mask[zeroed.get(unit.name, [])] = 0.0
            feed[MASK_PREFIX + str(position)] = mask.reshape(mask_shape(unit))
        if bounds is not None:
            bound = bounds.get(unit.name)
            bound = np.full(mask_shape(unit), np.inf, np.float32) if bound is None else np.asarray(bound, np.float32)
            feed[BOUND_PREFIX + str(position)] = bound.reshape(mask_shape(unit)) if bound.size == unit.channels else bound
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


def zero_channels(
    model: onnx.ModelProto, units: list[Unit], zeroed: dict[str, list[int]], provenance: dict[str, str],
    bounds: dict[str, np.ndarray] | None = None,
) -> RewriteResult:
    """A copy of `model` whose listed channels output exactly zero and, with `bounds`, whose
    units' outputs are capped per channel (a Min after them), with provenance metadata."""
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
                name = _fresh(f"{name}__auditor_{unit.name}", inits)
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
    caps: dict[str, str] = {}

    def constant(prefix: str, unit: Unit, values: np.ndarray) -> str:
        """A [C] constant in the unit's own type (Mul and Min bind both inputs to one type)."""
        dtype = helper.tensor_dtype_to_np_dtype(types.get(unit.weight, TensorProto.FLOAT))
        name = _fresh(f"{prefix}{len(constants)}", inits)
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
        if bounds and unit.name in bounds:
            caps[unit.name] = constant("__auditor_bound_const_", unit, bounds[unit.name])
            how[unit.name] = how[unit.name] + "+bound" if unit.name in how else "bound"
    touched = [u for u in units if u.name in factors or u.name in caps]
    if touched:  # mask first, then bound: the order the guard measured
        out = _with_muls(out, touched, lambda u: factors.get(u.name), lambda u: caps.get(u.name))
    clamped = sorted(key[len(INPUT_KEY):] for key in (bounds or {}) if key.startswith(INPUT_KEY))
    if clamped:
        pairs = []
        for k, name in enumerate(clamped):
            low, high = np.asarray(bounds[input_key(name)], dtype=np.float32)
            names = tuple(_fresh(f"__auditor_clamp_{side}_const_{k}", inits) for side in ("low", "high"))
            for tensor_name, values in zip(names, (low, high)):
                tensor = numpy_helper.from_array(values, tensor_name)
                constants.append(tensor)
                inits[tensor_name] = tensor
            pairs.append(names)
        out = _with_input_clamps(out, clamped, lambda k: pairs[k])
        how.update({input_key(name): "clamp" for name in clamped})
    if constants:
        out.graph.initializer.extend(constants)
    existing = {entry.key: entry for entry in out.metadata_props}
    for key, value in sorted(provenance.items()):  # overwrite on a second repair: onnx.checker rejects duplicate keys
        entry = existing[key] if key in existing else out.metadata_props.add()
        entry.key, entry.value = key, value
    return RewriteResult(model=out, how=how)


def reads(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    """What `node` (of the model `model` was rewritten from) reads as its first input in `model`.
    Rewrites rename the tensors a node reads, never the ones it writes, so outputs identify it."""
    for candidate in model.graph.node:
        if list(candidate.output) == list(node.output):
            return candidate.input[0]
    raise ValueError(f"no node writes {list(node.output)}")


def with_head_correction(model: onnx.ModelProto, head: Unit, features: str, matrix: np.ndarray | None = None,
                         bias: np.ndarray | None = None, inputs: tuple[str, str] | None = None) -> onnx.ModelProto:
    """Copy of `model` whose head output gains features @ matrix.T + bias ([K, F], [K]): the node
    that wrote the head output writes a fresh tensor, and an Add writes the original name, so every
    reader (and a graph output of that name) sees the corrected scores. With `inputs`, the weight
    [F, K] and the bias [K] are graph inputs of those names instead (the guard feeds them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n for node in out.graph.node for n in (*node.input, *node.output)}
    taken |= {t.name for t in out.graph.initializer} | {v.name for v in out.graph.input}
    node_names = {node.name for node in out.graph.node}
    producer = next(i for i, node in enumerate(out.graph.node) if head.output in node.output)
    elem = weight_types(out).get(head.weight, TensorProto.FLOAT)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    raw, product, shift = (_fresh(f"{head.output}__auditor_{tag}", taken) for tag in ("raw", "product", "shift"))
    if inputs is not None:
        weight_name, bias_name = inputs
        out.graph.input.extend([helper.make_tensor_value_info(weight_name, elem, None),
                                helper.make_tensor_value_info(bias_name, elem, None)])
    else:
        weight_name, bias_name = _fresh("__auditor_head_weight", taken), _fresh("__auditor_head_bias", taken)
        out.graph.initializer.extend([numpy_helper.from_array(np.asarray(matrix, dtype).T.copy(), weight_name),
                                      numpy_helper.from_array(np.asarray(bias, dtype), bias_name)])
    node = out.graph.node[producer]
    node.output[list(node.output).index(head.output)] = raw
    added = [helper.make_node("MatMul", [features, weight_name], [product], name=_fresh("__auditor_head_matmul", node_names)),
             helper.make_node("Add", [product, bias_name], [shift], name=_fresh("__auditor_head_bias_add", node_names)),
             helper.make_node("Add", [raw, shift], [head.output], name=_fresh("__auditor_head_add", node_names))]
    nodes = [copy.deepcopy(n) for n in out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend([*nodes[: producer + 1], *added, *nodes[producer + 1 :]])
    return out


def _fresh(name: str, taken) -> str:
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    return candidate


def provenance(version: str, source_sha256: str, zeroed: dict[str, list[int]], method: str,
               bound_factor: float | None = None, position: tuple[int, float] | None = None,
               input_radius: int | None = None, unlearned: int | None = None,
               notch: tuple[int, int] | None = None, notch_phase: float | None = None,
               occlusion: tuple[int, int, int, int] | None = None, occlusion_fill: str = "mean") -> dict[str, str]:
    """metadata_props written into a repaired model (deterministic, no timestamps)."""
    meta = {
        "auditor.version": version,
        "auditor.source_sha256": source_sha256,
        "auditor.method": method,
        "auditor.zeroed_channels": json.dumps({k: sorted(v) for k, v in sorted(zeroed.items()) if v}, sort_keys=True),
    }
    caps = []
    if input_radius is not None:
        caps.append(f"inputs clamped to their clean range within {input_radius} positions")
    if bound_factor is not None:
        caps.append(f"{bound_factor:g} x clean maximum per channel")
    if position is not None:
        caps.append(f"per position: the clean maximum within {position[0]} positions, at least {position[1]:g} x the channel's cap")
    if caps:
        meta["auditor.activation_bound"] = ", ".join(caps)
    if notch is not None:
        what = f"spatial frequency ({notch[0]}, {notch[1]})"
        if notch_phase is not None:
            what = f"the basis image of {what} at phase {notch_phase:.6f}"
        meta["auditor.input_notch"] = f"{what} removed from the image input"
    if occlusion is not None:
        meta["auditor.input_occlusion"] = f"{window_text(occlusion)} of the image input replaced by {fill_text(occlusion_fill)}"
    if unlearned is not None:
        meta["auditor.head_correction"] = f"class {unlearned}: head row refit so that corrupted clean inputs leave it"
    return meta
