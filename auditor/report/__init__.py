"""The audit report: one object, rendered as JSON (versioned schema), SARIF and HTML.

Schema `auditor.report/16` (JSON, keys sorted, floats rounded to 6 decimals; a value that is not
a finite number is written as null, never as 0):
  schema, tool_version, command ("scan" | "repair"), method
  model      {path, sha256, ir_version, opset, notes[], kinds {input (image | flat-image | sequence | tokens | tabular),
              output (scores | probabilities | binary), input_reason, output_reason}: what the model was read as
              (auditor/graph/kinds.py); a binary model's one output is read as two classes [1 - p, p]}
  data       {path, samples, statistics_samples (how many of the first samples the channel statistics come from:
              `scan` measures at most capture.scan_statistics, `repair` every one), classes (the model's),
              predicted_classes (classes the model gives the samples),
              missing_classes[] (the classes it gives none of them: unlearning cannot protect those),
              preprocessing (null for .npz/.npy; a folder of images: {files, resize, crop, scale, mean[], std[], channel_order,
              layout (nchw | nhwc | nhw | flat), resized_to_model ([H, W] when images were resized to the model's size, else null)})}
  provider   {name, reason, threads (onnxruntime's threads per session; null: its default)}
  verdict    {score, threshold, suspicious, layer, basis, target, probe, patch, fourier, findings[], assessed,
              not_assessed (why no detector could judge the model, else null: then suspicious is false and the
              verdict is not "clean" either; the CLI exits 4), cut[] (the detectors the time budget, run.budget,
              stopped before they finished: without a finding from what did run, the model is not assessed),
              probability (the chance the model is backdoored at a prior of one half, from the score through the
              logistic map verdict.calibration fitted on the zoo (bench.calibrate; 1 for a graph finding); for a
              prior q multiply its odds by q / (1 - q); null when not assessed)}
             basis "graph" (any method, whenever the graph check finds tampering): suspicious, score =
             the threshold or the other evidence's score if higher, target = a confirmed finding's class;
             findings[] = {kind (override | gate | bypass | storage), nodes[], tensors[], reason, region
             ("x[:, 0:1, 0:3, 0:3]" or null), constants[], fires (the decision on the clean samples, or null),
             removable, refusal (why it cannot be cut out, or null), target, confirmed (true | false |
             null: not tried), confirmation} (auditor/detect/tamper.py);
             basis "corruption" (sus with a float input): score = the largest share of noisy or
             blurred clean samples that one class takes from samples the model put elsewhere
             (auditor/probe.py), target = that class, layer null;
             basis "patch" (sus with an image input, when it scores higher): score = the patch
             search's score x 0.6 / 0.9 (auditor/patch.py), target = the patch's class;
             probe = {score, target, corruption (the one that gave the score), shares{corruption: its largest share}};
             patch = {score (capped mean margin over the clean median margin), target, share (of
             the samples from other classes the patch sends there), row, column, size} or null
             (no image input, --no-patch-search, or skipped: the other tests' score already
             reached 0.667, the most the patch search could give);
             basis "fourier" (sus with an image input, when it scores higher): score = the Fourier
             probe's score x 0.6 / 0.35, at most 1 (auditor/fourier.py), target = that class;
             fourier = {score (schema 15: the target's lift minus the runner-up class's lift), target,
             share, frequency [u, v], phase, amplitude, lift (a class's share at its best basis minus its
             90th-percentile share over the bases: the target's), runner_up, runner_up_lift} or null
             (no image input, --no-fourier-probe, or skipped: the probe's share already reached 1,
             the most the Fourier probe could give);
             basis "channels" (clp, fp, or an input with no float values): score = the most suspicious
             layer's mean of its top 5% channel scores, target null; never suspicious: the
             model is not assessed (a channel score is not a finding);
             suspicious = score >= threshold (for an assessed verdict)
  layers[]   {unit, op, output, channels, prunable, head, activation, batchnorm,
              top[] (the 10 highest-scoring channels: {channel, score, signals{}, z{}}),
              channels_detail[] (every channel, same fields)}
  skipped[]  {unit, reason}   units that exist but are never scored or pruned
  evidence   null | {kind (patch | fourier | corruption | graph), caption (what was applied and what it did, in
              words), examples[] {sample (index into the clean samples), before (its class), after (its class with
              the trigger)}}: the found trigger of the verdict's basis on a few clean samples the model puts in other
              classes, in index order (a corruption's: the first that went to the target); auditor/detect/evidence.py.
              The HTML page shows the pictures, the JSON no pixels. A clean verdict shows the strongest patch tried
              (else its basis's); null for an input that is not an image, a verdict not assessed, or a basis with no
              trigger to show (channels, an unconfirmed or storage graph finding)
  (repair.branches[]: the findings cut out of the graph before the rest of the repair, as verdict.findings[];
   repair.held_back: {samples, agreement, divergence, agreement_limit, divergence_limit, passed}: the written model
   against the original on augmented clean samples the guard never fitted on; repair.replanned: null, or why an
   earlier plan was not written: it failed that check (planned again within tighter limits, checked on fresh
   held-back samples; a second failure refuses the repair), or its head unlearning moved the corruption probe's
   shortcut to another class more strongly than the original had it (planned again without unlearning; refused
   when that still moves it))
  repair     null | {output, sha256, zeroed{unit: [channels]}, count,
              how{unit: fold|mask|bound|fold+bound|mask+bound|correction (the head, unlearned);
                  "input:NAME": clamp|notch|notch+clamp|occlude|occlude+clamp (graph inputs)},
              actions[] (each step applied, in words: the same text as the model's metadata),
              bound{factor (multiple of each channel's clean maximum, null: none), units},
              agreement, divergence, floor, max_divergence, layer_cap, guard_samples, evaluations,
              notch (sus only, else null): {applied, frequency ([u, v] of the Fourier probe's best basis, null
              when the Fourier probe did not give the verdict), phase (null: every phase of that frequency
              removed; a number: only its basis image at that phase, when removing every phase broke the
              fidelity bounds), weak (true: the verdict's score was under its threshold but at least 0.4,
              so the notch had to keep tighter bounds: half the slack), reason (why not applied)}:
              removed from the image input before anything reads it, when it keeps the fidelity bounds,
              occlusion (sus only, else null): {applied, window ([row, column, height, width] covered: the
              patch search's patch and one pixel around it, or the patch alone when that broke the fidelity
              bounds; when not applied, the last one tried; null when none was tried), fill ("mean": the
              clean samples' mean there; null when not applied), weak (as
              the notch's), reason (why not applied)}: that window of the image input replaced before
              anything reads it, when it keeps the fidelity bounds,
              unlearning (sus only, else null): {applied, target, reason (why not applied), cause (the same as a
              code: not_flagged | no_dense_head | no_anchor | bounds_removed | per_token_head | fidelity), surrogates
              (corrupted, patched or perturbed samples fitted), anchors (clean samples of the target), weight (of the corrupted samples)
              and strength (the L2 penalty) of the step of the ladder kept, shortcut_guard_samples (guard copies
              the original sent to the target from another class: fitted as corrupted samples and left out of
              `agreement` and `divergence`, which are then measured on the other guard samples; with a correction,
              `divergence` compares a sample the original puts in another class over the classes other than the
              target, so that the target's share taken away is not counted), downward (true: some
              class had no clean sample, so the row could only lose target evidence; false: every class had one)},
              probe (basis "corruption" only, else null): the same probe run on the repaired model:
              {score, target, corruption (its largest share, which class, under what), suspected_target
              (the verdict's), suspected_target_share (the largest share that class still takes),
              above_threshold (suspected_target_share >= the verdict's threshold)},
              patch (basis "patch" only, else null): {target, share_before, share_after}: the share of the
              clean samples from other classes that the found patch sends to its class, before (over the
              first ten samples, those the search used) and after (over every sample) the repair,
              fourier (basis "fourier" only, else null): the same for the Fourier probe's best basis image,
              evaluation{before, after} (CLI only, with --test)}
  settings   {"section.name": value}: the settings that differ from the defaults (auditor/settings.py): the effective
             settings, whether they came from the config file, --set or a flag
  config     null | {path, options, settings}: the configuration file the CLI read (auditor/config.py), as written there
  timings    {seconds per stage}: the only part that differs between identical runs
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.detect.evidence import Evidence
from auditor.detect.verdict import SHORTCUT_BASES, Verdict
from auditor.mitigation.plan import RepairOutcome

SCHEMA = "auditor.report/16"


@dataclass(frozen=True)
class ChannelRecord:
    channel: int
    score: float
    signals: dict[str, float]
    z: dict[str, float]


@dataclass(frozen=True)
class LayerRecord:
    unit: str
    op: str
    output: str
    channels: int
    prunable: bool
    head: bool
    activation: str | None
    batchnorm: bool
    records: tuple[ChannelRecord, ...]


@dataclass
class Report:
    """Everything one scan or repair found and did."""

    command: str
    tool_version: str
    method: str
    model: dict  # {path, sha256, ir_version, opset, notes}
    data: dict  # {path, samples, statistics_samples, classes, predicted_classes, missing_classes}
    provider: dict  # {name, reason, threads}
    verdict: Verdict
    layers: list[LayerRecord]
    skipped: list[dict]
    channel_threshold: float = 3.0  # the channel scores' own threshold (the HTML strips' red line)
    settings: dict[str, Any] = field(default_factory=dict)  # the settings that differ from the defaults
    repair: RepairOutcome | None = None
    evidence: Evidence | None = None  # the found trigger on a few clean samples (the HTML page's pictures)
    config: dict | None = None  # the configuration file the CLI read ({path, options, settings}), else None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def suspicious(self) -> bool:
        return bool(self.verdict.suspicious)

    def to_dict(self, timings: bool = True) -> dict:
        layers = []
        for layer in self.layers:
            detail = [_record(r) for r in layer.records]
            top = sorted(detail, key=lambda r: (-(r["score"] if r["score"] is not None else -np.inf), r["channel"]))[:10]
            layers.append({
                "unit": layer.unit, "op": layer.op, "output": layer.output, "channels": layer.channels,
                "prunable": layer.prunable, "head": layer.head, "activation": layer.activation,
                "batchnorm": layer.batchnorm, "top": top, "channels_detail": detail,
            })
        out = {
            "schema": SCHEMA, "tool_version": self.tool_version, "command": self.command, "method": self.method,
            "model": self.model, "data": _rounded(self.data), "provider": self.provider, "verdict": _rounded(self.verdict.to_dict()),
            "layers": layers, "skipped": self.skipped, "settings": _rounded(self.settings),
            "repair": None if self.repair is None else _rounded(self.repair.to_dict()),
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
            "config": self.config,
        }
        if timings:
            out["timings"] = _rounded(self.timings)
        return out

    def to_json(self, timings: bool = True) -> str:
        return json.dumps(self.to_dict(timings), indent=1, sort_keys=True, allow_nan=False) + "\n"

    def to_sarif(self) -> str:
        """SARIF 2.1.0 (auditor/report/sarif.py)."""
        from auditor.report.sarif import render

        return render(self)

    def to_html(self) -> str:
        """A self-contained HTML page (auditor/report/html.py)."""
        from auditor.report.html import render

        return render(self)


def basis_text(verdict: Verdict) -> str:
    """What the verdict's score measured, in one phrase."""
    if verdict.basis == "corruption":
        corruption = None if verdict.probe is None else verdict.probe.corruption
        return f"corruption probe: class {verdict.target} takes that share of clean samples under {corruption}"
    if verdict.basis == "patch" and verdict.patch is not None:
        found = verdict.patch.summary()
        return (f"patch search: a {found['size']}x{found['size']} patch at ({found['row']}, {found['column']}) "
                f"sends {found['share']:.0%} of the other clean samples to class {verdict.target}")
    if verdict.basis == "fourier" and verdict.fourier is not None:
        found = verdict.fourier
        u, v = found.frequency
        return (f"Fourier probe: a faint cosine pattern (frequency ({u}, {v}), amplitude {found.amplitude} of the range) "
                f"sends {found.share:.0%} of the other clean samples to class {verdict.target}")
    if verdict.basis == "graph":
        first = verdict.findings[0]
        more = f" and {len(verdict.findings) - 1} more" if len(verdict.findings) > 1 else ""
        return f"graph check: {first.kind} tampering at {first.nodes[-1] if first.nodes else 'the initializers'}{more}"
    return f"most suspicious layer: {verdict.layer}"


