"""The report as SARIF 2.1.0, shaped for GitHub code scanning and other SARIF viewers.

One run per file, whatever the number of models (`render` for one report, `render_many` for a batch scan).
Rules, in this order (each result names its rule by `ruleId` and `ruleIndex`):
  AUD001 BackdoorSuspected (error): the verdict is suspicious, by the model's behaviour or by a graph finding
  AUD002 SuspiciousChannel (note): the hidden channels ranked highest in a model AUD001 flags
  AUD003 GraphTampering (error): one per graph finding, its nodes as logical locations
  AUD004 NotAssessed (warning): no detector could judge the model (e.g. a binary classifier): never read as clean
Each rule carries a name, a short and a full description, help (text and markdown: what it means, what to do),
a default level and tags, which code scanning shows at the top of an alert.

Every result has exactly one location: the model file, its `uri` relative to the current folder with `uriBaseId`
"%SRCROOT%" (a CI job runs from the checkout's root, so this is the path in the repository), or an absolute
`file://` URI when the model lies outside the current folder; and `region` {startLine: 1}, since code scanning
needs a region and an .onnx file has no lines. Graph findings add `logicalLocations` naming their nodes.
`partialFingerprints` come from the model's sha256, the rule and the node or channel names, so the same finding on
the same bytes keeps its alert across runs, and a changed model is a new alert: `auditorFinding/v1` (the full
hash) and `primaryLocationLineHash` (GitHub keys alerts on it; every result sits on "line 1" of a binary file, so
the line hash github/codeql-action/upload-sarif would compute would merge all findings of one model into one
alert; the action keeps a value it finds and logs that its own differs). `run.artifacts` lists every model scanned,
with its sha256 and, in `properties`, the command, the outcome (clean | suspicious | not assessed) and the verdict
line, so a clean model is on record too. Models a batch scan could not read are `toolExecutionNotifications`
of the one invocation, which then says `executionSuccessful: false`.

A clean verdict gives no result. A result is something to act on: SARIF viewers list each one and code scanning
makes each an alert, so a `none`-level "clean" result would be one alert per clean model per branch that nobody
can act on. Without it, code scanning closes a model's AUD001 alert as fixed when a later scan no longer reports
it, which is what a reviewer wants to see. Channel notes (AUD002) likewise come only with an AUD001 result: the
channel ranking orders channels for repair and is not a finding by itself (the console says so); on a flagged
model it shows where the shortcut lives. Output is deterministic: same reports, same current folder, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from auditor.batch import outcome
from auditor.report import Report, _round, verdict_text
from auditor.version import __version__

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SOURCE_ROOT = "%SRCROOT%"
NOTED_CHANNELS = 10  # AUD002 notes per flagged model: the highest-ranked channels over all prunable layers

_SCAN = "auditor scan MODEL --data CLEAN.npz --html report.html"


def _help(markdown: str) -> dict[str, str]:
    """A rule's help as markdown, and as the plain text that UIs without markdown show (the same words)."""
    text = markdown.replace("**", "").replace("`", "")
    text = re.sub(r"\n+- ", " ", text).replace("\n\n", " ")
    return {"text": re.sub(r"(What it means|What to do)\.", r"\1:", text).strip(), "markdown": markdown}
