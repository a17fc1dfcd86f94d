"""The families zoo (models/zoo_families, made by models/make_families.py): architectures, attacks, datasets and
training recipes the method was never tuned on. Its measured rates are in BENCHMARKS.md; here, that every model in it
is what its manifest says under the project's own evaluator, so the bench measures what it claims to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import auditor

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo_families"
ENTRIES = json.loads((ZOO / "manifest.json").read_text())["models"]


def test_the_zoo_holds_what_generalisation_needs() -> None:
    clean = [e for e in ENTRIES if e["attack"] == "clean"]
    backdoored = [e for e in ENTRIES if e["attack"] != "clean"]
    assert len(clean) >= 24 and len(backdoored) >= 16
    assert {e["dataset"] for e in ENTRIES} == {"emoji", "digits"}
    assert {"mbv3", "convnext", "vit", "wrn", "vgg"} <= {e["architecture"] for e in ENTRIES}
    attacks = {e["attack"] for e in backdoored}
    assert {"lowfreq", "filter", "alltoall", "cleanlabel"} <= attacks
    for attack in attacks:  # every attack on at least two architectures
        assert len({e["architecture"] for e in backdoored if e["attack"] == attack}) >= 2, attack


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_each_model_measures_as_its_manifest_says(entry: dict, tmp_path: Path) -> None:
    test = ZOO / entry["test"]
    if entry["attack"] == "clean":
        measured = auditor.evaluate(str(ZOO / entry["file"]), str(test), device="cpu")
        assert measured.accuracy == pytest.approx(entry["clean_accuracy"], abs=1e-9)
        return
    if entry.get("all_to_all"):  # success: the triggered sample goes to its own label + the shift
        with np.load(ZOO / entry["triggered"]) as archive:
            np.savez(shifted := tmp_path / "shifted.npz", x=archive["x"], y=(archive["y"] + entry["all_to_all"]) % 10)
        success = auditor.evaluate(str(ZOO / entry["file"]), str(shifted), device="cpu").accuracy
    else:
        success = auditor.evaluate(str(ZOO / entry["file"]), str(test), triggered=str(ZOO / entry["triggered"]),
                                   target=entry["target"], device="cpu").attack_success_rate
    assert success == pytest.approx(entry["attack_success_rate"], abs=1e-9) and success >= 0.8
