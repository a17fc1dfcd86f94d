"""A read-only index over a GraphProto: producers, consumers, constants and tensor ranks."""

from __future__ import annotations

import math
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
            inferred = shape_inference.infer_shapes(weightless(self.model), strict_mode=False)
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


_PACKED = frozenset(getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                    if hasattr(onnx.TensorProto, n))


def value_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's values from its shape and type (its raw_data's length whenever the values fit the shape,
    which model.load checks for every tensor it accepts); None for strings, packed sub-byte types and an undefined
    type, whose stored size the shape does not give."""
    if tensor.data_type in _PACKED or tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return math.prod(tensor.dims) * itemsize


def _weights(model: onnx.ModelProto, min_bytes: int) -> set[str]:
    """The main-graph initializers `weightless` takes out: stored in raw_data, of a fixed-size type, at least
    `min_bytes` of values, and not also a graph input (whose declared type the checker compares with it)."""
    inputs = {v.name for v in model.graph.input}
    return {t.name for t in model.graph.initializer
            if t.name not in inputs and t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data")
            and (value_bytes(t) or 0) >= min_bytes}


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """At least the bytes `tensor` takes serialised; for a fixed-size tensor in raw_data counted from its shape
    without reading its values: upb's ByteSize() serialises a message to count it, and reading raw_data copies it."""
    size = value_bytes(tensor)
    if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data") or size is None:
        return tensor.ByteSize()
    rest = onnx.TensorProto()
    for field in tensor.DESCRIPTOR.fields:  # every field but raw_data, read only when present
        if field.name == "raw_data":
            continue
        value = getattr(tensor, field.name)
        if (len(value) if hasattr(value, "extend") else tensor.HasField(field.name)):
            _copy_field(rest, field.name, value)
    return rest.ByteSize() + size + 16  # + the raw_data field's tag and length


def model_bytes(model: onnx.ModelProto) -> int:
    """At least `model.ByteSize()` (by a few bytes per weight), without serialising the weights."""
    moved = _weights(model, _HEAVY_BYTES)
    return weightless(model).ByteSize() + sum(stored_bytes(t) + 16 for t in model.graph.initializer if t.name in moved)


def _copy_field(message, name: str, value) -> None:
    """Set field `name` of `message` to `value` (a repeated field, a message or a scalar), by copy."""
    if hasattr(value, "extend"):
        getattr(message, name).extend(value)
    elif hasattr(value, "CopyFrom"):
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


_HEAVY_BYTES = 4096  # initializers with this many bytes of values are weights to shape inference, never a shape


def weightless(model: onnx.ModelProto, min_bytes: int = _HEAVY_BYTES) -> onnx.ModelProto:
    """`model` with its weights (`_weights`: fixed-size initializers of at least `min_bytes` of values) given as
    graph inputs of their type and shape instead: what the checker and shape inference need. Both serialise the
    model and build another copy of it (shape inference two), so on a model of hundreds of megabytes they held four
    or five copies of its weights at once; the shapes they infer are the same, since only small constants (a
    Reshape's shape, a Slice's bounds) carry values shapes depend on, and load reads every weight's values against
    its shape itself. `model` itself is not modified."""
    graph = model.graph
    moved = _weights(model, min_bytes)
    if not moved:
        return model
    light = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(light, field.name, value)
    for field, value in graph.ListFields():
        if field.name == "initializer":
            light.graph.initializer.extend(t for t in value if t.name not in moved)
        else:
            _copy_field(light.graph, field.name, value)
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in graph.initializer if t.name in moved)
    return light
