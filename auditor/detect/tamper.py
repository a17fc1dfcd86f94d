"""The graph check: backdoors carried by extra nodes or doubly stored tensors, not by trained weights.

Static part (no forward pass): three shapes of graph tampering, read from where the input's values
flow (auditor/graph/flow.py):

- override: a decision (a comparison, ArgMax, TopK) taken on raw input values, through no
  weighted layer, that switches or shifts an output after the network's last weighted layer;
- gate: a decision on a few input values (a Slice or Gather keeping at most
  `graph.region_fraction` of a float input), wherever it acts;
- bypass: a thin path from a float input (through at most `graph.thin_depth` weighted layers of
  its own) mixed into an output beside the body, after its last weighted layer, or from a few
  input values anywhere.

The loader adds storage findings (a tensor stored twice, an initializer shadowing a graph input).
Dynamic part, on the clean samples: what each decision is on them (a gate that never fires), how
to cut the branch out (the value the body computes at the node where the branch meets it), that
the cut keeps every clean decision, and whether pasting the branch's own constants into the input
region it reads makes the model's class differ from the cut model's (confirmed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper

from auditor.capture import class_scores, scores_output
from auditor.errors import AuditorError, DataError, RepairError
from auditor.graph.flow import CONTROL_OPS, DECISION_OPS, GraphFlow, picks
from auditor.graph.index import GraphIndex
from auditor.graph.passes import PassResult
from auditor.graph.passes.branch import INLINED, Cut, cut_branch, inline
from auditor.io import data, runtime
from auditor.settings import GraphSettings

KINDS = ("override", "gate", "bypass", "storage")


@dataclass(frozen=True)
class Region:
    """The part of one input a branch reads: (start, stop) per axis, the batch axis whole."""

    input: str
    bounds: tuple[tuple[int, int], ...]

    def text(self) -> str:
        spans = ", ".join(":" if k == 0 else f"{a}:{b}" for k, (a, b) in enumerate(self.bounds))
        return f"{self.input}[{spans}]"


@dataclass(frozen=True)
class Finding:
    """One piece of graph tampering: its nodes and tensors, why it is suspicious, and how it is cut out."""

    kind: str  # one of KINDS
    nodes: tuple[str, ...]  # the branch's nodes, input side first (name, or op#position when unnamed)
    tensors: tuple[str, ...]  # the tensors it reads from the input and the one where it meets the body
    reason: str
    region: Region | None = None  # the input values it reads, when that can be told
    constants: tuple[float, ...] = ()  # the constants its decisions compare against
    merges: tuple[int, ...] = ()  # positions of the nodes where the branch meets the body
    decision: int | None = None  # position of the decision (override, gate)
    fires: str | None = None  # on the clean samples: how often its decision differs from the usual
    cuts: tuple[Cut, ...] = ()  # how repair removes it, one cut per merge (none: it cannot, `refusal` says why)
    refusal: str | None = None
    target: int | None = None  # the class pasting its values sends samples to (confirmed only)
    confirmed: bool | None = None  # None: not tried
    confirmation: str | None = None
    pasted: float | None = None  # the value whose pasting into the region confirmed it (the HTML page shows it again)

    def summary(self) -> dict:
        return {"kind": self.kind, "nodes": list(self.nodes), "tensors": list(self.tensors), "reason": self.reason,
                "region": None if self.region is None else self.region.text(), "constants": list(self.constants),
                "fires": self.fires, "removable": bool(self.cuts), "refusal": self.refusal,
                "target": self.target, "confirmed": self.confirmed, "confirmation": self.confirmation}


@dataclass(frozen=True)
class GraphCheck:
    """Every finding of the graph check and its cost."""

    findings: tuple[Finding, ...]
    seconds: float



def paste(samples: data.Samples, name: str, region: Region | None, value: float) -> data.Samples:
    """`samples` with `value` written into the region of input `name` a branch reads (all of it without a region)."""
    box = (slice(None),) if region is None else (slice(None), *(slice(a, b) for a, b in region.bounds[1:]))
    pasted = samples.inputs[name].copy()
    pasted[box] = value
    return data.Samples({**samples.inputs, name: pasted}, None, samples.source)


def label(index: GraphIndex, position: int) -> str:
    node = index.graph.node[position]
    return node.name or f"{node.op_type}#{position}"


def static(index: GraphIndex, settings: GraphSettings) -> list[Finding]:
    """The findings that need no forward pass, at most one per node where a branch meets the body; "after the last
    weighted layer" is measured towards the class-scores output."""
    try:
        judged = {scores_output(index)}
    except AuditorError:  # no float output: every output is judged
        judged = None
    flow = GraphFlow(index, judged)
    found: dict[int, Finding] = {}
    for position in _raw_decisions(flow):
        finding = _decision_finding(flow, position, settings)
        if finding is not None and finding.merges[0] not in found:
            found[finding.merges[0]] = finding
    for position, node in enumerate(index.graph.node):
        if position in found or position in flow.weighted:
            continue
        finding = _bypass_finding(flow, position, node, settings)
        if finding is None:
            continue
        # a thin path that carries an already found decision is that branch meeting the body a second time
        owner = next((f for f in found.values() if f.decision is not None
                      and f.decision in _ancestors(flow, list(flow.reads(position)))), None)
        if owner is not None:
            found[owner.merges[0]] = replace(owner, merges=(*owner.merges, position),
                                             nodes=tuple(dict.fromkeys((*owner.nodes, *finding.nodes))))
        else:
            found[position] = finding
    return [found[k] for k in sorted(found)]