RULES: tuple[dict, ...] = (
    {
        "id": "AUD001", "name": "BackdoorSuspected",
        "shortDescription": {"text": "The model behaves as if it carries a backdoor"},
        "fullDescription": {"text": "A small change to clean inputs (a patch, a faint pattern, noise or blur) sends them to one class "
                                    "far more often than chance, or the graph holds nodes that switch the output: the verdict's "
                                    "score is at or above its threshold."},
        "help": _help("**What it means.** auditor found a shortcut that takes over the model. The message names the test that "
                        "gave the score (graph check, corruption probe, patch search or Fourier probe) and the suspected target "
                        "class. A clean model is flagged now and then (about one in ten on the benchmark zoo), and a clean "
                        "verdict is no proof of a clean model.\n\n**What to do.**\n\n"
                        f"- Do not release the model on this result alone. Open the HTML report (`{_SCAN}`) to see the found "
                        "trigger on your own samples.\n"
                        "- Rescan with more clean samples (`--limit 50`) to rule out a false alarm.\n"
                        "- Retrain from trusted data, or run `auditor repair` and scan the repaired model before releasing it."),
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["security", "machine-learning", "backdoor"], "precision": "medium", "security-severity": "8.0"},
    },
    {
        "id": "AUD002", "name": "SuspiciousChannel",
        "shortDescription": {"text": "A hidden channel ranked among the most suspicious of a flagged model"},
        "fullDescription": {"text": "One of the hidden channels whose activations, weights and their relationship stand out most "
                                    "in a model the verdict flags (AUD001). The ranking orders channels for repair; it is not a "
                                    "finding by itself."},
        "help": _help("**What it means.** This channel ranks among the most suspicious of a model auditor flags; backdoors "
                        "often live in a few channels that fire on the trigger.\n\n**What to do.** Nothing on its own: act on "
                        "the AUD001 result of the same model. `auditor repair` caps these channels at their clean range."),
        "defaultConfiguration": {"level": "note"},
        "properties": {"tags": ["machine-learning", "backdoor", "explanation"], "precision": "low"},
    },
    {
        "id": "AUD003", "name": "GraphTampering",
        "shortDescription": {"text": "Extra graph nodes act on a few raw input values, or a tensor is stored twice"},
        "fullDescription": {"text": "Nodes outside the network read a few raw input values and switch, gate or add to the output "
                                    "(a backdoor planted in the graph rather than the weights), or a weight holds two different "
                                    "values depending on which field a reader looks at."},
        "help": _help("**What it means.** The graph carries a branch that reacts to a few input values (the logical locations "
                        "name its nodes; the message says what it reads and whether pasting its own constants confirmed it), "
                        "or a tensor stored twice with different values, so that what onnxruntime runs is not what a reader of "
                        "the file sees. Ordinary exported graphs do not have these.\n\n**What to do.**\n\n"
                        "- Do not use the file; get the model again from a source you trust.\n"
                        "- `auditor repair` cuts a removable branch out and checks that no clean sample changes class.\n"
                        "- A tensor stored twice cannot be repaired: re-export the model."),
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["security", "machine-learning", "backdoor", "supply-chain"], "precision": "high",
                       "security-severity": "9.0"},
    },
    {
        "id": "AUD004", "name": "NotAssessed",
        "shortDescription": {"text": "No detector could judge this model: not scanned is not clean"},
        "fullDescription": {"text": "The graph check ran and found nothing, but no behavioural test applies to this model (for "
                                    "example a binary classifier: a corrupted sample can only go to the other class, so a "
                                    "shortcut cannot be told from the model's own errors), so auditor gives no verdict."},
        "help": _help("**What it means.** auditor could not judge this model's behaviour; the message says why. This is "
                        "**not** a clean result.\n\n**What to do.**\n\n"
                        "- Treat the model as unverified: check where it came from, or test it another way.\n"
                        "- If auditor misread the model (the console's `model: input read as ...` line), rerun with "
                        "`--input-kind` or `--output-kind`.\n"
                        "- To let such models pass a gate, accept exit code 4 in the CI job explicitly."),
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["machine-learning", "coverage"], "precision": "high"},
    },
)
_INDEX = {rule["id"]: index for index, rule in enumerate(RULES)}


def render(report: Report) -> str:
    """SARIF 2.1.0 for one model (`Report.to_sarif`)."""
    return render_many([report])


