"""The fidelity guard: how many of the ranked channels can be zeroed while the model still
agrees with itself on the clean samples.

Ten samples measure agreement in steps of 10%, so the guard measures it on augmented
copies (small shifts, noise, mixup between samples): a finer, slightly pessimistic
estimate of how much clean behaviour the pruning changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from auditor.capture import ChannelStats, channel_max, class_scores, run, scores_output
from auditor.graph.index import GraphIndex
from auditor.graph.passes.edit import mask_shape, reads, weight_types
from auditor.graph.passes.head import correct_head
from auditor.graph.passes.instruments import HEAD_INPUTS, clamp_feed, instrument, mask_feed
from auditor.graph.units import Unit, head_affine
from auditor.io import runtime
from auditor.io.data import Samples
from auditor.settings import GuardSettings


@dataclass(frozen=True)
class Fidelity:
    """How close the pruned model stays to the original on the guard samples."""

    agreement: float  # share of samples with the same predicted class
    divergence: float  # mean KL(original || pruned) of the class distributions, in nats

    def within(self, floor: float, max_divergence: float, slack: float = 1.0) -> bool:
        """Agreement >= floor and divergence <= max_divergence, each limit's slack scaled by `slack`."""
        return self.agreement >= 1.0 - slack * (1.0 - floor) and self.divergence <= slack * max_divergence


@dataclass(frozen=True)
class Bounds:
    """What the repair caps: per unit, an upper bound on its activations (shaped to broadcast
    against one sample of the unit's output), and per float graph input, the clamp [2, ...] =
    (low, high) of every input value. Empty: nothing capped."""

    channels: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


NO_BOUNDS = Bounds()


@dataclass(frozen=True)
class Edits:
    """Everything a candidate repair changes, as the guard feeds it to its one session: channels
    zeroed, bounds, an input filter run before anything reads the input, and a head correction
    (matrix [K, F], bias [K]) added to the head's output. The guard measures edits; it holds none."""

    zeroed: dict[str, list[int]] = field(default_factory=dict)
    bounds: Bounds = NO_BOUNDS
    prefilter: Callable[[Samples], Samples] | None = None
    correction: tuple[np.ndarray, np.ndarray] | None = None


NO_EDITS = Edits()


@dataclass(frozen=True)
class BoundPlan:
    """The bounds the guard chose: `factor` x each channel's clean maximum, tightened where that
    held too to the largest clean value near each position (never below a floor share of the
    channel's bound), and graph inputs clamped to their clean range within a radius."""

    factor: float | None  # None: no factor kept the fidelity bounds, no channel is capped
    position: tuple[int, float] | None  # (radius, floor) of the per-position bound, if one held
    bounds: Bounds
    fidelity: Fidelity
    input_radius: int | None = None  # graph inputs clamped to their clean range within this radius


def _scaled(peak: np.ndarray, factor: float) -> np.ndarray:
    """`factor` x a positive maximum; a maximum that is not positive is kept as it is."""
    return np.where(peak > 0, factor * peak, peak)


def dilate(values: np.ndarray, radius: int, channel_axis: int | None) -> np.ndarray:
    """Maximum over a window of +-`radius` along every axis but `channel_axis` (edges repeated)."""
    out = values
    for axis in range(values.ndim):
        if (channel_axis is not None and axis == channel_axis % values.ndim) or values.shape[axis] == 1:
            continue
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(values.ndim)], mode="edge")
        length = values.shape[axis]
        window = [slice(None)] * values.ndim
        window[axis] = slice(0, length)
        out = padded[tuple(window)].copy()
        for shift in range(1, 2 * radius + 1):  # a running maximum over views: no copy per shift
            window[axis] = slice(shift, shift + length)
            np.maximum(out, padded[tuple(window)], out=out)
    return out


def clampable(samples: Samples) -> tuple[str, ...]:
    """The float32 inputs whose range the guard may clamp."""
    return tuple(sorted(name for name, array in samples.inputs.items() if array.dtype == np.float32 and array.ndim > 1))


def input_clamps(samples: Samples, names: tuple[str, ...], radius: int, fit: int | None = None) -> dict[str, np.ndarray]:
    """Per input value, the [low, high] range of half `fit` (0: even-indexed, 1: odd) of the samples,
    or all of them, widened to the range found within `radius` positions."""
    out = {}
    for name in names:
        array = samples.inputs[name]
        chosen = array if fit is None else array[fit::2]
        high, low = chosen.max(axis=0), chosen.min(axis=0)
        if radius:
            high, low = dilate(high, radius, None), -dilate(-low, radius, None)
        out[name] = np.stack([low, high]).astype(np.float32)
    return out


