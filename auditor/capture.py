"""Per-channel statistics of every unit, reduced inside the graph.

We add reduction nodes to a copy of the model so that onnxruntime returns, per batch,
sums, sums of squares, maxima and the channel Gram matrix of each unit's output:
kilobytes instead of activations, and host memory independent of the sample count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from auditor.errors import DataError, ModelError
from auditor.graph import kinds
from auditor.graph.index import GraphIndex
from auditor.graph.units import Unit
from auditor.io import runtime
from auditor.io.data import SampleFile, Samples
from auditor.io.model import default_opset


@dataclass(frozen=True)
class ChannelStats:
    """Clean-data statistics of one unit's output over samples x positions.

    count: rows reduced (samples x positions); sum, sumsq, max: [C]; gram: [C, C] = sum of
    outer products; half_position_max: [halves, ...]: the elementwise maximum over the even-indexed
    samples, then over the odd-indexed ones, in the tensor's own layout without the batch axis
    (activation bounds are fit on one half and checked on the other); bn_count/bn_sum/bn_sumsq: the same for the BatchNormalization input
    (zero-length when the unit has no BN).
    """

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    max: np.ndarray
    gram: np.ndarray
    half_position_max: np.ndarray  # [halves, *one sample's shape], float32: see `capture`
    bn_count: int
    bn_sum: np.ndarray
    bn_sumsq: np.ndarray
    gram_index: np.ndarray | None = None  # the channels `gram` covers, in order (None: every channel)
    batch_axis: int = 0  # where the batch axis sat in the tensor (`half_position_max` has it removed)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.sumsq / max(self.count, 1) - self.mean**2, 0.0)


@dataclass(frozen=True)
class Capture:
    """Statistics per unit name, the model's class scores on the samples [N, K], and seconds.
    Further passes go through `classifier`'s plain session: the instruments slow them."""

    stats: dict[str, ChannelStats]
    scores: np.ndarray
    seconds: float
    measured: int  # how many of the first samples the statistics come from (the scores may cover more)

    @property
    def labels(self) -> np.ndarray:
        """[N]: the class the model gives each sample."""
        return self.scores.reshape(len(self.scores), -1).argmax(axis=1)


def channel_max(position_max: np.ndarray, axis: int) -> np.ndarray:
    """[C]: the maximum per channel of per-position maxima (`axis`: the unit's negative channel axis)."""
    moved = np.moveaxis(position_max, axis, -1)
    return moved.reshape(-1, moved.shape[-1]).max(axis=0)


def scores_output(index: GraphIndex) -> str:
    """The graph output holding class scores (logits or probabilities): float, rank 2 if known, and of several such
    the first a Softmax or Sigmoid computes (a face detector's box and landmark regressions come out beside its
    face probability, and only the latter is class scores)."""
    floats = [o for o in index.graph.output if o.type.tensor_type.elem_type in _FLOATS]
    if not floats:
        raise ModelError("the model has no float output with class scores (e.g. a ZipMap or label-only output); export logits or probabilities")
    ranked = [o for o in floats if index.rank(o.name) == 2 or len(o.type.tensor_type.shape.dim) == 2] or floats
    normalised = [o for o in ranked if kinds.last_op(index, o.name) in ("Softmax", "LogSoftmax", "Sigmoid")]
    return (normalised or ranked)[0].name


_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _reduce(op: str, source: str, out: str, opset: int, nodes: list, inits: list, axis: int = 0) -> None:
    axes_inline = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    if axes_inline:
        axes = f"{out}__axes"
        inits.append(helper.make_tensor(axes, TensorProto.INT64, [1], [axis]))
        nodes.append(helper.make_node(op, [source, axes], [out], keepdims=0))
    else:
        nodes.append(helper.make_node(op, [source], [out], axes=[axis], keepdims=0))


def _rows(tensor: str, rank: int, axis: int, channels: int, elem: int, tag: str, nodes: list, inits: list) -> str:
    """[.., C, ..] -> [rows, C] float32 with the channel last."""
    positive = axis + rank
    perm = [d for d in range(rank) if d != positive] + [positive]
    current = tensor
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [current], [f"{tag}__f32"], to=TensorProto.FLOAT))
        current = f"{tag}__f32"
    if perm != list(range(rank)):
        nodes.append(helper.make_node("Transpose", [current], [f"{tag}__t"], perm=perm))
        current = f"{tag}__t"
    shape = f"{tag}__shape"
    inits.append(helper.make_tensor(shape, TensorProto.INT64, [2], [-1, channels]))
    nodes.append(helper.make_node("Reshape", [current, shape], [f"{tag}__rows"]))
    return f"{tag}__rows"


