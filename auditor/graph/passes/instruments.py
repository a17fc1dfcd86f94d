"""Pass: the guard's instrumented graph, in which masks, caps, input clamps and a head correction
are graph inputs, so one session can try any of them by feeding values instead of rebuilding."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import after_units, clamp_front, mask_shape, weight_types
from auditor.graph.units import Unit

MASK_PREFIX = "__auditor_mask_"
BOUND_PREFIX = "__auditor_bound_"
CLAMP_PREFIX = "__auditor_clamp_"
HEAD_INPUTS = ("__auditor_head_weight_in", "__auditor_head_bias_in")  # the guard's head correction, fed


def instrument(model: onnx.ModelProto, units: list[Unit], bound: bool = False, clamp: tuple[str, ...] = (),
               masks: bool = True) -> PassResult:
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
    out = after_units(model, units, (lambda u: read(MASK_PREFIX, u)) if masks else (lambda u: None), bound_name)
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
        out = clamp_front(out, list(clamp), lambda k: (f"{CLAMP_PREFIX}low_{k}", f"{CLAMP_PREFIX}high_{k}"))
        for k in range(len(clamp)):
            for side in ("low", "high"):
                out.graph.input.append(helper.make_tensor_value_info(f"{CLAMP_PREFIX}{side}_{k}", TensorProto.FLOAT, None))
    changes = {u.name: "instrumented" for u in units if masks or bound} | {name: "instrumented" for name in clamp}
    return ensure(model, PassResult(out, changes), "instrument")


def clamp_feed(clamp: tuple[str, ...], clamps: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Feeds for the clamp inputs of `instrument`: each input's (low, high), else (-inf, +inf)."""
    feed = {}
    for k, name in enumerate(clamp):
        pair = (clamps or {}).get(name)
        low, high = (np.float32(-np.inf), np.float32(np.inf)) if pair is None else pair
        feed[f"{CLAMP_PREFIX}low_{k}"] = np.asarray(low, np.float32).reshape(np.shape(low) or (1,))
        feed[f"{CLAMP_PREFIX}high_{k}"] = np.asarray(high, np.float32).reshape(np.shape(high) or (1,))
    return feed


def mask_feed(units: list[Unit], zeroed: Mapping[str, list[int]],
              caps: Mapping[str, np.ndarray] | None = None, masks: bool = True) -> dict[str, np.ndarray]:
    """Feeds for `instrument`: zeros at the listed channels, ones elsewhere (with `masks`);
    with `caps` (a mapping, possibly empty), each unit's bound [C] or +inf where none is given."""
    if zeroed and not masks:
        raise ValueError("channels to zero, but the graph was built without mask inputs")
    feed = {}
    for position, unit in enumerate(units):
        if masks:
            mask = np.ones(unit.channels, dtype=np.float32)
            mask[zeroed.get(unit.name, [])] = 0.0
            feed[MASK_PREFIX + str(position)] = mask.reshape(mask_shape(unit))
        if caps is not None:
            bound = caps.get(unit.name)
            bound = np.full(mask_shape(unit), np.inf, np.float32) if bound is None else np.asarray(bound, np.float32)
            feed[BOUND_PREFIX + str(position)] = bound.reshape(mask_shape(unit)) if bound.size == unit.channels else bound
    return feed