def bounds_for(stats: dict[str, ChannelStats], units: list[Unit], factor: float | None,
               position: tuple[int, float] | None = None, fit: int | None = None) -> dict[str, np.ndarray]:
    """Bounds from the clean maxima of half `fit` (0 or 1) of the samples, or of all of them."""
    out = {}
    for unit in units:
        per_half = stats[unit.name].half_position_max
        position_max = (per_half if fit is None else per_half[fit : fit + 1]).max(axis=0).astype(np.float64)
        bound = np.full(mask_shape(unit), np.inf)
        if factor is not None:
            bound = _scaled(channel_max(position_max, unit.axis), factor).reshape(mask_shape(unit))
        if position is not None and position_max.ndim > 1:
            radius, floor = position
            nearby = dilate(position_max, radius, unit.axis)
            bound = np.minimum(bound, np.maximum(nearby, floor * bound))
            if stats[unit.name].batch_axis:  # [tokens, batch, features]: the bound broadcasts over the batch there
                bound = np.expand_dims(bound, stats[unit.name].batch_axis)
        out[unit.name] = bound.astype(np.float32)
    return out


@dataclass(frozen=True)
class Walk:
    """Outcome of the guard's search: channels kept zeroed and the fidelity they leave."""

    zeroed: dict[str, list[int]]
    count: int
    agreement: float
    divergence: float
    floor: float
    max_divergence: float
    evaluations: int
    guard_samples: int


def _grouped(chosen: list[tuple[str, int]]) -> dict[str, list[int]]:
    zeroed: dict[str, list[int]] = {}
    for unit, channel in chosen:
        zeroed.setdefault(unit, []).append(channel)
    return zeroed


def divergence(reference: np.ndarray, changed: np.ndarray, label: np.ndarray, spare: int | None = None) -> float:
    """Mean KL(reference || changed) over rows of class distributions [N, K], in nats (see `divergences`)."""
    per_row = divergences(reference, changed, label, spare)
    return max(float(np.mean(per_row)), 0.0) if per_row.size else 0.0


def divergences(reference: np.ndarray, changed: np.ndarray, label: np.ndarray, spare: int | None = None) -> np.ndarray:
    """KL(reference || changed) of each row of class distributions [N, K], in nats. With `spare`,
    a row whose `label` is another class is compared on the classes other than `spare`, each
    distribution renormalised there: moving mass off `spare` alone costs nothing on it."""
    per_row = np.sum(reference * (np.log(reference) - np.log(changed)), axis=1)
    if spare is not None and reference.shape[1] > 2:
        other = label != spare
        kept = np.delete(reference[other], spare, axis=1), np.delete(changed[other], spare, axis=1)
        before, after = (part / part.sum(axis=1, keepdims=True) for part in kept)
        per_row[other] = np.sum(before * (np.log(before) - np.log(after)), axis=1)
    return per_row


