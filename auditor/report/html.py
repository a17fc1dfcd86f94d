"""The report as one self-contained HTML page (no network)."""

from __future__ import annotations

import html

import numpy as np

from auditor.report import Report, repair_lines, verdict_text


def render(self: Report) -> str:
    """A self-contained page: verdict, repair summary, and per-layer score strips (inline SVG)."""
    v = self.verdict
    rows = []
    for layer in self.layers:
        scores = [r.score for r in layer.records]
        finite = [s for s in scores if np.isfinite(s)]
        rows.append(
            f"<tr><td>{html.escape(layer.unit)}</td><td>{layer.op}</td><td>{layer.channels}</td>"
            f"<td>{'head (never pruned)' if layer.head else ''}</td><td>{_svg_strip(finite, self.channel_threshold)}</td>"
            f"<td>{max(finite):.2f}</td></tr>" if finite else ""
        )
    repair = ""
    if self.repair is not None:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in repair_lines(self.repair, v))
        repair = f"<h2>Repair</h2><ul>{items}</ul>"
    state = "SUSPICIOUS" if v.suspicious else ("NOT ASSESSED" if not v.assessed else "clean")
    findings = ""
    if v.findings:
        cells = "".join(
            f"<tr><td>{f.kind}</td><td>{html.escape(', '.join(f.nodes) or '(initializers)')}</td>"
            f"<td>{html.escape(f.reason)}</td><td>{html.escape(f.region.text() if f.region else '')}</td>"
            f"<td>{html.escape(f.confirmation or '')}</td><td>{'yes' if f.cuts else html.escape(f.refusal or 'no')}</td></tr>"
            for f in v.findings)
        findings = ("<h2>Graph findings</h2><table><tr><th>kind</th><th>nodes</th><th>why</th><th>input region</th>"
                    f"<th>on the clean samples</th><th>repair can cut it out</th></tr>{cells}</table>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>auditor report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
        ".bad{color:#b00}.ok{color:#070}</style></head><body>"
        f"<h1>auditor: <span class='{'bad' if v.suspicious else 'ok'}'>{state}</span></h1>"
        f"<p>Model <code>{html.escape(self.model['path'])}</code> (sha256 {self.model['sha256'][:16]}…), "
        f"method {self.method}, {self.data['samples']} clean samples, {html.escape(self.provider['name'])}.</p>"
        f"<p>{html.escape(verdict_text(v))}.</p>{findings}{repair}"
        f"<h2>Channel ranking</h2><p>Each bar is one channel's suspicion score (the paper's signals: activations, "
        f"weights and their relations within the layer), a robust z-score within its layer. It orders channels for "
        f"repair and is not a finding: clean models have channels above {self.channel_threshold:g} too (red). The "
        f"verdict above decides.</p>"
        "<table><tr><th>unit</th><th>op</th><th>channels</th><th></th><th>scores</th><th>max</th></tr>"
        + "".join(rows) + "</table></body></html>\n"
    )




def _svg_strip(scores: list[float], threshold: float) -> str:
    width, height = max(len(scores) * 3, 30), 40
    top = max(max(scores, default=1.0), threshold, 1e-9)
    bars = []
    for i, s in enumerate(scores):
        h = max(0.0, s) / top * (height - 2)
        color = "#c33" if s >= threshold else "#69c"
        bars.append(f"<rect x='{i * 3}' y='{height - h:.1f}' width='2' height='{h:.1f}' fill='{color}'/>")
    return f"<svg width='{width}' height='{height}'>{''.join(bars)}</svg>"


