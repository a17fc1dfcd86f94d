"""The zoo's manifest and clean samples in each model's input layout, for the tests that audit zoo models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
MANIFEST = {e["name"]: e for e in json.loads((ZOO / "manifest.json").read_text())}


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """[N, 1, H, W] images, as the zoo stores them, in a model's input layout."""
    if layout == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x.reshape(len(x), -1) if layout == "flat" else x


def clean(entry: dict, tmp_path: Path, count: int = 10, start: int = 0) -> Path:
    """Samples [start, start + count) of the model's clean pool, in its input layout, as an .npz."""
    with np.load(ZOO / entry["clean_pool"]) as archive:
        x = archive["x"][start:start + count]
    path = tmp_path / f"{entry['name']}-clean-{start}.npz"
    np.savez(path, x=to_layout(x, entry["layout"]))
    return path


def dataset(entry: dict, key: str, tmp_path: Path) -> Path:
    """The model's test or triggered set (`key`: "test" or "triggered") in its input layout, as an .npz."""
    with np.load(ZOO / entry[key]) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["x"] = to_layout(arrays["x"], entry["layout"])
    path = tmp_path / f"{entry['name']}-{key}.npz"
    np.savez(path, **arrays)
    return path


def before_after(entry: dict, original: Path, repaired: Path, test: Path, triggered: Path) -> tuple:
    """auditor.evaluate of the original and the repaired model on the test and triggered sets."""
    import auditor

    return tuple(auditor.evaluate(m, test, triggered=triggered, target=entry["target"], device="cpu") for m in (original, repaired))