def gram_index(channels: int, most: int) -> np.ndarray | None:
    """The channels a unit's Gram matrix covers: None (all) up to `most`, else `most` evenly spaced ones."""
    return None if channels <= most else np.unique(np.linspace(0, channels - 1, most).round().astype(np.int64))


def build_capture_model(model: onnx.ModelProto, index: GraphIndex, units: list[Unit], ranks: dict[str, int],
                        gram_channels: int = 512) -> tuple[onnx.GraphProto, list[str]]:
    """The instruments to add to `model` (`runtime.session(model, provider, extra)`): nodes, initializers and extra
    outputs that are per-channel reductions of every unit (the Gram matrix over at most `gram_channels` of its
    channels), and those outputs' names."""
    opset = default_opset(model)
    nodes: list = []
    inits: list = []
    outputs: list[str] = []
    for position, unit in enumerate(units):
        tag = f"__auditor_u{position}"
        rows = _rows(unit.output, ranks[unit.output], unit.axis, unit.channels, index.elem_type(unit.output), tag, nodes, inits)
        _reduce("ReduceSum", rows, f"{tag}_sum", opset, nodes, inits)
        _reduce("ReduceSumSquare", rows, f"{tag}_sumsq", opset, nodes, inits)
        _reduce("ReduceMax", rows, f"{tag}_max", opset, nodes, inits)
        sampled = gram_index(unit.channels, gram_channels)
        related = rows
        if sampled is not None:
            inits.append(numpy_helper.from_array(sampled, f"{tag}__gidx"))
            nodes.append(helper.make_node("Gather", [rows, f"{tag}__gidx"], [f"{tag}__grows"], axis=1))
            related = f"{tag}__grows"
        nodes.append(helper.make_node("Transpose", [related], [f"{tag}__rows_t"], perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", [f"{tag}__rows_t", related], [f"{tag}_gram"]))
        nodes.append(helper.make_node("Shape", [rows], [f"{tag}_count"]))
        source = unit.output
        if index.elem_type(unit.output) != TensorProto.FLOAT:
            source = f"{tag}p__f32"
            nodes.append(helper.make_node("Cast", [unit.output], [source], to=TensorProto.FLOAT))
        _reduce("ReduceMax", source, f"{tag}_pmax", opset, nodes, inits, batch_axis(index.shape(unit.output)))
        outputs += [f"{tag}_sum", f"{tag}_sumsq", f"{tag}_max", f"{tag}_gram", f"{tag}_count", f"{tag}_pmax"]
        if unit.bn is not None:
            bn_in = index.node(unit.bn).input[0]
            bn_rows = _rows(bn_in, ranks[bn_in], 1 - ranks[bn_in], unit.channels, index.elem_type(bn_in), f"{tag}b", nodes, inits)
            _reduce("ReduceSum", bn_rows, f"{tag}_bnsum", opset, nodes, inits)
            _reduce("ReduceSumSquare", bn_rows, f"{tag}_bnsumsq", opset, nodes, inits)
            nodes.append(helper.make_node("Shape", [bn_rows], [f"{tag}_bncount"]))
            outputs += [f"{tag}_bnsum", f"{tag}_bnsumsq", f"{tag}_bncount"]
    extra = onnx.GraphProto()
    extra.node.extend(nodes)
    extra.initializer.extend(inits)
    for name in outputs:
        kind = TensorProto.INT64 if name.endswith("count") else TensorProto.FLOAT
        extra.output.append(helper.make_tensor_value_info(name, kind, None))
    return extra, outputs


def batch_axis(shape: list[int | None] | None) -> int:
    """The batch axis of a tensor of inferred `shape`: its first dimension that shape inference could not fix, else
    the first (torch's sequence-first attention computes on [tokens, batch, features]; its known token count comes
    first)."""
    return next((axis for axis, size in enumerate(shape or ()) if size is None), 0)


def probe_ranks(model: onnx.ModelProto, index: GraphIndex, units: list[Unit], samples: Samples | SampleFile,
                provider: runtime.Provider) -> dict[str, int]:
    """Ranks of the tensors we reduce: from shape inference, else from one probe sample."""
    wanted = {u.output for u in units} | {index.node(u.bn).input[0] for u in units if u.bn is not None}
    ranks = {name: index.rank(name) for name in wanted}
    unknown = sorted(name for name, rank in ranks.items() if rank is None)
    if unknown:
        extra = onnx.GraphProto()
        existing = {o.name for o in model.graph.output}
        for name in unknown:
            if name not in existing:
                extra.output.append(helper.make_tensor_value_info(name, index.elem_type(name), None))
        session = runtime.session(model, provider, extra)
        values = run(session, unknown, samples.head(1).inputs)
        ranks.update({name: value.ndim for name, value in zip(unknown, values)})
    return ranks


def run(session, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """session.run with data problems reported as DataError (one line)."""
    try:
        return session.run(names, feed)
    except Exception as exc:
        raise DataError(f"onnxruntime rejected the samples: {runtime._first_line(exc)}") from exc


def capture(model: onnx.ModelProto, index: GraphIndex, units: list[Unit], samples: Samples | SampleFile,
            provider: runtime.Provider, batch: int, gram_channels: int = 512, count: int | None = None) -> Capture:
    """Stream the first `count` (default: all) of `samples` (in memory, or read from their file a batch at a time)
    through the instrumented model and accumulate statistics in float64."""
    start = time.perf_counter()
    count = len(samples) if count is None else min(count, len(samples))
    ranks = probe_ranks(model, index, units, samples, provider)
    extra, outputs = build_capture_model(model, index, units, ranks, gram_channels)
    scores_name = scores_output(index)
    session = runtime.session(model, provider, extra)
    totals: dict[str, np.ndarray] = {}
    halves: dict[str, list[np.ndarray]] = {}
    scores: list[np.ndarray | None] = [None] * count
    order = np.arange(count)
    for half in (0, 1):  # each batch holds one half only, so per-half maxima come from in-graph reductions
        chosen = order[order % 2 == half]
        if not len(chosen):
            continue
        for name in outputs:
            if name.endswith("_pmax"):
                halves.setdefault(name, []).append(None)
        for rows, feed in samples.feeds(chosen, batch):
            values = run(session, [scores_name, *outputs], feed)
            for row, value in zip(rows, np.asarray(values[0], dtype=np.float32)):
                scores[row] = value
            for name, value in zip(outputs, values[1:]):
                # maxima are exact in the outputs' float32: a ViT-B/16's per-position maxima are 260 MB as float64
                value = np.asarray(value, dtype=np.float32 if name.endswith("_pmax") else np.float64)
                if name.endswith("_pmax"):
                    seen = halves[name][-1]
                    halves[name][-1] = value if seen is None else np.maximum(seen, value)
                elif name.endswith("_max"):
                    totals[name] = np.maximum(totals[name], value) if name in totals else value
                elif name.endswith("count"):
                    totals[name] = totals.get(name, 0) + value[0]
                else:
                    totals[name] = totals[name] + value if name in totals else value
    stats = {}
    for position, unit in enumerate(units):
        tag = f"__auditor_u{position}"
        has_bn = unit.bn is not None
        empty = np.zeros(0)
        stats[unit.name] = ChannelStats(
            count=int(totals[f"{tag}_count"]),
            sum=totals[f"{tag}_sum"],
            sumsq=totals[f"{tag}_sumsq"],
            max=totals[f"{tag}_max"],
            gram=totals[f"{tag}_gram"],
            half_position_max=np.stack(halves[f"{tag}_pmax"]),
            bn_count=int(totals[f"{tag}_bncount"]) if has_bn else 0,
            bn_sum=totals[f"{tag}_bnsum"] if has_bn else empty,
            bn_sumsq=totals[f"{tag}_bnsumsq"] if has_bn else empty,
            gram_index=gram_index(unit.channels, gram_channels),
            batch_axis=batch_axis(index.shape(unit.output)),
        )

    return Capture(stats=stats, scores=class_scores(np.stack(scores), index, scores_name), seconds=time.perf_counter() - start,
                   measured=count)


def class_scores(raw: np.ndarray, index: GraphIndex, scores_name: str) -> np.ndarray:
    """The scores output's values [N, ...] as class scores [N, K]: a single-output (binary) model's one column
    becomes its two classes, so that every stage reads its decision (p > 0.5) as an argmax."""
    scores = np.asarray(raw).reshape(len(raw), -1)
    if scores.shape[1] != 1:
        return scores
    return kinds.two_columns(scores, kinds.binary_probability(index, scores_name))


def _classify(session, index: GraphIndex, scores_name: str, batch: int) -> Callable[[Samples], np.ndarray]:
    def classify(more: Samples) -> np.ndarray:
        out = [np.asarray(run(session, [scores_name], feed)[0], dtype=np.float32) for feed in more.batches(batch)]
        return class_scores(np.concatenate(out).reshape(len(more), -1), index, scores_name)

    return classify


def classifier(model: onnx.ModelProto, index: GraphIndex, provider: runtime.Provider,
               batch: int) -> Callable[[Samples], np.ndarray]:
    """samples -> class scores [N, K] through a plain session on the model: for the many forward
    passes of the patch search and the Fourier probe, which the instrumented session would slow
    several times over."""
    return classify_with(runtime.session(model, provider), index, batch)


def classify_with(session: ort.InferenceSession, index: GraphIndex, batch: int) -> Callable[[Samples], np.ndarray]:
    """samples -> class scores [N, K] through an existing plain `session` on the model `index` reads."""
    return _classify(session, index, scores_output(index), batch)
