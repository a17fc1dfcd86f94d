"""The one place that turns the detectors' evidence into a verdict.

A graph finding (extra nodes that act on a few raw input values, a tensor stored twice) decides
alone: the model is suspicious, basis `graph`. Otherwise, with a float input (`sus`), the verdict
is the corruption probe's share, or the patch search's or
the Fourier probe's score rescaled onto the same threshold, whichever is largest. Where none of these
ran (a model whose input holds no float values, the baselines `clp` and `fp`, which only rank
channels for pruning, or a model no detector applies to) the model is not assessed: a channel score says
how unusual a channel is, and clean models have unusual channels too, so it is shown but never a finding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from auditor.detect.channels import layer_score
from auditor.detect.fourier import Fourier
from auditor.detect.patch import Patch
from auditor.detect.probe import Probe
from auditor.detect.tamper import Finding
from auditor.settings import Settings

# The verdict bases that come with stand-ins for triggered inputs (corrupted, patched or perturbed
# clean samples): the ones head unlearning and the input filters can act on.
SHORTCUT_BASES = ("corruption", "patch", "fourier")
BASES = ("channels", "graph", *SHORTCUT_BASES)


@dataclass(frozen=True)
class Verdict:
    """Model-level suspiciousness compared with its threshold, and the evidence behind it."""

    score: float
    threshold: float
    suspicious: bool
    basis: str  # one of BASES: which evidence gave the score
    target: int | None = None  # the suspected target class (every basis but "channels")
    layer: str | None = None  # "channels": the most suspicious unit
    probe: Probe | None = None
    patch: Patch | None = None
    fourier: Fourier | None = None
    findings: tuple[Finding, ...] = ()  # the graph check's
    not_assessed: str | None = None  # why no detector could judge the model (then never suspicious, never "clean")
    cut: tuple[str, ...] = ()  # the detectors the time budget stopped before they finished (their evidence is missing)
    probability: float | None = None  # the calibrated chance of a backdoor at a prior of one half (None: not assessed)

    @property
    def assessed(self) -> bool:
        return self.not_assessed is None

    def to_dict(self) -> dict:
        """The report's `verdict` object (schema in auditor/report.py)."""
        return {"score": self.score, "threshold": self.threshold, "suspicious": self.suspicious, "layer": self.layer,
                "basis": self.basis, "target": self.target,
                "probe": None if self.probe is None else {"score": self.probe.score, "target": self.probe.target,
                                                          "corruption": self.probe.corruption, "shares": self.probe.shares},
                "patch": None if self.patch is None else self.patch.summary(),
                "fourier": None if self.fourier is None else self.fourier.summary(),
                "findings": [f.summary() for f in self.findings], "assessed": self.assessed, "not_assessed": self.not_assessed,
                "cut": list(self.cut), "probability": self.probability}


def cut_short(verdict: Verdict, cut: tuple[str, ...], budget: float) -> Verdict:
    """The verdict when the time budget stopped some detectors: a finding from what did run stands; without one the
    model is not assessed, never clean, since the missing search might have found the shortcut."""
    if not cut:
        return verdict
    if verdict.suspicious:
        return dataclasses.replace(verdict, cut=cut)
    return dataclasses.replace(verdict, cut=cut, suspicious=False, probability=None,
                               not_assessed=f"the time budget of {budget:g} s ran out during the "
                               f"{' and the '.join(cut)}, so the model was not fully searched (raise it with --budget)")


def probability(settings: Settings, score: float) -> float:
    """The chance that a model with this verdict score is backdoored, at a prior of one half: the logistic map
    `verdict.calibration` fitted on the zoo (bench.calibrate). For a prior q, multiply the odds p / (1 - p) by
    q / (1 - q)."""
    slope, intercept = settings.verdict.calibration
    return float(1.0 / (1.0 + np.exp(-(slope * score + intercept))))


def decide(settings: Settings, threshold: float | None, channel_scores: dict[str, np.ndarray], probe: Probe | None = None,
           patch: Patch | None = None, fourier: Fourier | None = None, findings: tuple[Finding, ...] = (),
           classes: int | None = None, unjudged: str | None = None) -> Verdict:
    """The verdict from whatever evidence ran (`threshold`: the caller's, else the basis's default). With fewer
    than `verdict.min_classes` classes a behavioural verdict says nothing: a corrupted or patched sample that
    leaves its class can only go to the other one, so a shortcut cannot be told from the model's own errors.
    `unjudged`: why no detector ran, when the caller knows (else a general reason). An assessed verdict carries its
    calibrated probability; a graph finding's is 1 (extra nodes that act on raw input values are not an accident)."""
    verdict = _decide(settings, threshold, channel_scores, probe, patch, fourier, findings, classes, unjudged)
    if not verdict.assessed:
        return verdict
    return dataclasses.replace(verdict, probability=1.0 if verdict.findings else probability(settings, verdict.score))


def _decide(settings: Settings, threshold: float | None, channel_scores: dict[str, np.ndarray], probe: Probe | None,
            patch: Patch | None, fourier: Fourier | None, findings: tuple[Finding, ...], classes: int | None,
            unjudged: str | None) -> Verdict:
    chosen = settings.verdict
    if findings:
        verdict = _decide(settings, threshold, channel_scores, probe, patch, fourier, (), None, None)
        targets = [f.target for f in findings if f.target is not None]
        return dataclasses.replace(verdict, score=max(verdict.score, verdict.threshold), suspicious=True, basis="graph",
                                   target=targets[0] if targets else None, layer=None, findings=findings, not_assessed=None)
    if classes is not None and classes < chosen.min_classes and probe is not None and probe.shares:
        limit = chosen.probe_threshold if threshold is None else float(threshold)
        return Verdict(probe.score, limit, False, "corruption", None, None, probe, patch, fourier,
                       not_assessed=f"the model has {classes} classes: a sample that leaves its class can only go to the "
                                    "other, so its behaviour cannot tell a shortcut from its own errors (the graph check ran)")
    if probe is not None and probe.shares:
        limit = chosen.probe_threshold if threshold is None else float(threshold)
        value, basis, target = probe.score, "corruption", probe.target
        if patch is not None and max(0.0, patch.score) * chosen.patch_reach > value:
            value, basis, target = max(0.0, patch.score) * chosen.patch_reach, "patch", patch.target
        waved = 0.0 if fourier is None else chosen.fourier_value(fourier.score)
        if fourier is not None and waved > value:
            value, basis, target = waved, "fourier", fourier.target
        return Verdict(value, limit, bool(value >= limit), basis, target, None, probe, patch, fourier)
    limit = settings.channels.threshold if threshold is None else float(threshold)
    best_layer, best = None, float("-inf")
    for name, scores in channel_scores.items():
        value = layer_score(scores, settings.channels.top_fraction)
        if value > best:
            best_layer, best = name, value
    if best_layer is None:
        best = 0.0
    reason = unjudged or "no detector applies to this model (the corruption probe and the searches need a float input)"
    return Verdict(best, limit, False, "channels", None, best_layer, probe,
                   not_assessed=f"{reason}; the channel ranking is shown for repair but is not a finding")
