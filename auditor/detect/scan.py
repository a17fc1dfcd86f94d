"""The detection stage: capture the clean samples' statistics, run the detectors, decide.

One forward pass through the instrumented graph gives the per-channel statistics and the clean
class scores; then, with `sus`, the corruption probe, and on image inputs, while each could still
raise the verdict's score, the Fourier probe and the patch search, all through a plain session.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from auditor.capture import Capture, capture, classifier, scores_output
from auditor.detect import channels, fourier, patch, probe, tamper
from auditor.detect.verdict import Verdict, cut_short, decide
from auditor.errors import DataError, ModelError
from auditor.graph import kinds as kinds_of
from auditor.graph.flow import CONTROL_OPS, has_weighted, subgraphs
from auditor.graph.index import GraphIndex
from auditor.graph.units import Unit, find_units
from auditor.io import data, model, runtime
from auditor.settings import Settings

# (stage, done, total): a stage's forward passes so far of those planned (total 0: not known ahead). The CLI draws
# it as a progress bar; the library never prints.
Progress = Callable[[str, int, int], None]

_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
_QUANTIZED = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QuantizeLinear", "DequantizeLinear"}


@dataclass
class Scan:
    """Everything detection found, and what the repair stage reuses (the loaded model, its units,
    the samples, the clean capture and a classifier through a plain session)."""

    loaded: model.Model
    index: GraphIndex
    units: list[Unit]
    samples: data.Samples  # every clean sample (`keep_samples`), else the first `detector_samples`
    provider: runtime.Provider
    capture: Capture
    suspicion: dict[str, channels.Suspicion]
    signals: dict[str, channels.Signals]
    verdict: Verdict
    graph: tamper.GraphCheck
    kinds: kinds_of.Kinds
    blur_axes: dict[str, tuple[int, ...]] | None  # where the probe blurs each input (None: an image's own axes)
    batch: int  # samples per run: 1 when the model fixes its batch dimension at 1
    classify: Callable[[data.Samples], np.ndarray]  # class scores through a plain session on the original
    timings: dict[str, float] = field(default_factory=dict)


def prunable_units(index: GraphIndex, units: list[Unit]) -> list[Unit]:
    """The units auditor may bound or zero; a model without any cannot be audited (ModelError)."""
    prunable = [u for u in units if u.prunable]
    if not prunable:
        quantized = sorted({n.op_type for n in index.graph.node if n.op_type in _QUANTIZED})
        if quantized:
            raise ModelError(f"the model is quantized ({', '.join(quantized)}): auditor needs float weights; "
                             "audit the float model before quantization")
        inside = [n.op_type for n in index.graph.node if n.op_type in CONTROL_OPS
                  and any(has_weighted(g) for g in subgraphs(n))]
        if inside:
            raise ModelError(f"the model's weighted layers sit inside control-flow bodies ({', '.join(sorted(set(inside)))}), "
                             "which auditor reads but does not measure or bound: it audits layers of the main graph")
        recurrent = sorted({n.op_type for n in index.graph.node if n.op_type in _RECURRENT})
        if recurrent:
            raise ModelError(f"the model's layers are recurrent ({', '.join(recurrent)}) with no Conv, Gemm or MatMul "
                             "layer before its classifier: auditor bounds and scores those layers only")
        raise ModelError(
            "no prunable unit found (needs Conv/Gemm/MatMul layers with constant float weights "
            "before the classifier): the graph has no weighted layer auditor can measure"
        )
    return prunable


def scan(source: str | Path | model.Model, data_path, limit: int | None, method: str, provider: runtime.Provider, settings: Settings,
         threshold: float | None = None, patch_search: bool = True, fourier_probe: bool = True,
         notice: Callable[[str], None] | None = None, input_kind: str | None = None, output_kind: str | None = None,
         progress: Progress | None = None, keep_samples: bool = True) -> Scan:
    """Load, capture, run the detectors and decide (`threshold`: the verdict's, else its basis's default). `progress`
    hears each stage start and its forward passes as they run. `keep_samples`: hold every clean sample in memory (a
    repair reuses them all); else the capture reads them from their file a batch at a time and only the first ones the
    detectors read are held (`detector_samples`), so that memory does not grow with N."""
    progress = progress or _silent
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if method not in channels.METHODS:
        raise ModelError(f"unknown method {method!r}: use one of {', '.join(channels.METHODS)}")
    loaded = source if isinstance(source, model.Model) else model.load(source, settings.limits)
    index = GraphIndex(loaded.proto)
    specs = data.input_specs(loaded.proto)
    main = next((s for s in specs if s.dtype.kind == "f"), specs[0])
    found_kinds = kinds_of.find(index, main, scores_output(index), input_kind, output_kind)
    kinds_of.judged(found_kinds, scores_output(index))
    blur_axes = kinds_of.blur_axes(found_kinds, main.name, len(main.shape or ()))
    images = found_kinds.input in ("image", "flat-image")  # the patch search and the Fourier probe need one
    patch_search, fourier_probe = patch_search and images, fourier_probe and images
    units = find_units(index)
    prunable_units(index, units)
    batch = data.batch_size(specs, settings.capture.batch)
    every = (data.load if keep_samples else data.stream)(data_path, specs, limit, settings.limits.data_bytes, settings.preprocess)
    first = every.head(detector_samples(settings, every.sample_values))
    samples = every if keep_samples else first
    batch = data.bounded_batch(batch, first, settings.capture.batch_values)
    timings["load"] = time.perf_counter() - start
    progress("capture", 0, len(every))
    # The probe's, the searches' and the notch's many passes need no instruments: a plain session
    # (the instrumented one runs the probe three to four times slower), made on first use.
    plain = _lazy_classifier(loaded.proto, index, provider, batch)
    measured = len(every) if keep_samples else min(len(every), max(settings.capture.scan_statistics, len(first)))
    captured = capture(loaded.proto, index, units, every, provider, batch, settings.capture.gram_channels, measured)
    if measured < len(every):  # the other samples' classes, through the plain session
        tick = time.perf_counter()
        rest = [plain(data.Samples(feed, None, every.source)) for _, feed in every.feeds(np.arange(measured, len(every)), batch)]
        captured = dataclasses.replace(captured, scores=np.concatenate([captured.scores, *rest]),
                                       seconds=captured.seconds + time.perf_counter() - tick)
    timings["capture"] = captured.seconds
    progress("capture", len(every), len(every))
    progress("graph check", 0, 0)
    classes = int(np.asarray(captured.scores).reshape(len(every), -1).shape[1])
    if every.labels is not None and every.labels.size and int(every.labels.max()) >= classes:
        raise DataError(f"{Path(data_path).name}: label {int(every.labels.max())} is out of range "
                        f"for a model with {classes} classes; fix the labels 'y' or drop them")
    outside = [c for c in settings.verdict.background_classes if not 0 <= c < classes]
    if outside:
        raise ModelError(f"background class {outside[0]} is out of range for a model with {classes} classes (0 to {classes - 1}); "
                         "fix --background-class or verdict.background_classes")
    checked = tamper.check(loaded.proto, index, first, provider, batch, scores_output(index), settings.graph, loaded.storage)
    timings["graph"] = checked.seconds
    tick = time.perf_counter()
    signals, suspicion = {}, {}
    for unit in units:
        signals[unit.name] = channels.compute(index, unit, captured.stats[unit.name])
        suspicion[unit.name] = channels.suspicion(signals[unit.name], method)
    chosen, others = settings.verdict, settings.verdict.min_others
    budget = settings.run.budget
    deadline = time.perf_counter() + budget if budget > 0 else float("inf")
    cut: list[str] = []  # the detectors the budget stopped
    started: dict[str, float] = {}  # when each detector began: its time counts even when the budget cut it

    def counted(stage: str, total: int) -> Callable[[data.Samples], np.ndarray]:
        started[stage] = time.perf_counter()
        progress(stage, 0, total)
        return _counted(plain, stage, total, progress, deadline)

    probed = None
    if method == "sus":
        try:
            probed = probe.probe(samples, captured.scores, counted("corruption probe", 0), settings.probe, others, blur_axes=blur_axes,
                                 background=chosen.background_classes)
        except _OutOfTime as stopped:
            cut.append(stopped.stage)
    found, waved = None, None
    # a graph finding already decides; with too few classes no behavioural search can (see verdict.decide)
    if probed is not None and probed.shares and not checked.findings and classes >= settings.verdict.min_classes:
        reached = probed.score  # each search runs only while it could still raise the verdict's score
        fourier_runs = fourier_probe and reached < chosen.fourier_reach
        if notice is not None:
            forecast = _forecast(samples, probed, fourier_runs, patch_search and reached < chosen.patch_reach, classes, settings)
            if forecast is not None:
                notice(forecast)
        try:
            if fourier_runs:
                classify = counted("Fourier probe", fourier.planned_passes(samples, settings.fourier))
                waved = fourier.search(samples, captured.scores, classify, settings.fourier, others)
                if waved is not None:
                    reached = max(reached, chosen.fourier_value(waved.score))
            if patch_search and reached < chosen.patch_reach:
                classify = counted("patch search", patch.planned_passes(samples, classes, settings.patch))
                found = patch.search(samples, captured.scores, classify, settings.patch, others)
        except _OutOfTime as stopped:
            cut.append(stopped.stage)
    ends = [*sorted(started.values())[1:], time.perf_counter()]
    spent = {stage: end - begun for (stage, begun), end in zip(sorted(started.items(), key=lambda kv: kv[1]), ends)}
    for key, stage in (("probe", "corruption probe"), ("fourier", "Fourier probe"), ("patch", "patch search")):
        timings[key] = spent.get(stage, 0.0)
    verdict = decide(settings, threshold, {u.name: suspicion[u.name].score for u in units if u.prunable},
                     probed, found, waved, checked.findings, classes, _unjudged(method, probed))
    verdict = cut_short(verdict, tuple(cut), budget)
    timings["score"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start
    return Scan(loaded, index, units, samples, provider, captured, suspicion, signals, verdict, checked, found_kinds, blur_axes,
                batch, plain, timings)


def detector_samples(settings: Settings, sample_values: int) -> int:
    """How many of the first clean samples (of `sample_values` input values each) any detector or the report's
    evidence reads (the capture reads them all)."""
    probed = probe.probed_count(settings.probe.max_samples, sample_values, settings.probe)
    return max(probed, settings.patch.max_samples, settings.fourier.max_samples)


def _forecast(samples: data.Samples, probed: probe.Probe, fourier_runs: bool, patch_runs: bool, classes: int,
              settings: Settings) -> str | None:
    """What the searches about to run will cost, at the probe's pace per forward pass, when that is
    over `run.notice_seconds` (else None). An upper bound: a search stops early once nothing can beat its best."""
    planned = {"the Fourier probe": (fourier.planned_passes(samples, settings.fourier) if fourier_runs else 0, "fourier_probe"),
               "the patch search": (patch.planned_passes(samples, classes, settings.patch) if patch_runs else 0, "patch_search")}
    planned = {name: item for name, item in planned.items() if item[0]}
    passes = sum(count for count, _ in planned.values())
    if not passes or probed.pace is None:
        return None
    seconds = passes * probed.pace
    if seconds <= settings.run.notice_seconds:
        return None
    when = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    names, switches = " and ".join(planned), ", ".join(switch for _, switch in planned.values())
    return (f"{names} will run up to {passes:,} forward passes, about {when} on this model at the probe's pace "
            f"(switched off by: {switches})")


def _silent(stage: str, done: int, total: int) -> None:
    """No one is listening."""


class _OutOfTime(Exception):
    """The time budget ran out inside a detector (`stage`): it stops there, its evidence missing."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def _counted(classify: Callable[[data.Samples], np.ndarray], stage: str, total: int, progress: Progress,
             deadline: float = float("inf")) -> Callable[[data.Samples], np.ndarray]:
    """`classify`, telling `progress` how many samples it has run so far in `stage` (a search's early stop ends below
    `total`), and stopping the detector (`_OutOfTime`) once `deadline` (perf_counter seconds) has passed."""
    if progress is _silent and deadline == float("inf"):
        return classify
    done = [0]

    def run(samples: data.Samples) -> np.ndarray:
        if time.perf_counter() > deadline:
            raise _OutOfTime(stage)
        scores = classify(samples)
        done[0] += len(samples)
        progress(stage, min(done[0], total) if total else done[0], total)
        return scores
    return run