def _raw_decisions(flow: GraphFlow) -> list[int]:
    """Decisions whose data operands read a model input through no weighted layer."""
    positions = []
    for position, node in enumerate(flow.index.graph.node):
        if node.op_type not in DECISION_OPS:
            continue
        carried = [flow.flow[n] for n in flow.reads(position) if n in flow.flow]
        if carried and all(f.depth == 0 for f in carried):
            positions.append(position)
    return positions


def _descendants(flow: GraphFlow, position: int) -> tuple[set[int], set[str]]:
    graph = flow.index.graph
    tensors = {o for o in graph.node[position].output if o}
    nodes = {position}
    for later in range(position + 1, len(graph.node)):
        if any(n in tensors for n in flow.reads(later)):
            nodes.add(later)
            tensors.update(o for o in graph.node[later].output if o)
    return nodes, tensors


def _ancestors(flow: GraphFlow, names: list[str], within: set[int] | None = None) -> set[int]:
    """Nodes that compute `names` from the input's values (shape arithmetic and constants left out)."""
    index, seen, todo = flow.index, set(), [n for n in names if n in flow.flow]
    while todo:
        name = todo.pop()
        position = index.producer.get(name)
        if position is None or position in seen or (within is not None and position not in within):
            continue
        seen.add(position)
        todo.extend(n for n in flow.reads(position) if n in flow.flow)
    return seen


def _decision_finding(flow: GraphFlow, decision: int, settings: GraphSettings) -> Finding | None:
    index = flow.index
    graph = index.graph
    nodes, dependent = _descendants(flow, decision)
    merge = None
    for position in sorted(nodes - {decision}):
        if any(n in flow.flow and n not in dependent for n in flow.reads(position)):
            merge = position
            break
    if merge is None:
        return None
    operands = [flow.flow[n] for n in flow.reads(decision) if n in flow.flow]
    reach = max(f.reach for f in operands)
    floats = flow.float_inputs()
    reads_float = any(f.inputs & floats for f in operands)
    body = [flow.flow[n] for n in flow.reads(merge) if n in flow.flow and n not in dependent]
    override = (merge not in flow.weighted and any(o in flow.tail for o in graph.node[merge].output if o)
                and max(f.depth for f in body) >= 1)
    gate = reads_float and reach <= settings.region_fraction
    if not (override or gate):
        return None
    source = _ancestors(flow, list(flow.reads(decision)))
    path = _ancestors(flow, list(flow.reads(merge)), within=nodes) - {merge}
    members = sorted(source | path | {decision, merge})
    read = _read_inputs(flow, source | {decision})
    region = _region(flow, source)
    constants = _constants(index, source | {decision} | path)
    decided = graph.node[decision]
    what = f"{decided.op_type} on {_amount(flow, reach, read)}"
    if override:
        kind = "override"
        reason = (f"a decision ({what}) taken through no weighted layer switches the output at "
                  f"{label(index, merge)} ({graph.node[merge].op_type}) after the network's last weighted layer")
    else:
        kind = "gate"
        reason = (f"a decision ({what}) acts at {label(index, merge)} ({graph.node[merge].op_type}); "
                  "ordinary graphs do not test a few raw input values")
    tensors = (*read, decided.output[0], *(o for o in graph.node[merge].output if o))
    return Finding(kind, tuple(label(index, p) for p in members), tuple(dict.fromkeys(tensors)), reason, region,
                   constants, (merge,), decision)


