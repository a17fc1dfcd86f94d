"""Cut a branch out of the graph: the node where it meets the body gives what the body computes there."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from auditor.graph.flow import outer_reads, subgraphs
from auditor.graph.passes import PassResult, ensure
from auditor.graph.passes.edit import fresh, rename_reads, tensor_names


@dataclass(frozen=True)
class Cut:
    """The node writing `output` is replaced: by Identity(keep[i]) for its i-th output or, for an If, by the
    nodes of its `branch` ("then_branch" or "else_branch"), the one the clean samples take."""

    output: str
    keep: tuple[str, ...] = ()
    branch: str | None = None

    def text(self) -> str:
        if self.branch is not None:
            return f"replaced by its {self.branch.replace('_', ' ')}, the one every clean sample takes"
        return f"replaced by {', '.join(self.keep)}, the value the body computes there"


def cut_branch(model: onnx.ModelProto, cut: Cut) -> PassResult:
    """Copy of `model` with the node that writes `cut.output` replaced as `cut` says, then every node and initializer
    that no output needs any more removed. ValueError when the cut does not fit the node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    position = next((k for k, n in enumerate(graph.node) if cut.output in n.output), None)
    if position is None:
        raise ValueError(f"no node writes {cut.output}")
    node = graph.node[position]
    name = node.name or f"{node.op_type}#{position}"
    if cut.branch is not None:
        replacement = inline(out, node, cut.branch)
    else:
        outputs = [o for o in node.output]
        if len(cut.keep) > len(outputs) or any(k == "" for k in cut.keep):
            raise ValueError(f"{name} writes {len(outputs)} outputs, the cut keeps {len(cut.keep)}")
        names = {n.name for n in graph.node}
        replacement = [helper.make_node("Identity", [keep], [written], name=fresh(f"__auditor_cut_{k}", names))
                       for k, (keep, written) in enumerate(zip(cut.keep, outputs, strict=False))]
    nodes = [*graph.node[:position], *replacement, *graph.node[position + 1:]]
    kept = _live(graph, nodes)
    dropped = len(nodes) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    read = {n for node in kept for n in (*node.input, *(r for g in subgraphs(node) for r in outer_reads(g)))}
    unused = [t for t in graph.initializer if t.name not in read and t.name not in {v.name for v in graph.output}]
    for tensor in unused:
        graph.initializer.remove(tensor)
    gone = {t.name for t in unused}  # older exporters also list initializers as graph inputs: those entries go too
    for value in [v for v in graph.input if v.name in gone]:
        graph.input.remove(value)
    changes = {name: f"{node.op_type} {cut.text()}; {dropped} nodes no output needs removed"}
    return ensure(model, PassResult(out, changes), "cut_branch")


INLINED = "__auditor_inlined"  # the suffix of every name an inlined body brings into the graph


def inline(model: onnx.ModelProto, node: onnx.NodeProto, body_name: str) -> list[onnx.NodeProto]:
    """The nodes that compute what `node` (in `model`) writes from its body `body_name`: an If's branch as it is,
    a Loop's body as one iteration fed the loop's initial values. The body's initializers are added to `model`."""
    allowed = {("If", "then_branch"), ("If", "else_branch"), ("Loop", "body")}
    if (node.op_type, body_name) not in allowed:
        raise ValueError(f"only an If or a Loop has bodies to inline, not a {node.op_type} ({body_name!r})")
    body = next((a.g for a in node.attribute if a.name == body_name), None)
    if body is None:
        raise ValueError(f"the {node.op_type} has no {body_name}")
    taken = tensor_names(model) | {t.name for t in model.graph.initializer}
    names = {n.name for n in model.graph.node}
    renamed: dict[str, str] = {}
    for local in [*(v.name for v in body.input), *(t.name for t in body.initializer), *(o for n in body.node for o in n.output if o)]:
        renamed[local] = fresh(f"{local}{INLINED}", taken)
        taken.add(renamed[local])
    for tensor in body.initializer:
        moved = copy.deepcopy(tensor)
        moved.name = renamed[tensor.name]
        model.graph.initializer.append(moved)

    inlined = []
    produced = list(body.output)
    if node.op_type == "Loop":  # inputs: the iteration number, the condition, then the loop-carried values
        carried = list(node.input[2:])
        for k, value in enumerate(body.input):
            source = carried[k - 2] if k >= 2 and k - 2 < len(carried) else None
            feed_name = fresh(f"__auditor_feed_{k}", names)
            names.add(feed_name)
            if source:
                inlined.append(helper.make_node("Identity", [source], [renamed[value.name]], name=feed_name))
            else:
                inlined.append(helper.make_node("Constant", [], [renamed[value.name]], name=feed_name,
                                                value=numpy_helper.from_array(np.array(k != 0))))
        produced = produced[1:]  # the body's first output is the next condition
    for inner in body.node:
        moved = copy.deepcopy(inner)
        rename_reads(moved, renamed)  # nested bodies that read the body's own tensors follow them too
        moved.output[:] = [renamed.get(n, n) for n in moved.output]
        moved.name = fresh(f"{inner.name or inner.op_type}{INLINED}", names)
        names.add(moved.name)
        inlined.append(moved)
    if node.op_type == "If" and len(produced) != len(node.output):
        raise ValueError("the If's branch writes another number of outputs")
    for k, (inner, written) in enumerate(zip(produced, node.output, strict=False)):
        if written:
            inlined.append(helper.make_node("Identity", [renamed.get(inner.name, inner.name)], [written],
                                            name=fresh(f"__auditor_cut_{k}", names)))
            names.add(inlined[-1].name)
    return inlined


def _live(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes a graph output needs (reads inside control-flow bodies count)."""
    needed = {v.name for v in graph.output}
    live = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            live.append(node)
            needed.update(n for n in node.input if n)
            for inner in subgraphs(node):
                needed.update(outer_reads(inner))
    return list(reversed(live))