def _lazy_classifier(proto: onnx.ModelProto, index: GraphIndex, provider: runtime.Provider,
                     batch: int) -> Callable[[data.Samples], np.ndarray]:
    """samples -> class scores through a plain session on `proto`, built on the first call only
    (`scan --method clp` never needs one)."""
    made = functools.cache(lambda: classifier(proto, index, provider, batch))
    return lambda samples: made()(samples)


def _unjudged(method: str, probed: probe.Probe | None) -> str | None:
    """Why no behavioural detector judged the model, where that is known here (verdict.decide words the rest)."""
    if method != "sus":
        return f"method {method} ranks channels for pruning and runs no detector (method sus does)"
    if probed is not None and not probed.shares:
        return ("the model's input holds no float values (token ids, say), which the corruption probe, the patch search "
                "and the Fourier probe perturb; only the graph check applies to it")
    return None


def coverage(captured: Capture) -> dict:
    """How many classes the model gives the clean samples, of how many it has: unlearning can only
    protect a class that some clean sample falls in."""
    classes = int(captured.scores.reshape(len(captured.scores), -1).shape[1])
    seen = np.unique(captured.labels)
    return {"classes": classes, "predicted_classes": int(seen.size),
            "missing_classes": [int(c) for c in np.setdiff1d(np.arange(classes), seen)]}