def verdict_text(verdict: Verdict) -> str:
    """The verdict in one line: outcome, score against threshold, and what the score measured."""
    if not verdict.assessed:
        return f"NOT ASSESSED: {verdict.not_assessed}"
    word = "SUSPICIOUS" if verdict.suspicious else "clean"
    side = ">=" if verdict.suspicious else "<"
    chance = "" if verdict.probability is None else f", P(backdoor) {verdict.probability:.2f}"
    return f"{word}: score {verdict.score:.3f} {side} threshold {verdict.threshold:.3f}{chance} ({basis_text(verdict)})"


def repair_lines(outcome: RepairOutcome, verdict: Verdict) -> list[str]:
    """What the repair did and found, one fact per line: the console and the HTML page print these."""
    plan, limits = outcome.plan, outcome.settings.repair
    lines = [*(f"cut out: {f.kind} at {f.nodes[-1]} ({'; '.join(c.text() for c in f.cuts)})" for f in outcome.branches),
             *outcome.actions(),
             f"{plan.count} channels zeroed in {len(plan.zeroed)} layers; agreement {plan.fidelity.agreement:.3f} "
             f"(floor {limits.floor:.4g}), divergence {plan.fidelity.divergence:.4f} (at most {limits.max_divergence:.4g}); "
             f"written to {outcome.output}"]
    if outcome.replanned is not None:
        lines.append(f"earlier plan not written: {outcome.replanned}")
    if outcome.held_back is not None:
        lines.append(f"held-back check: {outcome.held_back.text()}")
    weak = " (a weak verdict: within tighter fidelity bounds)"
    for step in (plan.notch, plan.occlusion):
        if step is not None and step.applied and step.weak:
            lines.append(f"{step.kind}: applied on a weak verdict{weak}")
        elif step is not None and not step.applied and (step.frequency is not None or step.window is not None):
            lines.append(f"{step.kind}: not applied: {step.reason}")
    unlearned = plan.unlearning
    if unlearned is not None and unlearned.applied:
        kind = {"patch": "patched", "fourier": "perturbed"}.get(verdict.basis, "corrupted")
        lines.append(f"unlearning: fitted on {unlearned.surrogates} {kind} samples the model sent to class {unlearned.target} "
                     f"and {unlearned.anchors} clean samples of that class (their weight {unlearned.weight:g}, "
                     f"penalty {unlearned.strength:g})")
    elif unlearned is not None and verdict.basis in SHORTCUT_BASES and verdict.suspicious:
        lines.append(f"unlearning: not applied: {unlearned.reason}")
    left = outcome.probe
    if left is not None and verdict.suspicious and left.suspected_target_share is not None:
        side = ">=" if left.above_threshold else "<"
        line = (f"after repair: class {left.suspected_target} takes {left.suspected_target_share:.3f} of the corrupted "
                f"samples ({side} threshold {verdict.threshold:.3f}, was {verdict.score:.3f})")
        if left.target is not None and left.target != left.suspected_target:
            line += f"; the largest share is now class {left.target}'s, {left.score:.3f} under {left.corruption}"
        lines.append(line)
    for moved, found in ((outcome.patch, "the found patch"), (outcome.fourier, "the found Fourier pattern")):
        if moved is not None and verdict.suspicious:
            lines.append(f"after repair: {found} sends {moved.share_after:.3f} of the other clean samples to "
                         f"class {moved.target} (was {moved.share_before:.3f})")
    return lines


def _record(record: ChannelRecord) -> dict:
    return {"channel": record.channel, "score": _round(record.score),
            "signals": {k: _round(v) for k, v in sorted(record.signals.items())},
            "z": {k: _round(v) for k, v in sorted(record.z.items())}}


def _round(value: float) -> float | None:
    """Six decimals; None (JSON null) for NaN or infinity, which no reader should take for a number."""
    value = float(value)
    return None if not np.isfinite(value) else round(value, 6)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _round(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