def _bypass_finding(flow: GraphFlow, position: int, node: onnx.NodeProto, settings: GraphSettings) -> Finding | None:
    carried = {n: flow.flow[n] for n in flow.reads(position) if n in flow.flow}
    if len(carried) < 2 or node.op_type in CONTROL_OPS:
        return None
    body_name = max(carried, key=lambda n: carried[n].depth)
    body = carried[body_name]
    if body.depth < 1:
        return None
    floats = flow.float_inputs()
    in_tail = any(o in flow.tail for o in node.output if o)
    for name, thin in carried.items():
        if name == body_name or not thin.inputs & floats or thin.weights & body.weights:
            continue
        if thin.depth > settings.thin_depth or thin.depth >= body.depth:
            continue
        if not (in_tail or (thin.depth == 0 and thin.reach <= settings.region_fraction)):
            continue
        source = _ancestors(flow, [name])
        read = _read_inputs(flow, source)
        where = "after the network's last weighted layer" if in_tail else "into the body"
        reason = (f"a thin path ({thin.depth} weighted layers, {_amount(flow, thin.reach, read)}) is mixed into "
                  f"the body's value at {label(flow.index, position)} ({node.op_type}) {where}")
        members = sorted(source | {position})
        return Finding("bypass", tuple(label(flow.index, p) for p in members),
                       tuple(dict.fromkeys((*read, name, *(o for o in node.output if o)))), reason,
                       _region(flow, source), _constants(flow.index, source), (position,))
    return None


def _amount(flow: GraphFlow, reach: float, read: list[str]) -> str:
    names = ", ".join(read) or "the input"
    if reach >= 1.0:
        return f"values of {names}"
    return f"{reach:.2%} of the values of {names}"


def _read_inputs(flow: GraphFlow, positions: set[int]) -> list[str]:
    inputs = set(flow.model_inputs)
    return sorted({n for p in positions for n in flow.reads(p) if n in inputs})


def _constants(index: GraphIndex, positions: set[int]) -> tuple[float, ...]:
    """The scalar constants the branch's nodes read (what a comparison tests against)."""
    values = []
    for position in sorted(positions):
        for name in index.graph.node[position].input:
            value = index.constant(name) if name else None
            if value is not None and value.size == 1 and np.issubdtype(value.dtype, np.number):
                values.append(float(value.reshape(-1)[0]))
    return tuple(dict.fromkeys(values))


def _region(flow: GraphFlow, positions: set[int]) -> Region | None:
    """The box of one input that a branch's Slices (or constant Gathers) read, when they say it."""
    index = flow.index
    for position in sorted(positions):
        node = index.graph.node[position]
        if node.op_type not in ("Slice", "Gather") or node.input[0] not in flow.model_inputs:
            continue
        shape = index.shape(node.input[0])
        if not shape or any(d is None for d in shape[1:]):
            return None
        dims = [1, *shape[1:]]
        chosen = picks(index, node, dims)
        if chosen is None or any(not kept for kept in chosen.values()):
            return None
        bounds = [(0, d) for d in dims]
        for axis, kept in chosen.items():
            if axis > 0:  # the batch stays whole
                bounds[axis] = (min(kept), max(kept) + 1)
        return Region(node.input[0], tuple(bounds))
    return None


