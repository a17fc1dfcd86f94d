"""What the model is before it is judged: the kind of its input and of its output, found from the graph.

Each detector applies to some kinds only: the corruption probe blurs image axes or a sequence's time axis (never
unordered feature dimensions), the patch search and the Fourier probe need an image; every verdict needs one score
per class per sample. A user may override either kind (`--input-kind`, `--output-kind`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from auditor.errors import ModelError
from auditor.graph.index import GraphIndex
from auditor.io.data import InputSpec

INPUT_KINDS = ("image", "flat-image", "sequence", "tokens", "tabular")
OUTPUT_KINDS = ("scores", "probabilities", "binary", "positions", "embedding")
_JUDGED = ("scores", "probabilities", "binary")  # the output kinds a verdict can be given on
_FOLLOW = {"Unsqueeze", "Reshape", "Transpose", "Cast", "Identity", "Sub", "Div", "Mul", "Add", "Squeeze", "Pad", "Clip"}
_EMBEDDING_NAMES = ("embed", "feature", "vector", "pooler", "hidden")
_SHAPE_ONLY = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Cast"}
# An output that comes out of one of these is a representation, not class scores (a linear layer, or a softmax or
# sigmoid of one, computes those).
_ACTIVATIONS = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Tanh", "HardSwish", "Mish", "Clip", "Max", "Min",
                "ThresholdedRelu", "PRelu", "Softplus"}
_WHAT = {
    "positions": "one score vector per position or anchor (a detector, a CTC recogniser, a segmenter)",
    "embedding": "an embedding (a feature vector, not class scores)",
}


@dataclass(frozen=True)
class Kinds:
    """The input's and the output's kind, and how each was found (for the report)."""

    input: str  # one of INPUT_KINDS
    output: str  # one of OUTPUT_KINDS
    input_reason: str
    output_reason: str

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "input_reason": self.input_reason,
                "output_reason": self.output_reason}


def find(index: GraphIndex, main: InputSpec, output_name: str, input_kind: str | None = None,
         output_kind: str | None = None) -> Kinds:
    """The kinds of the input `main` and of `output_name`, each from the graph unless given (a user's override)."""
    for given, allowed, what in ((input_kind, INPUT_KINDS, "input"), (output_kind, OUTPUT_KINDS, "output")):
        if given is not None and given not in allowed:
            raise ModelError(f"unknown {what} kind {given!r}: use one of {', '.join(allowed)}")
    found_in = (input_kind, "given") if input_kind else _input_kind(index, main)
    found_out = (output_kind, "given") if output_kind else _output_kind(index, output_name)
    others = [repr(o.name) for o in index.graph.output if o.name != output_name]
    if others:  # say which output was judged where there was a choice
        found_out = (found_out[0], f"{found_out[1]}; output {output_name!r} judged, not {', '.join(others)}")
    return Kinds(found_in[0], found_out[0], found_in[1], found_out[1])


def judged(kinds: Kinds, output_name: str) -> None:
    """Refuse an output no verdict can be given on, naming what it is (ModelError)."""
    if kinds.output not in _JUDGED:
        raise ModelError(f"output {output_name!r} is {_WHAT[kinds.output]} ({kinds.output_reason}): auditor judges "
                         "classifiers, one score per class per sample; if it is one, say so with --output-kind scores")


def _input_kind(index: GraphIndex, main: InputSpec) -> tuple[str, str]:
    dims = list(main.shape or ())
    if main.dtype in (np.int64, np.int32):
        return "tokens", "integer input"
    rank = len(dims)
    if rank == 4:
        return "image", "rank-4 float input"
    if rank == 3:
        if _reaches_conv(index, main.name, 4):
            return "image", "rank-3 float input reshaped into a 2-D convolution"
        return "sequence", "rank-3 float input [batch, time, features] (no 2-D convolution reads it as an image)"
    if rank == 2 and _reaches_conv(index, main.name, 3):
        return "sequence", "rank-2 float input read by a 1-D convolution: a signal over time (a waveform)"
    if rank == 2 and dims[1] is not None:
        side = math.isqrt(dims[1])
        if side >= 8 and side * side == dims[1]:
            return "flat-image", f"{dims[1]} features, a {side}x{side} square (say --input-kind tabular if they are not pixels)"
        return "tabular", f"{dims[1]} features"
    return "tabular", f"rank-{rank} input"


def _reaches_conv(index: GraphIndex, name: str, kernel_rank: int) -> bool:
    """Whether a convolution with a `kernel_rank`-D kernel (4: 2-D images, 3: 1-D signals) reads `name` through
    shape and elementwise ops only."""
    frontier, seen = [name], set()
    while frontier:
        tensor = frontier.pop()
        for node in index.users(tensor):
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
                kernel = index.constant(node.input[1])
                if kernel is not None and kernel.ndim == kernel_rank:
                    return True
            if node.op_type in _FOLLOW:
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
    return False


def _output_kind(index: GraphIndex, name: str) -> tuple[str, str]:
    shape = index.shape(name)
    if shape is None:
        value = next((v for v in index.graph.output if v.name == name), None)
        if value is not None and value.type.tensor_type.HasField("shape"):
            shape = [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
    if shape is not None and len(shape) >= 3 and any(d is None or d > 1 for d in shape[1:-1]):
        return "positions", f"rank-{len(shape)} output {_dims(shape)}"
    if shape is not None and len(shape) >= 2 and shape[-1] is None:
        return "positions", f"output {_dims(shape)}: its last dimension varies with the input (a class count is fixed)"
    op = last_op(index, name)
    if shape is not None and len(shape) >= 3 and op in ("Conv", "ConvTranspose"):
        return "embedding", (f"rank-{len(shape)} output {_dims(shape)} straight out of a convolution, a feature map, "
                             "where class scores come out of a dense layer or a softmax")
    if op == "LpNormalization" or any(word in name.lower() for word in _EMBEDDING_NAMES):
        return "embedding", "L2-normalised output" if op == "LpNormalization" else f"output named {name!r}"
    if op in _ACTIVATIONS:
        return "embedding", f"the output comes out of a {op}, not a linear layer (class scores do)"
    width = None if not shape or len(shape) < 2 else math.prod(d or 0 for d in shape[1:]) or None
    if shape is not None and (len(shape) == 1 or width == 1):
        return "binary", "one score per sample"
    if op == "Softmax":
        return "probabilities", "Softmax output"
    return "scores", "per-class scores" if shape is not None else "output shape unknown: read as per-class scores"


def last_op(index: GraphIndex, name: str) -> str | None:
    """The op that computes `name`, looking through reshapes."""
    while True:
        position = index.producer.get(name)
        if position is None:
            return None
        node = index.graph.node[position]
        if node.op_type not in _SHAPE_ONLY or not node.input:
            return node.op_type
        name = node.input[0]


def blur_axes(kinds: Kinds, name: str, rank: int) -> dict[str, tuple[int, ...]] | None:
    """Where the corruption probe may blur the input `name`: None for an image's own axes (found from its
    layout), its time axis for a sequence, nowhere for tokens or tabular features."""
    if kinds.input == "sequence":
        return {name: (1,)}
    if kinds.input == "image" and rank == 3:
        return {name: (1, 2)}
    if kinds.input in ("tokens", "tabular"):
        return {name: ()}
    return None


def binary_probability(index: GraphIndex, name: str) -> bool:
    """Whether a single-output model's score is a probability (a Sigmoid computes it) rather than a logit."""
    return last_op(index, name) == "Sigmoid"


def two_columns(scores: np.ndarray, probability: bool) -> np.ndarray:
    """A binary model's one score per sample [N, 1] as two classes [N, 2]: [1 - p, p] for a probability,
    [0, z] for a logit (whose softmax is [1 - sigmoid(z), sigmoid(z)]); its decision stays its own, p > 0.5."""
    column = np.asarray(scores).reshape(len(scores), 1)
    other = (1.0 - column) if probability else np.zeros_like(column)
    return np.concatenate([other, column], axis=1).astype(column.dtype)


def _dims(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
