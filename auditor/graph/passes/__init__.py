"""Graph rewrites, one pure pass per module: model in, a new model and what the pass did out.

Each pass copies its input (never mutates it) and checks its postconditions: the graph keeps its inputs and as
many outputs, and every node's inputs are produced before it reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from auditor.errors import InternalError


@dataclass(frozen=True)
class PassResult:
    """The rewritten model and what the pass changed: {unit or input name: what was done}."""

    model: onnx.ModelProto
    changes: dict[str, str] = field(default_factory=dict)

    @property
    def modified(self) -> bool:
        return bool(self.changes)


def ensure(before: onnx.ModelProto, result: PassResult, name: str) -> PassResult:
    """A pass's postconditions; a failure is a bug in that pass (InternalError)."""
    after = result.model
    if after is before:
        raise InternalError(f"pass {name} returned its input instead of a copy")
    def own(model: onnx.ModelProto) -> list[str]:  # the inputs a caller feeds: not the guard's, not initializers
        stored = {t.name for t in model.graph.initializer}
        return [v.name for v in model.graph.input if not v.name.startswith("__auditor_") and v.name not in stored]

    if own(after) != own(before):
        raise InternalError(f"pass {name} changed the graph's inputs")
    if len(after.graph.output) != len(before.graph.output):  # a hidden unit's output may be renamed, never dropped
        raise InternalError(f"pass {name} changed the graph's outputs")
    known = {v.name for v in after.graph.input} | {t.name for t in after.graph.initializer} | {""}
    for node in after.graph.node:
        missing = [n for n in node.input if n not in known]
        if missing:
            raise InternalError(f"pass {name}: node {node.name or node.op_type} reads {missing[0]} before it is written")
        known.update(node.output)
    return result