def inside_bodies(index: GraphIndex, settings: GraphSettings) -> list[Finding]:
    """Findings hidden in the bodies of the main graph's If and Loop nodes: each body is inlined in place of its
    node (an If's branch as it is, a Loop's body as one iteration fed the loop's initial values; the cut's own
    `inline`), and the inlined graph is checked as the main one is. Such a branch is named, never cut: repair
    refuses it."""
    found: list[Finding] = []
    for position, node in enumerate(index.graph.node):
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH or (node.op_type, attr.name) not in (
                    ("If", "then_branch"), ("If", "else_branch"), ("Loop", "body")):
                continue
            inlined = onnx.ModelProto()
            inlined.CopyFrom(index.model)
            replacement = inline(inlined, inlined.graph.node[position], attr.name)
            nodes = [*inlined.graph.node[:position], *replacement, *inlined.graph.node[position + 1:]]
            del inlined.graph.node[:]
            inlined.graph.node.extend(nodes)
            where = f"the {attr.name.replace('_', ' ')} of {label(index, position)} ({node.op_type})"
            for finding in static(GraphIndex(inlined), settings):
                if not any(INLINED in n for n in finding.nodes[:-1]):
                    continue  # it reads the input outside the body: the main graph's own finding, found there
                found.append(replace(finding, nodes=tuple(n.replace(INLINED, "") for n in finding.nodes),
                                     reason=f"inside {where}: {finding.reason.replace(INLINED, '')}", merges=(), decision=None,
                                     refusal="it sits inside a control-flow body; auditor cuts branches out of the main "
                                             "graph only: re-export the model from its source"))
    return found


def check(proto: onnx.ModelProto, index: GraphIndex, samples: data.Samples, provider: runtime.Provider, batch: int,
          scores_name: str, settings: GraphSettings, storage: tuple[str, ...] = ()) -> GraphCheck:
    """The static findings, each completed on the clean samples (cut, clean firing, confirmation), those hidden in
    control-flow bodies (named, not cut), and the loader's storage findings."""
    start = time.perf_counter()
    findings = _completed(proto, index, samples, provider, batch, scores_name, settings)
    findings += inside_bodies(index, settings)
    findings += [Finding("storage", (), (), text) for text in storage]
    return GraphCheck(tuple(findings), time.perf_counter() - start)


def values(proto: onnx.ModelProto, names: list[str], samples: data.Samples, provider: runtime.Provider,
           batch: int) -> dict[str, np.ndarray]:
    """The values the named tensors take on the clean samples ([N, ...] each), through one added-outputs session."""
    present = {v.name for v in proto.graph.output}
    extra = onnx.GraphProto()
    extra.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    session = runtime.session(proto, provider, extra)
    found: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed in samples.batches(batch):
        rows = len(next(iter(feed.values())))
        try:
            computed = session.run(names, feed)
        except Exception as exc:  # onnxruntime's own errors on these inputs (an index out of range, ...)
            raise DataError(f"onnxruntime failed on the graph check's inputs: {runtime._first_line(exc)}") from exc
        for name, value in zip(names, computed, strict=True):
            value = np.asarray(value)
            if value.ndim and value.shape[0] == rows:
                found[name].append(value.reshape(rows, -1))
            else:  # one value for the whole run (a batch-level decision): each sample of the run saw it
                found[name].append(np.broadcast_to(value.reshape(1, -1), (rows, max(1, value.size))))
    return {name: np.concatenate(parts) for name, parts in found.items()}


def _completed(proto: onnx.ModelProto, index: GraphIndex, samples: data.Samples, provider: runtime.Provider, batch: int,
               scores_name: str, settings: GraphSettings) -> list[Finding]:
    """Every static finding, completed: the data flow and the model's clean decisions found once for all of them."""
    pending = static(index, settings)
    if not pending:
        return []
    flow = GraphFlow(index, {scores_name})
    before = _classes(proto, scores_name, samples, provider, batch)
    return [complete(proto, flow, f, samples, provider, batch, scores_name, settings, before) for f in pending]


