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


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """At least the bytes `tensor` takes serialised, counted without serialising its values: upb's ByteSize()
    serialises the message to count it, a full copy of a model's weights each time it is asked."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
        return tensor.ByteSize()  # external data (a few location strings) or typed fields: counted as they are
    rest = onnx.TensorProto()
    for field, value in tensor.ListFields():
        if field.name != "raw_data":
            _copy_field(rest, field.name, value)
    return rest.ByteSize() + _raw_bytes(tensor) + 16  # + the raw_data field's tag and length


def _raw_bytes(tensor: onnx.TensorProto) -> int:
    """The length of `tensor.raw_data` from its type and shape (reading the field copies it): exact for every tensor
    that loads, since model.load refuses a tensor whose bytes contradict its shape."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return len(tensor.raw_data)
    bits = {name: width for width, names in ((4, ("INT4", "UINT4", "FLOAT4E2M1")), (2, ("INT2", "UINT2")))
            for name in names}
    for name, width in bits.items():
        if tensor.data_type == getattr(onnx.TensorProto, name, None):
            return -(-count * width // 8)
    return count * itemsize


def model_bytes(model: onnx.ModelProto) -> int:
    """At least `model.ByteSize()` (by a few bytes per large tensor), without serialising the large tensors."""
    sizes = {t.name: stored_bytes(t) for t in model.graph.initializer}
    heavy = {name for name, size in sizes.items() if size >= _HEAVY_BYTES}
    return weightless(model, heavy=heavy).ByteSize() + sum(sizes[name] + 16 for name in heavy)


def _copy_field(message, name: str, value) -> None:
    """Set field `name` of `message` to `value` (a repeated field, a message or a scalar), by copy."""
    if hasattr(value, "extend"):
        getattr(message, name).extend(value)
    elif hasattr(value, "CopyFrom"):
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


_HEAVY_BYTES = 4096  # initializers this large are weights to shape inference: their values never decide a shape


def weightless(model: onnx.ModelProto, min_bytes: int = _HEAVY_BYTES, heavy: set[str] | None = None) -> onnx.ModelProto:
    """`model` with every main-graph initializer of at least `min_bytes` given as a graph input of its type and shape
    instead: what the checker and shape inference need, without the weights. Both serialise the model and build
    another copy of it (shape inference two), so on a model of hundreds of megabytes they held four or five copies of
    its weights at once; the shapes they infer are the same, since only small constants (a Reshape's shape, a Slice's
    bounds) carry values shapes depend on. `model` itself is not modified."""
    graph = model.graph
    moved = heavy if heavy is not None else {t.name for t in graph.initializer if stored_bytes(t) >= min_bytes}
    if not moved:
        return model
    heavy_tensors = [t for t in graph.initializer if t.name in moved]
    light = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(light, field.name, value)
    for field, value in graph.ListFields():
        if field.name == "initializer":
            light.graph.initializer.extend(t for t in value if t.name not in moved)
        elif field.name == "input":
            light.graph.input.extend(v for v in value if v.name not in moved)
        else:
            _copy_field(light.graph, field.name, value)
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in heavy_tensors)
    return light
