"""The repair stage: plan with the fidelity guard, rewrite the graph with the passes, verify.

Planning runs the steps in a fixed order, each measured on top of the ones before it:
activation bounds (input clamps, channel caps, position caps), zeroing of ranked channels (only
when asked), an input filter (notch or occlusion, for the verdict's basis), head unlearning. The
result is one `RepairPlan`; `build` turns it into a model by running one pass per step, in the
order the graph reads them: input filter, input clamp, the network with its caps, the head's
correction. `verify` checks the written graph computes what the guard measured.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnxruntime as ort

from auditor.capture import class_scores, classify_with, run, scores_output
from auditor.detect import fourier, patch, probe, tamper
from auditor.detect.channels import Suspicion
from auditor.detect.scan import Scan
from auditor.detect.verdict import Verdict
from auditor.errors import InternalError, RepairError
from auditor.graph.index import GraphIndex
from auditor.graph.passes import PassResult
from auditor.graph.passes.channels import zero_and_cap
from auditor.graph.passes.clamp import clamp_inputs
from auditor.graph.passes.edit import reads
from auditor.graph.passes.head import correct_head
from auditor.graph.passes.notch import notch_input
from auditor.graph.passes.occlusion import occlude_input
from auditor.graph.passes.provenance import stamp
from auditor.graph.units import Unit, head_affine
from auditor.io import data, model, runtime
from auditor.mitigation.filters import FilterOutcome, Notch, plan_notch, plan_occlusion, window_text
from auditor.mitigation.guard import NO_BOUNDS, BoundPlan, Edits, Fidelity, Guard, augmented_copies, distribution, divergences
from auditor.mitigation.unlearn import UnlearnOutcome, plan_unlearning
from auditor.settings import Settings


@dataclass(frozen=True)
class RepairChoices:
    """Which repair steps run. None: the method's default (sus: bounds, filters and unlearning on,
    zeroing only with a channel threshold or max_prune; clp / fp: zeroing alone, as published)."""

    method: str = "sus"
    threshold: float | None = None  # zero only channels scoring at or above it
    max_prune: int | float | None = None  # at most this many channels (>= 1) or this share of all (< 1)
    bound: bool | None = None
    zero: bool | None = None
    notch: bool | None = None
    occlude: bool | None = None
    unlearn: bool | None = None


@dataclass(frozen=True)
class RepairPlan:
    """What the repair will write, every step measured by the guard."""

    zeroed: dict[str, list[int]]  # unit -> channels zeroed
    count: int
    bounds: BoundPlan
    notch: FilterOutcome | None
    occlusion: FilterOutcome | None
    unlearning: UnlearnOutcome | None
    head: Unit | None
    fidelity: Fidelity  # of the whole plan on the guard samples (see RepairOutcome.agreement)
    guard_samples: int
    evaluations: int

    @property
    def edits(self) -> Edits:
        """The plan as the guard feeds it: what `verify` and `checks` measure the written model against."""
        chosen = next((step.filter for step in (self.notch, self.occlusion) if step is not None and step.applied), None)
        unlearned = self.unlearning
        fitted = unlearned.correction if unlearned is not None and unlearned.applied else None
        return Edits(self.zeroed, self.bounds.bounds, None if chosen is None else chosen.apply,
                     None if fitted is None else (fitted.matrix, fitted.bias))


@dataclass(frozen=True)
class ShareCheck:
    """A found trigger (patch or Fourier pattern) on the repaired model: the share of the other clean
    samples it sends to its class, before (the search's samples) and after (every sample)."""

    target: int | None
    share_before: float
    share_after: float


@dataclass(frozen=True)
class ProbeCheck:
    """The corruption probe run again on the repaired model."""

    score: float
    target: int | None
    corruption: str | None
    suspected_target: int | None  # the verdict's
    suspected_target_share: float | None  # the largest share that class still takes
    above_threshold: bool


@dataclass
class RepairOutcome:
    """What the repair did (schema in auditor/report.py)."""

    output: str
    sha256: str
    plan: RepairPlan
    changes: dict[str, str]  # unit or graph input -> what the passes did there
    settings: Settings
    probe: ProbeCheck | None = None
    patch: ShareCheck | None = None
    fourier: ShareCheck | None = None
    meta: dict[str, str] = field(default_factory=dict)  # the model's provenance metadata (see `provenance`)
    evaluation: dict | None = None  # {before, after}: the CLI's test-set measurement, when given
    branches: tuple[tamper.Finding, ...] = ()  # graph branches cut out before the rest of the repair
    held_back: HeldBack | None = None  # the written model against the original on samples the guard never saw
    replanned: str | None = None  # why an earlier plan was not written (a held-back failure, a moved shortcut)

    @property
    def bound_units(self) -> int:
        """Units with an activation bound (every prunable unit the guard bounded)."""
        return len(self.plan.bounds.bounds.channels)

    def actions(self) -> list[str]:
        """Each step applied, in words: what the console, the HTML page and the model's metadata say."""
        return [text for key, text in self.meta.items() if key in ACTION_KEYS]

    def to_dict(self) -> dict:
        plan, bound = self.plan, self.plan.bounds
        limits = self.settings.repair
        return {
            "output": self.output, "sha256": self.sha256, "zeroed": plan.zeroed, "count": plan.count,
            "how": dict(sorted(self.changes.items())),
            "bound": {"factor": bound.factor, "units": self.bound_units, "input_radius": bound.input_radius,
                      "position": None if bound.position is None else {"radius": bound.position[0], "floor": bound.position[1]}},
            "agreement": plan.fidelity.agreement, "divergence": plan.fidelity.divergence,
            "max_divergence": limits.max_divergence, "floor": limits.floor, "layer_cap": limits.layer_cap,
            "guard_samples": plan.guard_samples, "evaluations": plan.evaluations,
            "notch": None if plan.notch is None else plan.notch.to_dict(),
            "occlusion": None if plan.occlusion is None else plan.occlusion.to_dict(),
            "unlearning": None if plan.unlearning is None else plan.unlearning.to_dict(),
            "probe": None if self.probe is None else vars(self.probe).copy(),
            "patch": None if self.patch is None else vars(self.patch).copy(),
            "fourier": None if self.fourier is None else vars(self.fourier).copy(),
            "evaluation": self.evaluation,
            "branches": [f.summary() for f in self.branches],
            "held_back": None if self.held_back is None else vars(self.held_back).copy(),
            "replanned": self.replanned,
            "actions": self.actions(),
        }


def ranking(units: list[Unit], suspicion: dict[str, Suspicion], threshold: float | None, layer_cap: float,
            max_prune: int | float | None = None) -> list[tuple[str, int]]:
    """Prunable channels, most suspicious first, bounded by threshold, per-layer cap and max count."""
    candidates = []
    for order, unit in enumerate(units):
        if not unit.prunable:
            continue
        for channel, value in enumerate(suspicion[unit.name].score):
            if threshold is None or value >= threshold:
                candidates.append((-float(value), order, channel, unit))
    candidates.sort(key=lambda item: item[:3])
    taken: dict[str, int] = {}
    ranked = []
    for _, _, channel, unit in candidates:
        cap = int(np.floor(layer_cap * unit.channels))
        if taken.get(unit.name, 0) >= cap:
            continue
        taken[unit.name] = taken.get(unit.name, 0) + 1
        ranked.append((unit.name, channel))
    if max_prune is not None:
        total = sum(u.channels for u in units if u.prunable)
        limit = int(max_prune) if max_prune >= 1 else int(np.floor(max_prune * total))
        ranked = ranked[:limit]
    return ranked


def dense_head(index: GraphIndex, units: list[Unit]) -> Unit | None:
    """The last classifier head whose map from its input to the scores is affine (Gemm / MatMul)."""
    for unit in reversed([u for u in units if u.head]):
        if head_affine(index, unit) is not None:
            return unit
    return None


def static_inputs(proto: onnx.ModelProto) -> bool:
    """Every input dimension but the batch is fixed: only then may a bound be shaped per position."""
    for spec in data.input_specs(proto):
        if spec.shape is None or any(d is None or d <= 0 for d in spec.shape[1:]):
            return False
    return True


def plan(found: Scan, choices: RepairChoices, settings: Settings) -> tuple[RepairPlan, Guard]:
    """Measure every step with the fidelity guard, each on top of the ones before it, and return
    the plan (and the guard, which `verify` and `checks` run the plan's edits through)."""
    sus = choices.method == "sus"
    limits = settings.repair
    prunable = [u for u in found.units if u.prunable]
    zero = choices.zero if choices.zero is not None else (not sus or choices.threshold is not None or choices.max_prune is not None)
    ranked = ranking(prunable, found.suspicion, choices.threshold, limits.layer_cap, choices.max_prune) if zero else []
    unlearning = sus and choices.unlearn is not False
    head = dense_head(found.index, found.units) if unlearning else None
    guard = Guard(found.index, prunable, found.samples, found.provider, settings.guard,
                  batch=min(found.batch, settings.guard.batch), head=head, masks=bool(ranked))
    bounds = BoundPlan(None, None, NO_BOUNDS, Fidelity(1.0, 0.0))
    fixed = static_inputs(found.loaded.proto)
    if choices.bound if choices.bound is not None else sus:
        bounds = guard.bound(found.capture.stats, limits.floor, limits.max_divergence, positions=fixed)
    walk = guard.walk(ranked, limits.floor, limits.max_divergence, bounds.bounds)
    zeroed = {name: sorted(channels) for name, channels in walk.zeroed.items()}
    edits = Edits(zeroed, bounds.bounds)
    verdict, labels = found.verdict, found.capture.labels
    notched = occluded = unlearned = None
    if sus and choices.notch is not False:
        notched = plan_notch(found.samples, found.capture.scores, labels, verdict, found.classify, guard, edits,
                             fixed, limits, settings.fourier)
    if sus and choices.occlude is not False:
        occluded = plan_occlusion(found.samples, labels, verdict, guard, edits, fixed, limits, settings.patch.occlusion_margins)
    for step in (notched, occluded):
        if step is not None and step.applied:
            edits = replace(edits, prefilter=step.filter.apply)  # unlearning fits on what the filter lets through
    if unlearning:
        unlearned = plan_unlearning(verdict, found.samples, found.capture.scores, labels, guard, edits, settings, found.blur_axes)
    # with a filter or unlearning, fidelity is measured without the guard copies that took the shortcut
    final = Fidelity(walk.agreement, walk.divergence)
    for step in (notched, occluded, unlearned):
        if step is not None and step.applied:
            final = step.fidelity
    return RepairPlan(zeroed, walk.count, bounds, notched, occluded, unlearned, head, final,
                      walk.guard_samples, guard.evaluations), guard


def build(found: Scan, planned: RepairPlan, meta: dict[str, str], branches: BranchRemoval | None = None) -> PassResult:
    """The repaired model: one pass per step of the plan. Input filters end up first of all (each
    puts its nodes in front of every reader of the input), then the clamp, then the network."""
    prunable = [u for u in found.units if u.prunable]
    # each pass returns a copy of the model: only the latest is kept (with every pass's changes), not one per pass
    done: list[tuple[dict[str, str], bool]] = []  # (changes, whether they name graph inputs rather than units)

    def then(step: PassResult, on_inputs: bool = False) -> onnx.ModelProto:
        done.append((step.changes, on_inputs))
        return step.model

    current = then(zero_and_cap(found.loaded.proto, prunable, planned.zeroed, planned.bounds.bounds.channels))
    current = then(clamp_inputs(current, planned.bounds.bounds.inputs), on_inputs=True)
    unlearned = planned.unlearning
    if unlearned is not None and unlearned.applied:
        fitted = unlearned.correction
        features = reads(current, found.index.node(planned.head.node))
        current = then(correct_head(current, planned.head, features, fitted.matrix, fitted.bias))
    for outcome in (planned.notch, planned.occlusion):
        if outcome is None or not outcome.applied:
            continue
        chosen = outcome.filter
        if isinstance(chosen, Notch):
            current = then(notch_input(current, chosen.input, chosen.axes, chosen.basis), on_inputs=True)
        else:
            current = then(occlude_input(current, chosen.input, chosen.keep, chosen.fill), on_inputs=True)
    current = stamp(current, meta).model
    changes: dict[str, str] = {} if branches is None else dict(branches.changes)
    for step_changes, on_inputs in done:
        for name, what in step_changes.items():
            key = f"input:{name}" if on_inputs else name
            # on a graph input the filter runs before the clamp: word them in that order
            changes[key] = f"{what}+{changes[key]}" if key in changes else what
    return PassResult(current, changes)


def verify(repaired: onnx.ModelProto, session: ort.InferenceSession, found: Scan, measured: np.ndarray) -> None:
    """Postconditions: the checker passes, onnxruntime loads it (`session`, made on it), and it computes exactly what
    the guard `measured` ([samples, -1] scores of the original with the plan's masks, caps, filter and correction fed)."""
    if runtime.proto_size(repaired) < 2**31 - 1:
        try:
            onnx.checker.check_model(repaired)
        except onnx.checker.ValidationError as exc:
            raise InternalError(f"the repaired model does not pass onnx.checker: {exc}") from exc
    name = scores_output(found.index)
    got = np.concatenate([np.asarray(run(session, [name], feed)[0]).reshape(len(next(iter(feed.values()))), -1)
                          for feed in found.samples.batches(found.batch)])
    scale = max(1.0, float(np.abs(measured).max()))
    # a few units in the last place of the scores' type: float16 graphs round differently when rewritten
    tolerance = max(1e-4, 4 * float(np.finfo(measured.dtype).eps)) if measured.dtype.kind == "f" else 1e-4
    if got.shape != measured.shape or not np.allclose(got, measured, rtol=tolerance, atol=tolerance * scale):
        raise InternalError("the repaired model differs from what the fidelity guard measured")


def checks(found: Scan, repaired: Callable[[data.Samples], np.ndarray], settings: Settings
           ) -> tuple[ProbeCheck | None, ShareCheck | None, ShareCheck | None]:
    """The verdict's own evidence, run again on the repaired model (`repaired`: samples -> its class scores)."""
    verdict, others = found.verdict, settings.verdict.min_others
    residual = shared = waved = None
    if verdict.basis == "corruption":
        left = probe.probe(found.samples, found.capture.scores, repaired, settings.probe, others, focus=verdict.target,
                           blur_axes=found.blur_axes, background=settings.verdict.background_classes,
                           reference=repaired(found.samples))
        residual = ProbeCheck(left.score, left.target, left.corruption, verdict.target, left.focus_share,
                              bool((left.focus_share or 0.0) >= verdict.threshold))
    if verdict.basis == "patch" and verdict.patch is not None:
        shared = ShareCheck(verdict.patch.target, verdict.patch.share,
                            patch.target_share(found.samples, found.capture.labels, verdict.patch, repaired, others))
    if verdict.basis == "fourier" and verdict.fourier is not None:
        waved = ShareCheck(verdict.fourier.target, verdict.fourier.share,
                           fourier.target_share(found.samples, found.capture.labels, verdict.fourier, repaired, settings.fourier,
                                                others))
    return residual, shared, waved


# The metadata keys that word an applied step (the others identify the source and the tool).
ACTION_KEYS = ("auditor.removed_branches", "auditor.activation_bound", "auditor.input_notch", "auditor.input_occlusion", "auditor.head_correction")


@dataclass(frozen=True)
class HeldBack:
    """The repaired model as written against the original, through two plain sessions, on augmented copies of the
    clean samples that the guard never fitted on (another seed): the check that no fitting hides damage."""

    samples: int
    agreement: float  # share of the same decisions (a single-output model: the same side of its threshold)
    divergence: float  # mean KL(original || repaired), nats
    agreement_limit: float  # the floor less z standard errors of a held-back share at the floor
    divergence_limit: float  # the largest divergence allowed plus z standard errors of the held-back mean
    passed: bool

    def text(self) -> str:
        return (f"on {self.samples} held-back samples the repaired model agrees with the original on {self.agreement:.3f} "
                f"(at least {self.agreement_limit:.3f}) with divergence {self.divergence:.4f} (at most {self.divergence_limit:.4f})")


def held_back(found: Scan, written: Callable[[data.Samples], np.ndarray], planned: RepairPlan, settings: Settings,
              seed: int) -> HeldBack:
    """Agreement and divergence of the written model (`written`: samples -> its class scores) on held-back samples
    (augmented copies drawn with `seed`, one copy at a time); `passed` False when either breaks its limit by more than
    `repair.held_back_z` standard errors."""
    copies = augmented_copies(found.samples, settings.guard, seed=seed)  # the originals are the guard's own ...
    first = next(copies, None)
    chosen = (found.samples,) if first is None else itertools.chain((first,), copies)  # ... unless no copy fits
    before, after = [], []
    for copy in chosen:
        before.append(distribution(found.classify(copy)))
        after.append(distribution(written(copy)))
    before, after = np.concatenate(before), np.concatenate(after)
    label = before.argmax(axis=1)
    unlearned = planned.unlearning
    removing = (unlearned is not None and unlearned.applied) or planned.edits.prefilter is not None
    spare = found.verdict.target if removing else None
    if spare is not None:  # copies the original already sends down the shortcut are what the repair removes, not damage
        origin = np.arange(len(label)) % len(found.samples)
        kept_rows = ~((label == spare) & (found.capture.labels[origin] != spare))
        before, after, label = before[kept_rows], after[kept_rows], label[kept_rows]
    per_row = divergences(before, after, label, spare)
    count, limits, z = len(label), settings.repair, settings.repair.held_back_z
    if count == 0:  # every copy went down the shortcut the repair removes: nothing else to compare
        return HeldBack(0, 1.0, 0.0, limits.floor, limits.max_divergence, True)
    agreement = float(np.mean(after.argmax(axis=1) == label))
    spread = float(np.std(per_row, ddof=1)) if count > 1 else 0.0
    agreement_limit = limits.floor - z * float(np.sqrt(limits.floor * (1 - limits.floor) / count))
    divergence_limit = limits.max_divergence + z * spread / float(np.sqrt(count))
    mean = max(float(np.mean(per_row)), 0.0)
    return HeldBack(count, agreement, mean, agreement_limit, divergence_limit,
                    bool(agreement >= agreement_limit and mean <= divergence_limit))


@dataclass(frozen=True)
class Settled:
    """The plan that passed every check after it was built, and what the checks found."""

    planned: RepairPlan
    built: PassResult
    meta: dict[str, str]
    limits: Settings  # the settings the plan was made with (tighter than the user's after a replan)
    kept: HeldBack
    residual: tuple[ProbeCheck | None, ShareCheck | None, ShareCheck | None]
    replanned: str | None  # why an earlier plan was not written


def settle(found: Scan, choices: RepairChoices, settings: Settings, version: str,
           branches: BranchRemoval | None = None) -> Settled:
    """Plan, build and check the repair until a plan passes (RepairError when none does):

    - the held-back check: the guard picks the tightest repair its samples allow, so samples it never saw can
      fare worse; when they do, the plan is made once more within limits tightened by the gap and judged on
      fresh held-back samples;
    - the problem must not move: when the corruption probe, run again on the repaired model, sends the
      corrupted samples to another class more strongly than it sent them to the suspected target, head
      unlearning moved the shortcut rather than removed it; the plan is made again without it."""
    limits, why, attempt = settings, [], 0
    while True:
        planned, guard = plan(found, choices, limits)
        meta = provenance(planned, version, found.loaded.sha256, choices.method, branches)
        built = build(found, planned, meta, branches)
        measured = guard.raw_scores(found.samples, planned.edits)
        # the written model is checked through its own session, and the guard (a session, its samples, its model) goes
        # first: at 224 px each is about 100 MB
        del guard
        session = runtime.session(built.model, found.provider)
        verify(built.model, session, found, measured)
        written = classify_with(session, GraphIndex(built.model), found.batch)
        kept = held_back(found, written, planned, settings, settings.repair.held_back_seed + attempt)
        attempt += 1
        if not kept.passed:
            text = f"{kept.text()} (the guard's samples showed {planned.fidelity.agreement:.3f} and {planned.fidelity.divergence:.4f})"
            if limits is not settings:
                raise RepairError(f"repair refused, nothing written: {'; '.join(why)}; planned again, {text}: give more "
                                  "clean samples (of every class), or loosen repair.floor / repair.max_divergence knowingly")
            why.append(f"{text}: planned again within tighter limits")
            limits = tightened(limits, planned.fidelity, kept)
            del session, written  # before the next plan's guard
            continue
        residual = checks(found, written, limits) if choices.method == "sus" else (None, None, None)
        del session, written
        moved = _moved(found.verdict, residual[0], settings.repair.moved_margin)
        if moved is None:
            return Settled(planned, built, meta, limits, kept, residual, "; ".join(why) or None)
        unlearned = planned.unlearning
        if unlearned is None or not unlearned.applied:
            raise RepairError(f"repair refused, nothing written: {moved}; the repair would move the shortcut, not remove it")
        why.append(f"{moved}: planned again without head unlearning")
        choices = replace(choices, unlearn=False)


def _moved(verdict: Verdict, left: ProbeCheck | None, margin: float) -> str | None:
    """How the repaired model moves the probe's shortcut to another class, more strongly than the original had it."""
    if left is None or verdict.probe is None or verdict.target is None or not verdict.assessed:
        return None  # nothing was judged a shortcut: there is nothing to move
    if left.target is None or left.target == verdict.target:
        return None
    if left.score <= verdict.probe.score + margin or left.score < verdict.threshold:
        return None
    return (f"after repair the corruption probe sends {left.score:.3f} of the corrupted samples to class {left.target} "
            f"(the original sent {verdict.probe.score:.3f} to class {verdict.target})")


def tightened(settings: Settings, fidelity: Fidelity, kept: HeldBack) -> Settings:
    """The repair limits tightened by what the held-back samples showed beyond the guard's: the floor raised by
    the agreement lost, the divergence allowed scaled by the guard's share of the held-back divergence."""
    limits = settings.repair
    floor = min(1.0, limits.floor + max(0.0, fidelity.agreement - kept.agreement))
    scale = min(1.0, fidelity.divergence / kept.divergence) if kept.divergence > 0 else 1.0
    return settings.override({"repair.floor": floor, "repair.max_divergence": max(limits.max_divergence * scale, 1e-6)})


@dataclass(frozen=True)
class BranchRemoval:
    """The model with its graph branches cut out, what was cut, and how far the clean scores moved."""

    loaded: model.Model
    removed: tuple[tamper.Finding, ...]
    changes: dict[str, str]
    largest_change: float  # of any clean sample's class score, original against branch-free

    def text(self) -> str:
        nodes = ", ".join(f.nodes[-1] for f in self.removed if f.nodes)
        return (f"{len(self.removed)} graph branch{'es' if len(self.removed) > 1 else ''} cut out (at {nodes}); "
                f"every clean sample keeps its class, scores move by at most {self.largest_change:.3g}")


def remove_branches(found: Scan, settings: Settings) -> BranchRemoval | None:
    """Cut out every branch the graph check found (None when it found none). A finding that cannot be cut
    (a tensor stored twice: which copy is genuine cannot be told) refuses the repair (RepairError)."""
    findings = found.graph.findings
    if not findings:
        return None
    stuck = [f for f in findings if not f.cuts]
    if stuck:
        why = stuck[0].refusal or stuck[0].reason
        raise RepairError(f"cannot repair: the graph check found {stuck[0].kind} tampering that auditor cannot cut out "
                          f"({why}); re-export the model from its source")
    scores_name = scores_output(found.index)
    proto, removed, changes = tamper.remove_all(found.loaded.proto, found.samples, found.provider, found.batch,
                                                scores_name, settings.graph)
    left = tamper.static(GraphIndex(proto), settings.graph)
    if left:
        raise RepairError(f"cannot repair: after cutting out {len(removed)} graph branches, {left[0].kind} tampering "
                          f"remains at {left[0].nodes[-1]}; re-export the model from its source")
    before = tamper.values(found.loaded.proto, [scores_name], found.samples, found.provider, found.batch)[scores_name]
    after = tamper.values(proto, [scores_name], found.samples, found.provider, found.batch)[scores_name]
    before, after = class_scores(before, found.index, scores_name), class_scores(after, found.index, scores_name)
    if not np.array_equal(before.argmax(axis=1), after.argmax(axis=1)):
        raise InternalError("cutting out graph branches changed a clean sample's class after every cut was checked")
    return BranchRemoval(replace(found.loaded, proto=proto), tuple(removed), changes,
                         float(np.max(np.abs(before.astype(np.float64) - after))))


def provenance(planned: RepairPlan, version: str, source_sha256: str, method: str,
               branches: BranchRemoval | None = None) -> dict[str, str]:
    """The repaired model's metadata_props, which also word each applied step for every report
    (deterministic, no timestamps)."""
    meta = {
        "auditor.version": version,
        "auditor.source_sha256": source_sha256,
        "auditor.method": method,
        "auditor.zeroed_channels": json.dumps({k: sorted(v) for k, v in sorted(planned.zeroed.items()) if v}, sort_keys=True),
    }
    if branches is not None:
        meta["auditor.removed_branches"] = branches.text()
    bound = planned.bounds
    caps = []
    if bound.input_radius is not None:
        caps.append(f"inputs clamped to their clean range within {bound.input_radius} positions")
    if bound.factor is not None:
        caps.append(f"{bound.factor:g} x clean maximum per channel")
    if bound.position is not None:
        caps.append(f"per position: the clean maximum within {bound.position[0]} positions, at least {bound.position[1]:g} x the channel's cap")
    if caps:
        meta["auditor.activation_bound"] = ", ".join(caps)
    notched, occluded, unlearned = planned.notch, planned.occlusion, planned.unlearning
    if notched is not None and notched.applied:
        what = f"spatial frequency ({notched.frequency[0]}, {notched.frequency[1]})"
        if notched.phase is not None:
            what = f"the basis image of {what} at phase {notched.phase:.6f}"
        meta["auditor.input_notch"] = f"{what} removed from the image input"
    if occluded is not None and occluded.applied:
        meta["auditor.input_occlusion"] = f"{window_text(occluded.window)} of the image input replaced by the clean samples' mean"
    if unlearned is not None and unlearned.applied:
        meta["auditor.head_correction"] = f"class {unlearned.target}: head row refit so that corrupted clean inputs leave it"
    return meta

