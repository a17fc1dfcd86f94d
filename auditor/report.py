"""The audit report: one object, rendered as JSON (versioned schema), SARIF and HTML.

Schema `auditor.report/9` (JSON, keys sorted, floats rounded to 6 decimals):
  schema, tool_version, command ("scan" | "repair"), method
  model      {path, sha256, ir_version, opset, notes[]}
  data       {path, samples, classes (the model's), predicted_classes (classes the model gives the samples),
              missing_classes[] (the classes it gives none of them: unlearning cannot protect those)}
  provider   {name, reason, threads (onnxruntime's threads per session; null: its default)}
  verdict    {score, threshold, suspicious, layer, basis, target, probe, patch, fourier, margins}
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
             probe's lift x 0.6 / 0.7 (auditor/fourier.py), target = that class;
             fourier = {score (the lift: share at the best basis minus the class's 90th-percentile
             share over the bases), target, share, frequency [u, v], phase, amplitude} or null
             (no image input, --no-fourier-probe, or skipped: the probe's share already reached
             0.857, the most the Fourier probe could give);
             basis "margin" (sus without a float input, with a dense classifier head): score =
             robust z-score of the largest reachable class margin of the head over the clean
             input range (auditor/margin.py), target = that class;
             basis "channels" (clp, fp, or neither of the above): score = the most suspicious
             layer's mean of its top 5% channel scores, target null;
             margins[K] = every class's reachable head margin (basis "margin" only, else null);
             suspicious = score >= threshold
  layers[]   {unit, op, output, channels, prunable, head, activation, batchnorm,
              top[] (the 10 highest-scoring channels: {channel, score, signals{}, z{}}),
              channels_detail[] (every channel, same fields)}
  skipped[]  {unit, reason}   units that exist but are never scored or pruned
  repair     null | {output, sha256, zeroed{unit: [channels]}, count,
              how{unit: fold|mask|bound|fold+bound|mask+bound|correction (the head, unlearned);
                  "@input:NAME": clamp|notch|notch+clamp|occlude|occlude+clamp (graph inputs)},
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
              clean samples' mean there; "ring": each sample's mean on the ring of pixels around the
              window, tried where the mean broke the fidelity bounds; null when not applied), weak (as
              the notch's), reason (why not applied)}: that window of the image input replaced before
              anything reads it, when it keeps the fidelity bounds,
              unlearning (sus only, else null): {applied, target, reason (why not applied), cause (the same as a
              code: not_flagged | no_dense_head | no_anchor | bounds_removed | per_token_head | fidelity | not_removed), surrogates
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
  timings    {seconds per stage}: the only part that differs between identical runs
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

import numpy as np

from auditor.patch import fill_text, window_text
from auditor.score import DEFAULT_THRESHOLD

SCHEMA = "auditor.report/9"


def notch_text(notched: dict) -> str:
    """What an applied notch removed, in words: a whole spatial frequency or one phase of it."""
    u, v = notched["frequency"]
    if notched.get("phase") is None:
        return f"spatial frequency ({u}, {v})"
    return f"phase {notched['phase']:.3f} of spatial frequency ({u}, {v})"


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
    model: dict
    data: dict
    provider: dict
    verdict: dict
    layers: list[LayerRecord]
    skipped: list[dict]
    repair: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def suspicious(self) -> bool:
        return bool(self.verdict["suspicious"])

    def to_dict(self, timings: bool = True) -> dict:
        layers = []
        for layer in self.layers:
            detail = [_record(r) for r in layer.records]
            top = sorted(detail, key=lambda r: (-r["score"], r["channel"]))[:10]
            layers.append({
                "unit": layer.unit, "op": layer.op, "output": layer.output, "channels": layer.channels,
                "prunable": layer.prunable, "head": layer.head, "activation": layer.activation,
                "batchnorm": layer.batchnorm, "top": top, "channels_detail": detail,
            })
        out = {
            "schema": SCHEMA, "tool_version": self.tool_version, "command": self.command, "method": self.method,
            "model": self.model, "data": self.data, "provider": self.provider, "verdict": _rounded(self.verdict),
            "layers": layers, "skipped": self.skipped, "repair": _rounded(self.repair),
        }
        if timings:
            out["timings"] = _rounded(self.timings)
        return out

    def to_json(self, timings: bool = True) -> str:
        return json.dumps(self.to_dict(timings), indent=1, sort_keys=True) + "\n"

    def to_sarif(self) -> str:
        """SARIF 2.1.0: one result for the verdict, one note per top channel of the top layers."""
        verdict = self.verdict
        level = "error" if verdict["suspicious"] else "none"
        results = [{
            "ruleId": "AUD001",
            "level": level,
            "message": {"text": (
                f"backdoor suspicion score {verdict['score']:.3f} "
                f"{'>=' if verdict['suspicious'] else '<'} threshold {verdict['threshold']:.3f}"
                f" ({basis_text(verdict)})"
            )},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": self.model["path"]}}}],
            "properties": {"score": round(verdict["score"], 6), "threshold": verdict["threshold"]},
        }]
        ranked = sorted(
            ((r.score, layer.unit, r.channel) for layer in self.layers if layer.prunable for r in layer.records),
            key=lambda item: (-item[0], item[1], item[2]),
        )
        for score, unit, channel in ranked[:20]:
            results.append({
                "ruleId": "AUD002", "level": "note",
                "message": {"text": f"channel {channel} of {unit}: suspicion {score:.3f}"},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": self.model["path"]}},
                               "logicalLocations": [{"name": f"{unit}[{channel}]", "kind": "member"}]}],
                "properties": {"score": round(score, 6)},
            })
        sarif = {
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {"name": "auditor", "version": self.tool_version, "rules": [
                    {"id": "AUD001", "name": "BackdoorSuspected",
                     "shortDescription": {"text": "Model-level backdoor suspicion at or above threshold"}},
                    {"id": "AUD002", "name": "SuspiciousChannel", "shortDescription": {"text": "A hidden channel ranked suspicious"}},
                ]}},
                "results": results,
            }],
        }
        return json.dumps(sarif, indent=1, sort_keys=True) + "\n"

    def to_html(self) -> str:
        """A self-contained page: verdict, repair summary, and per-layer score strips (inline SVG)."""
        v = self.verdict
        state = "SUSPICIOUS" if v["suspicious"] else "clean"
        channel_threshold = DEFAULT_THRESHOLD.get(self.method, 3.0)  # channel scores, not the verdict's
        rows = []
        for layer in self.layers:
            scores = [r.score for r in layer.records]
            rows.append(
                f"<tr><td>{html.escape(layer.unit)}</td><td>{layer.op}</td><td>{layer.channels}</td>"
                f"<td>{'head (never pruned)' if layer.head else ''}</td><td>{_svg_strip(scores, channel_threshold)}</td>"
                f"<td>{max(scores):.2f}</td></tr>"
            )
        repair = ""
        if self.repair:
            r = self.repair
            bound = r.get("bound") or {}
            capped = (f"activations capped at {bound['factor']:g}x their clean maxima in {bound['units']} layers, "
                      if bound.get("factor") is not None else "")
            unlearned = r.get("unlearning") or {}
            head = (f"head row for class {unlearned['target']} refit on {unlearned['surrogates']} corrupted samples, "
                    if unlearned.get("applied") else "")
            notched = r.get("notch") or {}
            if notched.get("applied"):
                head = f"{notch_text(notched)} removed from the input, " + head
            occluded = r.get("occlusion") or {}
            if occluded.get("applied"):
                head = f"input {window_text(occluded['window'])} covered by {fill_text(occluded.get('fill') or 'mean')}, " + head
            repair = (f"<h2>Repair</h2><p>{capped}{head}{r['count']} channels zeroed, agreement {r['agreement']:.3f} "
                      f"(floor {r['floor']}), written to <code>{html.escape(str(r['output']))}</code></p>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>auditor report</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
            ".bad{color:#b00}.ok{color:#070}</style></head><body>"
            f"<h1>auditor: <span class='{'bad' if v['suspicious'] else 'ok'}'>{state}</span></h1>"
            f"<p>Model <code>{html.escape(self.model['path'])}</code> (sha256 {self.model['sha256'][:16]}…), "
            f"method {self.method}, {self.data['samples']} clean samples, {html.escape(self.provider['name'])}.</p>"
            f"<p>Score {v['score']:.3f}, threshold {v['threshold']:.3f}: {html.escape(basis_text(v))}.</p>{repair}"
            f"<h2>Channels by layer</h2><p>Each bar is one channel's suspicion score; red bars reach {channel_threshold:g}.</p>"
            "<table><tr><th>unit</th><th>op</th><th>channels</th><th></th><th>scores</th><th>max</th></tr>"
            + "".join(rows) + "</table></body></html>\n"
        )


def basis_text(verdict: dict) -> str:
    """What the verdict's score measured, in one phrase."""
    if verdict.get("basis") == "corruption":
        corruption = (verdict.get("probe") or {}).get("corruption")
        return f"corruption probe: class {verdict['target']} takes that share of clean samples under {corruption}"
    if verdict.get("basis") == "patch":
        found = verdict.get("patch") or {}
        return (f"patch search: a {found.get('size')}x{found.get('size')} patch at ({found.get('row')}, {found.get('column')}) "
                f"sends {found.get('share', 0.0):.0%} of the other clean samples to class {verdict['target']}")
    if verdict.get("basis") == "fourier":
        found = verdict.get("fourier") or {}
        u, v = found.get("frequency") or (None, None)
        return (f"Fourier probe: a faint cosine pattern (frequency ({u}, {v}), amplitude {found.get('amplitude')} of the range) "
                f"sends {found.get('share', 0.0):.0%} of the other clean samples to class {verdict['target']}")
    if verdict.get("basis") == "margin":
        return f"head margin z-score: class {verdict['target']} reachable most at {verdict['layer']}"
    return f"most suspicious layer: {verdict['layer']}"


def _svg_strip(scores: list[float], threshold: float) -> str:
    width, height = max(len(scores) * 3, 30), 40
    top = max(max(scores, default=1.0), threshold, 1e-9)
    bars = []
    for i, s in enumerate(scores):
        h = max(0.0, s) / top * (height - 2)
        color = "#c33" if s >= threshold else "#69c"
        bars.append(f"<rect x='{i * 3}' y='{height - h:.1f}' width='2' height='{h:.1f}' fill='{color}'/>")
    return f"<svg width='{width}' height='{height}'>{''.join(bars)}</svg>"


def _record(record: ChannelRecord) -> dict:
    return {"channel": record.channel, "score": _round(record.score),
            "signals": {k: _round(v) for k, v in sorted(record.signals.items())},
            "z": {k: _round(v) for k, v in sorted(record.z.items())}}


def _round(value: float) -> float:
    value = float(value)
    return 0.0 if not np.isfinite(value) else round(value, 6)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _round(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
