"""The fidelity guard's measures, alone (auditor/mitigation/guard.py)."""

from __future__ import annotations

import numpy as np

from auditor.mitigation.guard import divergence


def test_divergence_spares_only_the_target_and_only_on_other_rows() -> None:
    """Unlearning's divergence: taking the suspected target's share from a sample of another class
    costs nothing, reshuffling the other classes still does, and a target-class sample counts whole."""
    reference = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    label = np.array([0, 1])
    emptied = np.array([[0.6 / 0.7, 1e-9, 0.1 / 0.7], [0.4, 0.4, 0.2]])  # row 0: class 1's mass removed, the rest in proportion
    assert divergence(reference[:1], emptied[:1], label[:1]) > 0.2
    assert divergence(reference[:1], emptied[:1], label[:1], spare=1) < 1e-6
    reshuffled = np.array([[0.3, 0.3, 0.4]])
    assert divergence(reference[:1], reshuffled, label[:1], spare=1) > 0.2
    assert divergence(reference[1:], emptied[1:], label[1:], spare=1) == divergence(reference[1:], emptied[1:], label[1:]) > 0.1