def complete(proto: onnx.ModelProto, flow: GraphFlow, finding: Finding, samples: data.Samples, provider: runtime.Provider,
             batch: int, scores_name: str, settings: GraphSettings, before: np.ndarray) -> Finding:
    """Decide the cuts from what the merge nodes' operands are on the clean samples, check that they keep every
    clean decision (`before`: the model's), and try to confirm the branch by pasting its constants into the region it
    reads."""
    dependent = _descendants(flow, finding.decision)[1] if finding.decision is not None else set()
    cuts, fires = [], []
    try:
        for merge in finding.merges:
            cut, fired = _plan_cut(proto, flow, merge, dependent, samples, provider, batch)
            cuts.append(cut)
            fires += [fired] if fired else []
    except _Refused as refused:
        return replace(finding, refusal=str(refused))
    finding = replace(finding, cuts=tuple(cuts), fires="; ".join(fires) or None)
    try:
        cleaned = cut_all(proto, finding.cuts).model
    except ValueError as exc:
        return replace(finding, cuts=(), refusal=f"the branch cannot be cut out: {exc}")
    try:
        after = _classes(cleaned, scores_name, samples, provider, batch)
    except AuditorError as exc:
        return replace(finding, cuts=(), refusal=f"the model with the branch cut out does not run ({exc})")
    changed = int(np.sum(before != after))
    if changed:
        return replace(finding, cuts=(), refusal=f"cutting the branch out changes {changed} of {len(samples)} "
                                                 "clean decisions: it is part of what the model does on clean data")
    return _confirm(proto, cleaned, finding, samples, provider, batch, scores_name, settings)


def cut_all(proto: onnx.ModelProto, cuts: tuple[Cut, ...]) -> PassResult:
    """Every cut of one finding, in order (a later merge reads what an earlier cut left)."""
    result = None
    for cut in cuts:
        result = cut_branch(proto if result is None else result.model, cut)
    if result is None:
        raise ValueError("no cut to make")
    return result


class _Refused(Exception):
    """The branch cannot be cut out; the message says why."""


def _plan_cut(proto, flow: GraphFlow, merge: int, dependent: set[str], samples: data.Samples, provider,
              batch: int) -> tuple[Cut, str | None]:
    node = flow.index.graph.node[merge]
    reads = [n for n in flow.reads(merge) if n in flow.flow]
    outputs = tuple(o for o in node.output)
    if node.op_type == "Where" and node.input[0] in dependent:
        seen = values(proto, [node.input[0]], samples, provider, batch)[node.input[0]].astype(bool)
        if seen.all() or not seen.any():
            taken = node.input[1] if seen.all() else node.input[2]
            return Cut(outputs[0], (taken,)), f"its condition is {'true' if seen.all() else 'false'} on every clean sample"
        raise _Refused(f"its condition is true on {int(seen.any(axis=1).sum())} of {len(samples)} clean samples")
    if node.op_type == "If":
        seen = values(proto, [node.input[0]], samples, provider, batch)[node.input[0]].astype(bool)
        if seen.all() or not seen.any():
            branch = "then_branch" if seen.all() else "else_branch"
            return Cut(outputs[0], branch=branch), f"its condition is {'true' if seen.all() else 'false'} on every clean sample"
        raise _Refused(f"its condition is true on {int(seen.any(axis=1).sum())} of {len(samples)} clean samples")
    if node.op_type == "Loop":
        carried = list(node.input[2:])
        if len(outputs) > len(carried):
            raise _Refused("the loop also writes scan outputs, which have no value without it")
        checked = [n for n in node.input[:2] if n]
        seen = values(proto, checked, samples, provider, batch)
        trips = seen.get(node.input[0]) if node.input[0] else None
        condition = seen.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if (trips is not None and not trips.any()) or (condition is not None and not condition.astype(bool).any()):
            return Cut(outputs[0], tuple(carried)), "the loop runs no iteration on any clean sample"
        raise _Refused("the loop runs on the clean samples")
    body = max(reads, key=lambda n: flow.flow[n].depth) if reads else None
    if node.op_type in CONTROL_OPS or len(outputs) != 1 or body is None or flow.flow[body].depth < 1:
        raise _Refused(f"the branch meets the body at a {node.op_type}, which auditor cannot cut")
    return Cut(outputs[0], (body,)), None


