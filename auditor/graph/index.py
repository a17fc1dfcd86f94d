"""A read-only index over a GraphProto: producers, consumers, constants and tensor ranks."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


class GraphIndex:
    """Lookups every stage needs; built once per model, never mutates it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.constant_nodes = {
            node.output[0]: node for node in self.graph.node if node.op_type == "Constant" and node.output
        }
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(self.graph.node):
            for name in node.output:
                self.producer[name] = index
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(index)
        self.outputs = {value.name for value in self.graph.output}

    def node(self, index: int) -> onnx.NodeProto:
        return self.graph.node[index]

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def users(self, name: str) -> list[onnx.NodeProto]:
        return [self.graph.node[i] for i in self.consumers.get(name, [])]

    @cached_property
    def _inferred(self) -> dict[str, onnx.TypeProto]:
        try:
            inferred = shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:
            return {}
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        return {value.name: value.type for value in values}

    def rank(self, name: str) -> int | None:
        type_proto = self._inferred.get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        tensor = type_proto.tensor_type
        return len(tensor.shape.dim) if tensor.HasField("shape") else None

    def shape(self, name: str) -> list[int | None] | None:
        """The tensor's inferred dimensions (None for a symbolic one), or None when its rank is unknown."""
        type_proto = self._inferred.get(name)
        if type_proto is None or not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in type_proto.tensor_type.shape.dim]

    def elem_type(self, name: str) -> int:
        type_proto = self._inferred.get(name)
        if type_proto is not None and type_proto.HasField("tensor_type") and type_proto.tensor_type.elem_type:
            return type_proto.tensor_type.elem_type
        return onnx.TensorProto.FLOAT


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
