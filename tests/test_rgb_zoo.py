"""The RGB zoo (models/zoo_rgb, made by models/make_emoji.py): a family the method was never tuned on, scanned as
a pipeline would. Its measured rates are in BENCHMARKS.md; here, that a colour model is read as an image and that
a BadNets patch on it is found with its target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import auditor

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo_rgb"
ENTRIES = {e["name"]: e for e in json.loads((ZOO / "manifest.json").read_text())["models"]}


def test_a_badnets_patch_on_an_rgb_model_is_found_with_its_target(tmp_path: Path) -> None:
    entry = ENTRIES["vgg-emoji-badnets-s0"]
    with np.load(ZOO / entry["clean_pool"]) as pool:
        np.savez(data := tmp_path / "clean.npz", x=pool["x"][:10])  # uint8 [10, 3, 32, 32], read as x / 255
    report = auditor.audit(ZOO / entry["file"], data, device="cpu")
    assert report.model["kinds"]["input"] == "image" and report.data["classes"] == 10
    assert report.suspicious and report.verdict.basis == "patch" and report.verdict.target == entry["target"] == 0
    row, column, size = report.verdict.patch.row, report.verdict.patch.column, report.verdict.patch.pixels.shape[0]
    assert row + size > 28 and column + size > 28  # it covers the trigger's corner (rows and columns 28-30)