def _classes(proto, scores_name: str, samples: data.Samples, provider, batch: int) -> np.ndarray:
    """The decisions (a binary model's: p > 0.5, not an argmax of one column)."""
    raw = values(proto, [scores_name], samples, provider, batch)[scores_name]
    return class_scores(raw, GraphIndex(proto), scores_name).argmax(axis=1)


def _confirm(proto, cleaned, finding: Finding, samples: data.Samples, provider, batch: int, scores_name: str,
             settings: GraphSettings) -> Finding:
    """Paste each candidate value (the branch's constants, just above and below, and the clean extremes) into the
    region it reads; confirmed when the model's class then differs from the cut model's on `confirm_share` of samples."""
    region = finding.region
    name = region.input if region is not None else next(
        (n for n in finding.tensors if n in samples.inputs and np.issubdtype(samples.inputs[n].dtype, np.floating)), None)
    if name is None:
        return replace(finding, confirmed=None, confirmation="no float input region to paste into")
    clean = samples.inputs[name]
    spread = float(clean.max() - clean.min()) or 1.0
    candidates = {float(clean.min()), float(clean.max())}
    for value in finding.constants:
        candidates.update({value, value + 0.01 * spread, value - 0.01 * spread})
    best = (-1, 0.0, 0, 0, 0)
    for value in sorted(candidates):
        trial = paste(samples, name, region, value)
        try:
            model_says = _classes(proto, scores_name, trial, provider, batch)
            without = _classes(cleaned, scores_name, trial, provider, batch)
        except AuditorError:  # a value the model cannot take there (an index, a length): not a trigger
            continue
        differ = int(np.sum(model_says != without))
        if differ > best[0]:
            target = int(np.bincount(model_says[model_says != without]).argmax()) if differ else 0
            best = (differ, value, target, int(np.sum(model_says == target)), int(np.sum(without == target)))
    differ, value, target, sent, kept = best
    where = region.text() if region is not None else f"all of {name}"
    if differ >= max(1, int(np.ceil(settings.confirm_share * len(samples)))):
        return replace(finding, confirmed=True, target=target, pasted=value, confirmation=(
            f"pasting {value:.4g} into {where} sends {sent} of {len(samples)} clean samples to class {target}; "
            f"with the branch cut out, {kept}"))
    return replace(finding, confirmed=False, confirmation=(
        f"pasting the branch's constants into {where} changed the class of at most {differ} of {len(samples)} "
        "clean samples"))


def remove_all(proto: onnx.ModelProto, samples: data.Samples, provider: runtime.Provider, batch: int, scores_name: str,
               settings: GraphSettings) -> tuple[onnx.ModelProto, list[Finding], dict[str, str]]:
    """Cut out every removable branch, then what the removals uncover, until none is left (at most
    `max_rounds` rounds). Returns the model, the findings cut, and the passes' changes."""
    removed: list[Finding] = []
    changes: dict[str, str] = {}
    for _ in range(settings.max_rounds):
        index = GraphIndex(proto)
        pending = _completed(proto, index, samples, provider, batch, scores_name, settings)
        removable = [f for f in pending if f.cuts]
        if not removable:
            return proto, removed, changes
        finding = removable[-1]  # the one nearest the output first: its cut cannot hide another's merge node
        result = cut_all(proto, finding.cuts)
        proto = result.model
        removed.append(finding)
        changes.update(result.changes)
    if static(GraphIndex(proto), settings):
        raise RepairError(f"cannot repair: graph branches remain after {settings.max_rounds} rounds of removal "
                          "(graph.max_rounds); re-export the model from its source")
    return proto, removed, changes