def distribution(scores: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, or the scores themselves when they already are. One column is a
    binary model's single output: a probability when every value lies in [0, 1], else a logit; it gives
    the two classes [1 - p, p], so its decision is p > 0.5 (the model's own) and its KL is Bernoulli's."""
    scores = scores.astype(np.float64)
    if scores.ndim == 2 and scores.shape[1] == 1:
        positive = scores if ((scores >= 0) & (scores <= 1)).all() else 1.0 / (1.0 + np.exp(-scores))
        return np.clip(np.concatenate([1.0 - positive, positive], axis=1), 1e-9, 1.0)
    if (scores >= 0).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return np.clip(scores, 1e-9, 1.0)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return np.clip(shifted / shifted.sum(axis=1, keepdims=True), 1e-9, 1.0)


def augment(samples: Samples, settings: GuardSettings, seed: int = 0) -> Samples:
    """Originals plus deterministic shifted / noisy / mixed copies of every float input (`augmented_copies`)."""
    copies = list(augmented_copies(samples, settings, seed))
    if not copies:
        return samples
    inputs = {name: np.concatenate([samples.inputs[name]] + [copy.inputs[name] for copy in copies]) for name in samples.inputs}
    return Samples(inputs, None, samples.source + " (augmented)")


def augmented_copies(samples: Samples, settings: GuardSettings, seed: int = 0) -> Iterator[Samples]:
    """The augmented copies of all the samples, one copy at a time: a shift, noise or a mix with another sample, in
    turn. One at a time so that a check on copies nobody keeps (the held-back check) holds one copy, not all of them:
    at 224 px, 150 copies of 10 samples are 90 MB."""
    rng = np.random.default_rng(seed)
    count = len(samples)
    most = min(settings.max_guard_samples, settings.max_guard_values // max(1, samples.sample_values))
    copies = max(0, min(settings.augmented_per_sample, most // max(count, 1) - 1))
    partner = [rng.permutation(count) for _ in range(copies)]
    floats = {name: array for name, array in samples.inputs.items() if array.dtype.kind == "f"}
    scales = {name: float(array.std()) or 1.0 for name, array in floats.items()}
    for k in range(copies):
        kind = k % 3
        out = {}
        for name, array in samples.inputs.items():
            if name not in floats:
                out[name] = array
                continue
            # shifts along image axes, or a sequence's time axis only (never across its unordered features)
            spatial = [axis for axis in range(1, 2 if array.ndim == 3 else array.ndim) if array.shape[axis] >= 8]
            if kind == 0 and spatial:
                shifted = array
                for axis in spatial[-2:]:
                    shifted = np.roll(shifted, int(rng.integers(-2, 3)), axis=axis)
                out[name] = shifted
            elif kind == 1 or not spatial:
                out[name] = array + rng.normal(0.0, 0.05 * scales[name], size=array.shape).astype(array.dtype)
            else:
                weight = np.float32(rng.uniform(0.7, 0.9))
                out[name] = (weight * array + (1 - weight) * array[partner[k]]).astype(array.dtype)
        yield Samples(out, None, samples.source + f" (augmented copy {k + 1})")


class Guard:
    """Runs the model with any set of channels zeroed, activations capped, inputs clamped and (with
    `head`, a dense classifier head) a correction added to the head's output, all fed to one
    session, and measures agreement with the original."""

    def __init__(self, index: GraphIndex, units: list[Unit], samples: Samples, provider: runtime.Provider,
                 settings: GuardSettings, batch: int, head: Unit | None = None, masks: bool = True) -> None:
        self.settings = settings
        self.index = index
        self.units = units
        self.originals = len(samples)
        self.original = samples
        self.clamp = clampable(samples)
        self.samples = augment(samples, settings)
        self.origin = np.arange(len(self.samples)) % max(self.originals, 1)  # guard row -> original sample
        self.batch = batch
        self.provider = provider
        # without `masks` nothing can be zeroed, and each run saves a Mul per unit (the ResNet's runs ~10%)
        self.masks = masks
        # the instrumented copy lives until its session exists: on a BERT-base it is 400 MB of weights
        masked = instrument(index.model, units, bound=True, clamp=self.clamp, masks=masks).model
        self.head = head
        self.head_input = None if head is None else reads(masked, index.node(head.node))
        self.affine = None if head is None else head_affine(index, head)  # (W [K, F], b [K]) of the head
        self.zero_correction: dict[str, np.ndarray] = {}
        if self.head_input is not None:
            # onnxruntime fetches graph outputs only; the head's input is also what head unlearning fits on
            elem = weight_types(index.model).get(head.weight, TensorProto.FLOAT)
            if self.head_input not in {o.name for o in masked.graph.output}:
                masked.graph.output.append(helper.make_tensor_value_info(self.head_input, elem, None))
            # the head correction is fed, so trying one costs a run, not a new session
            masked = correct_head(masked, head, self.head_input, inputs=HEAD_INPUTS).model
            classes, features = self.affine[0].shape
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            self.zero_correction = {HEAD_INPUTS[0]: np.zeros((features, classes), dtype), HEAD_INPUTS[1]: np.zeros(classes, dtype)}
        self.session = runtime.session(masked, provider)
        self.output = scores_output(index)
        self.evaluations = 0
        self.reference = distribution(self.scores(NO_EDITS))
        self.reference_label = self.reference.argmax(axis=1)

    def scores(self, edits: Edits) -> np.ndarray:
        """Class scores [guard samples, classes] of the model with `edits`."""
        self.evaluations += 1
        return self.classify(self.samples, edits)

    def classify(self, samples: Samples, edits: Edits, rows: np.ndarray | None = None) -> np.ndarray:
        """Class scores [samples, classes] of any samples (or of their `rows`) through the model with `edits`."""
        return class_scores(self._fetch(self.output, samples, edits, rows), self.index, self.output)

    def raw_scores(self, samples: Samples, edits: Edits) -> np.ndarray:
        """The scores output as the model gives it, one row per sample [samples, -1], with `edits`."""
        return self._fetch(self.output, samples, edits)

    def features(self, samples: Samples, edits: Edits) -> np.ndarray:
        """What the head reads [samples, features] in the model with `edits`."""
        if self.head_input is None:
            raise ValueError("the guard was built without a head")
        return self._fetch(self.head_input, samples, edits).astype(np.float64)

    def _fetch(self, name: str, samples: Samples, edits: Edits, rows: np.ndarray | None = None) -> np.ndarray:
        """The tensor `name`, one row per sample (of `rows`, else of all) [samples, -1], with everything `feeds` sets.
        A batch of samples at a time goes through the input filter: at 224 px a filter over all the guard's samples
        at once held hundreds of megabytes."""
        masks = self.feeds(edits)
        out = []
        feeds = samples.batches(self.batch) if rows is None else (feed for _, feed in samples.feeds(rows, self.batch))
        for feed in feeds:
            seen = filtered(Samples(feed, None, samples.source), edits)
            (values,) = run(self.session, [name], {**seen.inputs, **masks})
            out.append(np.asarray(values).reshape(len(next(iter(feed.values()))), -1))
        return np.concatenate(out)

    def feeds(self, edits: Edits) -> dict[str, np.ndarray]:
        """Everything but the samples: masks, bounds, input clamps and the head correction."""
        bounds = edits.bounds
        out = {**mask_feed(self.units, edits.zeroed, caps=bounds.channels, masks=self.masks), **clamp_feed(self.clamp, bounds.inputs)}
        if self.zero_correction:
            out.update(self.zero_correction)
            if edits.correction is not None:
                weight, bias = self.zero_correction.values()
                out[HEAD_INPUTS[0]] = np.asarray(edits.correction[0], weight.dtype).T.copy()
                out[HEAD_INPUTS[1]] = np.asarray(edits.correction[1], bias.dtype)
        return out

    def fidelity(self, edits: Edits, rows: np.ndarray | None = None, spare: int | None = None) -> Fidelity:
        """Agreement and divergence on the guard samples, or on the boolean selection `rows` of them
        (only those rows run: the cross-fits judge on half the samples, at half the cost).

        With `spare` (unlearning's target), a sample the original puts in another class is compared
        over the classes other than `spare`: taking the suspected target's share away from it is what
        unlearning is for, not a change of behaviour (its agreement still counts)."""
        if rows is None:
            pruned = distribution(self.scores(edits))
            reference, label = self.reference, self.reference_label
        else:
            self.evaluations += 1
            pruned = distribution(self.classify(self.samples, edits, np.flatnonzero(rows)))
            reference, label = self.reference[rows], self.reference_label[rows]
        agreement = float((pruned.argmax(axis=1) == label).mean())
        return Fidelity(agreement, divergence(reference, pruned, label, spare))

    def bound(self, stats: dict[str, ChannelStats], floor: float, max_divergence: float, positions: bool = True) -> BoundPlan:
        """The tightest bounds that keep the fidelity bounds, in three stages.

        1. Inputs (with `positions`: the input shape is fixed): each input value clamped to the
           range clean samples give it within a small radius. A patch trigger sits where no
           clean input reaches; on digits that is most of the frame.
        2. Channels: a trigger drives the channels that detect it far past anything clean
           inputs do, and dormant channels (clean maximum 0) are capped at 0, so one cap per
           channel removes much of a backdoor's path without ranking channels at all.
        3. Positions (with `positions`): a patch trigger lights its channels where clean inputs
           leave them quiet, so a second cap per position reaches further.

        Maxima fit on ten samples are themselves measured on those samples, so the guard
        cross-fits: bounds from one half of the samples must also hold on the other half's
        guard copies, which tells a bound that generalises from one that only fits."""
        halves = min(len(stats[u.name].half_position_max) for u in self.units) if self.units else 0
        halves = halves if self.originals >= 4 else 0
        plan: dict = {"radius": None, "factor": None, "position": None}

        def make(fit: int | None, **change) -> Bounds:
            step = {**plan, **change}
            channels = bounds_for(stats, self.units, step["factor"], step["position"], fit)
            inputs = {} if step["radius"] is None else input_clamps(self.original, self.clamp, step["radius"], fit)
            return Bounds(channels, inputs)

        def holds(**change) -> Fidelity | None:
            # a half holds half the samples, so its maxima miss more: it gets `half_slack` times the slack
            trials = [(make(fit, **change), self.origin % 2 != fit, self.settings.half_slack) for fit in range(halves)]
            trials.append((make(None, **change), None, 1.0))
            for trial, rows, slack in trials:
                fidelity = self.fidelity(Edits(bounds=trial), rows)
                if not fidelity.within(floor, max_divergence, slack):
                    return None
            return fidelity

        kept = Fidelity(1.0, 0.0)
        spatial = any(stats[u.name].half_position_max.ndim > 2 for u in self.units)
        # inputs first: on the zoo's tuning half, clamping first and capping with what budget was left
        # halved more attacks (5 of 13) than capping first (4 of 13); half the budget for inputs did worse
        chosen = self.settings
        stages = [("radius", chosen.input_radii if positions and self.clamp else ()), ("factor", chosen.bound_factors),
                  ("position", chosen.position_steps if positions and spatial else ())]
        for key, ladder in stages:
            if key == "position" and plan["factor"] is None:
                continue
            if key == "position":  # two knobs: no order to bisect, so the first step that holds
                for value in ladder:
                    fidelity = holds(**{key: value})
                    if fidelity is not None:
                        plan[key], kept = value, fidelity
                        break
                continue
            # a looser clamp or cap changes less, so fidelity holds from some step of the ladder on:
            # bisect for the tightest step that holds (4 trials for 9 steps, not up to 9)
            low, high, found = 0, len(ladder), None
            while low < high:
                middle = (low + high) // 2
                fidelity = holds(**{key: ladder[middle]})
                if fidelity is not None:
                    high, found = middle, (ladder[middle], fidelity)
                else:
                    low = middle + 1
            if found is not None:
                plan[key], kept = found
        if all(value is None for value in plan.values()):
            return BoundPlan(None, None, NO_BOUNDS, Fidelity(1.0, 0.0))
        return BoundPlan(plan["factor"], plan["position"], make(None), kept, plan["radius"])

    def walk(self, ranking: list[tuple[str, int]], floor: float, max_divergence: float,
             bounds: Bounds = NO_BOUNDS) -> Walk:
        """Zero channels in ranking order, skipping any whose zeroing would break the fidelity
        bounds (agreement >= floor, mean divergence <= max_divergence), then keep only the
        prefix of that choice that also holds on samples the walk never looked at.

        Suspicion ranks clean-important channels high too; skipping them, instead of stopping
        at the first one, lets the walk reach the backdoor channels further down. Channels go
        in blocks that are split only when they fail, so a passing stretch costs one run.
        Skipping is a search over many candidates, and a search fits the samples it is judged
        on: so the walk is judged on half of the samples (with their copies) and its choice is
        cut back, in order, until the other half agrees too.
        """
        search = self.origin % 2 == 0 if self.originals >= 4 else None
        chosen: list[tuple[str, int]] = []
        rejected_blocks = 0
        block_size = self.settings.block
        for start in range(0, len(ranking), block_size):
            block = ranking[start : start + block_size]
            accepted, _ = self._admit(chosen, block, floor, max_divergence, bounds, search)
            chosen += accepted
            rejected_blocks = 0 if accepted else rejected_blocks + 1
            if rejected_blocks >= self.settings.patience:
                break  # the budget is spent: further candidates only cost runs
        if search is not None:
            chosen = self._trim(chosen, floor, max_divergence, bounds)
        best = self.fidelity(Edits(_grouped(chosen), bounds))
        return Walk(_grouped(chosen), len(chosen), best.agreement, best.divergence, floor, max_divergence,
                    self.evaluations, len(self.samples))

    def _trim(self, chosen, floor, max_divergence, bounds) -> list[tuple[str, int]]:
        """The longest prefix of `chosen` within the fidelity bounds on all guard samples (bisection)."""
        def holds(length: int) -> bool:
            return self.fidelity(Edits(_grouped(chosen[:length]), bounds)).within(floor, max_divergence)

        if not chosen or holds(len(chosen)):  # nothing chosen: nothing to cut back, and no run to spend
            return chosen
        low, high = 0, len(chosen)  # holds(low) is assumed: the bound alone passed the guard
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if holds(middle) else (low, middle)
        return chosen[:low]

    def _admit(self, chosen, block, floor, max_divergence, bounds, rows) -> tuple[list[tuple[str, int]], Fidelity]:
        """The part of `block` that can join `chosen` within the bounds on `rows` (recursive halving)."""
        fidelity = self.fidelity(Edits(_grouped(chosen + block), bounds), rows)
        if fidelity.within(floor, max_divergence):
            return list(block), fidelity
        if len(block) == 1:
            return [], fidelity
        half = len(block) // 2
        first, fidelity_first = self._admit(chosen, block[:half], floor, max_divergence, bounds, rows)
        second, fidelity_second = self._admit(chosen + first, block[half:], floor, max_divergence, bounds, rows)
        if second:
            return first + second, fidelity_second
        return first, fidelity_first


def filtered(samples: Samples, edits: Edits) -> Samples:
    """`samples` as the repaired model's first nodes see them (through the edits' input filter, if any)."""
    return samples if edits.prefilter is None else edits.prefilter(samples)
