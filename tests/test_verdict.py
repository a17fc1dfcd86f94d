"""The one place that makes the verdict: which evidence wins, and on which threshold."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.detect.fourier import Fourier
from auditor.detect.patch import Patch
from auditor.detect.probe import Probe
from auditor.detect.verdict import cut_short, decide
from auditor.settings import Settings


def _probe(score: float, target: int = 3) -> Probe:
    return Probe(score, target, "noise 0.1", {"noise 0.1": score}, 0.0)


def _patch(score: float, target: int = 7) -> Patch:
    return Patch(score, target, 1.0, 0, 0, np.zeros((4, 4, 1)), 0.0)


def test_probe_alone_flags_at_its_threshold():
    settings = Settings()
    assert decide(settings, None, {}, _probe(0.6)).suspicious
    verdict = decide(settings, None, {}, _probe(0.59))
    assert not verdict.suspicious and verdict.basis == "corruption" and verdict.target == 3 and verdict.threshold == 0.6


def test_patch_wins_rescaled_onto_the_probe_threshold():
    verdict = decide(Settings(), None, {}, _probe(0.3), patch=_patch(0.95))
    assert verdict.basis == "patch" and verdict.target == 7
    assert np.isclose(verdict.score, 0.95 * 0.6 / 0.9) and verdict.suspicious
    # moving the probe threshold moves the patch's reach with it (derived, not stored)
    stricter = decide(Settings().override({"verdict.probe_threshold": 0.9}), None, {}, _probe(0.3), patch=_patch(0.95))
    assert np.isclose(stricter.score, 0.95) and stricter.suspicious


def test_fourier_wins_only_when_larger():
    lifted = Fourier(0.2, 2, 0.6, (0, 3), 0.0, 0.1, (0,), 0.0)
    assert decide(Settings(), None, {}, _probe(0.5), fourier=lifted).basis == "corruption"  # 0.2 * 0.6 / 0.35 < 0.5
    verdict = decide(Settings(), None, {}, _probe(0.2), fourier=lifted)
    assert verdict.basis == "fourier" and verdict.score == pytest.approx(0.2 * 0.6 / 0.35)


def test_a_fourier_score_is_capped_where_a_share_is():
    """Rescaled by 0.6 / 0.35, a separation above 0.35 x 1 / 0.6 would pass 1: it stops at 1, a share's largest, so
    a probe share of 1 already says all the Fourier probe could (and the scan skips it)."""
    whole = Fourier(1.0, 2, 1.0, (0, 3), 0.0, 0.1, (0,), 0.0)
    assert Settings().verdict.fourier_reach == 1.0
    assert decide(Settings(), None, {}, _probe(0.2), fourier=whole).score == 1.0
    assert decide(Settings(), None, {}, _probe(1.0), fourier=whole).basis == "corruption"


def test_without_a_detector_the_channels_are_shown_and_the_model_is_not_assessed():
    empty = Probe(0.0, None, None, {}, 0.0)  # no float input: nothing to corrupt
    tokens = decide(Settings(), None, {"a": np.r_[np.zeros(39), 10.0]}, empty, unjudged="no float values", classes=2)
    assert tokens.basis == "channels" and not tokens.suspicious and tokens.not_assessed.startswith("no float values")
    scores = {"a": np.r_[np.zeros(39), 10.0], "b": np.zeros(40)}
    by_channels = decide(Settings(), None, scores)
    assert by_channels.basis == "channels" and by_channels.layer == "a" and by_channels.score == 5.0  # top 5%: 2 channels
    # a channel score above the threshold is shown, never a finding: the model is not assessed
    assert not by_channels.suspicious and not by_channels.assessed and "not a finding" in by_channels.not_assessed
    baseline = decide(Settings(), None, scores, unjudged="method clp ranks channels")
    assert baseline.not_assessed.startswith("method clp ranks channels")


def test_to_dict_keeps_the_report_shape():
    verdict = decide(Settings(), None, {}, _probe(0.3), patch=_patch(0.95))
    shape = verdict.to_dict()
    assert set(shape) == {"score", "threshold", "suspicious", "layer", "basis", "target", "probe", "patch", "fourier", "findings",
                          "assessed", "not_assessed", "cut", "probability"}
    assert shape["patch"]["size"] == 4 and shape["probe"]["corruption"] == "noise 0.1" and shape["fourier"] is None


def test_a_graph_finding_decides_whatever_the_probes_say():
    from auditor.detect.tamper import Finding

    finding = Finding("override", ("t_greater", "t_where"), ("x", "logits"), "a decision on raw input values", target=7,
                      confirmed=True)
    quiet = decide(Settings(), None, {}, _probe(0.1), findings=(finding,))
    assert quiet.suspicious and quiet.basis == "graph" and quiet.target == 7 and quiet.findings == (finding,)
    assert quiet.score == quiet.threshold  # the probes' score (0.1) is below: the verdict sits at the threshold
    loud = decide(Settings(), None, {}, _probe(0.9), findings=(finding,))
    assert loud.score == 0.9 and loud.basis == "graph"
    assert decide(Settings(), None, {}, _probe(0.1)).findings == ()
    # where no behavioural detector ran (token ids, clp / fp), a graph finding is still an assessed finding
    tokens = decide(Settings(), None, {"a": np.zeros(4)}, Probe(0.0, None, None, {}, 0.0), findings=(finding,),
                    unjudged="no float values")
    assert tokens.suspicious and tokens.assessed and tokens.basis == "graph"


def test_two_classes_give_no_behavioural_verdict():
    """With two classes every error goes to the other class: the probe's share cannot tell a shortcut from errors."""
    verdict = decide(Settings(), None, {}, _probe(0.9), classes=2)
    assert not verdict.suspicious and not verdict.assessed and "2 classes" in verdict.not_assessed
    assert decide(Settings(), None, {}, _probe(0.9), classes=3).suspicious


