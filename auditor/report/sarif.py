"""The report as SARIF 2.1.0: one result for the verdict, one per graph finding, notes for the top channels."""

from __future__ import annotations

import json

import numpy as np

from auditor.report import Report, _round, verdict_text


def render(self: Report) -> str:
    """SARIF 2.1.0: one result for the verdict, one note per top channel of the top layers."""
    verdict = self.verdict
    results = [{
        "ruleId": "AUD001",
        "level": "error" if verdict.suspicious else ("warning" if not verdict.assessed else "none"),
        "message": {"text": verdict_text(verdict)},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": self.model["path"]}}}],
        "properties": {"score": _round(verdict.score), "threshold": verdict.threshold},
    }]
    ranked = sorted(
        ((r.score, layer.unit, r.channel) for layer in self.layers if layer.prunable for r in layer.records
         if np.isfinite(r.score)),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    for score, unit, channel in ranked[:20]:
        results.append({
            "ruleId": "AUD002", "level": "note",
            "message": {"text": f"channel {channel} of {unit}: suspicion {score:.3f}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": self.model["path"]}},
                           "logicalLocations": [{"name": f"{unit}[{channel}]", "kind": "member"}]}],
            "properties": {"score": _round(score)},
        })
    for finding in verdict.findings:
        where = [{"name": node, "kind": "function"} for node in finding.nodes] or [{"name": "initializers", "kind": "member"}]
        results.append({
            "ruleId": "AUD003", "level": "error",
            "message": {"text": f"{finding.kind}: {finding.reason}" + (f"; {finding.confirmation}" if finding.confirmed else "")},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": self.model["path"]}}, "logicalLocations": where}],
            "properties": {"kind": finding.kind, "confirmed": finding.confirmed, "removable": bool(finding.cuts)},
        })
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "auditor", "version": self.tool_version, "rules": [
                {"id": "AUD001", "name": "BackdoorSuspected",
                 "shortDescription": {"text": "Model-level backdoor suspicion at or above threshold"}},
                {"id": "AUD002", "name": "SuspiciousChannel", "shortDescription": {"text": "A hidden channel ranked suspicious"}},
                {"id": "AUD003", "name": "GraphTampering",
                 "shortDescription": {"text": "Extra graph nodes act on a few raw input values, or a tensor is stored twice"}},
            ]}},
            "results": results,
        }],
    }
    return json.dumps(sarif, indent=1, sort_keys=True, allow_nan=False) + "\n"