def render_many(reports: Sequence[Report], failures: Iterable[tuple[str, str]] = ()) -> str:
    """One SARIF run holding every model's results, in the order given (a batch scan).

    `failures`: (model path, one-line reason) for models that could not be scanned at all (bad input): they become
    error notifications of the invocation, so the file says that not every model was scanned."""
    artifacts: list[dict] = []
    where: dict[tuple[str, str], int] = {}
    results: list[dict] = []
    for report in reports:
        location = _artifact_location(report.model["path"])
        key = (location["uri"], report.model["sha256"])
        if key not in where:
            where[key] = len(artifacts)
            artifacts.append({"location": location, "hashes": {"sha-256": report.model["sha256"]}, "roles": ["analysisTarget"],
                              "properties": {"command": report.command, "outcome": outcome(report),
                                             "verdict": verdict_text(report.verdict)}})
        results += _results(report, {**location, "index": where[key]})
    notifications = [{"level": "error", "message": {"text": f"{path}: not scanned: {reason}"},
                      "locations": [{"physicalLocation": {"artifactLocation": _artifact_location(path)}}]}
                     for path, reason in failures]
    invocation: dict = {"executionSuccessful": not notifications}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    version = reports[0].tool_version if reports else __version__
    sarif = {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "auditor", "version": version, "semanticVersion": version, "rules": list(RULES)}},
            "artifacts": artifacts,
            "invocations": [invocation],
            "results": results,
        }],
    }
    return json.dumps(sarif, indent=1, sort_keys=True, allow_nan=False) + "\n"


def _results(report: Report, artifact: dict) -> list[dict]:
    verdict, sha256 = report.verdict, report.model["sha256"]
    if not verdict.assessed:
        return [_result("AUD004", f"{verdict_text(verdict).rstrip('.')}. Not scanned is not clean.", artifact, sha256, (),
                        {"reason": verdict.not_assessed})]
    if not verdict.suspicious:
        return []
    message = verdict_text(verdict)
    if report.repair is not None:
        message += f". Repaired model written to {report.repair.output}"
    results = [_result("AUD001", message, artifact, sha256, (),
                       {"score": _round(verdict.score), "threshold": verdict.threshold,
                        "probability": None if verdict.probability is None else _round(verdict.probability),
                        "basis": verdict.basis,
                        "target": verdict.target})]
    for finding in verdict.findings:
        names = finding.nodes or ("initializers",)
        text = f"{finding.kind}: {finding.reason}" + (f"; {finding.confirmation}" if finding.confirmed else "")
        logical = [{"name": node, "kind": "function"} for node in finding.nodes] or [{"name": "initializers", "kind": "member"}]
        results.append(_result("AUD003", text, artifact, sha256, (finding.kind, *names),
                               {"kind": finding.kind, "confirmed": finding.confirmed, "removable": bool(finding.cuts)}, logical))
    ranked = sorted(((r.score, layer.unit, r.channel) for layer in report.layers if layer.prunable for r in layer.records
                     if np.isfinite(r.score)), key=lambda item: (-item[0], item[1], item[2]))
    for score, unit, channel in ranked[:NOTED_CHANNELS]:
        name = f"{unit}[{channel}]"
        results.append(_result("AUD002", f"channel {channel} of {unit}: suspicion {score:.3f}", artifact, sha256, (name,),
                               {"score": _round(score)}, [{"name": name, "kind": "member"}]))
    return results


def _result(rule: str, text: str, artifact: dict, sha256: str, names: tuple[str, ...], properties: dict,
            logical: list[dict] | None = None) -> dict:
    location: dict = {"physicalLocation": {"artifactLocation": artifact, "region": {"startLine": 1}}}
    if logical:
        location["logicalLocations"] = logical
    digest = hashlib.sha256("\x00".join((sha256, rule, *names)).encode()).hexdigest()
    return {"ruleId": rule, "ruleIndex": _INDEX[rule], "level": RULES[_INDEX[rule]]["defaultConfiguration"]["level"],
            "message": {"text": text}, "locations": [location],
            "partialFingerprints": {"auditorFinding/v1": digest, "primaryLocationLineHash": f"{digest[:16]}:1"},
            "properties": properties}


def _artifact_location(path: str | os.PathLike) -> dict:
    """The model's path as an artifactLocation: relative to the current folder under %SRCROOT% when it lies there
    (the repository's root in a CI job), else an absolute file URI."""
    absolute = Path(os.path.abspath(path))
    for here, there in ((Path.cwd(), absolute), (Path.cwd().resolve(), absolute.resolve())):
        try:
            relative = there.relative_to(here)
        except ValueError:
            continue
        return {"uri": quote(relative.as_posix(), safe="/"), "uriBaseId": SOURCE_ROOT}
    return {"uri": absolute.resolve().as_uri()}