def test_a_search_cut_by_the_budget_leaves_a_found_shortcut_but_never_a_clean_verdict():
    settings = Settings()
    found = cut_short(decide(settings, None, {}, _probe(0.8)), ("patch search",), 10.0)
    assert found.suspicious and found.assessed and found.cut == ("patch search",)
    unfinished = cut_short(decide(settings, None, {}, _probe(0.3)), ("patch search",), 10.0)
    assert not unfinished.suspicious and not unfinished.assessed and "patch search" in unfinished.not_assessed
    # the probe itself cut: the channel scores that then decide are no verdict of the method that was asked for
    channels_only = cut_short(decide(settings, None, {"conv": np.array([9.0] * 20)}), ("corruption probe",), 10.0)
    assert channels_only.basis == "channels" and not channels_only.suspicious and not channels_only.assessed
    assert cut_short(decide(settings, None, {}, _probe(0.3)), (), 10.0).assessed


def test_the_probability_is_the_calibrated_map_of_the_score_and_absent_when_not_assessed():
    settings = Settings()
    slope, intercept = settings.verdict.calibration
    low, high = decide(settings, None, {}, _probe(0.2)), decide(settings, None, {}, _probe(0.8))
    assert np.isclose(high.probability, 1 / (1 + np.exp(-(slope * 0.8 + intercept))))
    assert 0.0 < low.probability < 0.5 < high.probability < 1.0  # the fitted map crosses one half inside [0.2, 0.8]
    assert high.to_dict()["probability"] == high.probability
    steeper = decide(settings.override({"verdict.calibration": (2 * slope, intercept)}), None, {}, _probe(0.8))
    assert steeper.probability > high.probability  # read from the settings, not fixed
    unjudged = decide(settings, None, {"a": np.zeros(4)})
    assert not unjudged.assessed and unjudged.probability is None
    cut = cut_short(decide(settings, None, {}, _probe(0.2)), ("patch search",), 5.0)
    assert not cut.assessed and cut.probability is None
