"""The model zoo as the bench sees it: manifest entries with absolute paths, and the data
files rewritten in each model's input layout under bench/work/."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
EXAMPLE = ROOT / "models" / "example"
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"


def manifest_sources(zoo: Path = ZOO) -> list[Path]:
    """manifest.json when it exists, else every manifest-*.json."""
    merged = zoo / "manifest.json"
    if merged.exists():
        return [merged]
    return sorted(zoo.glob("manifest-*.json"))


def _read_json(path: Path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None  # being rewritten by the zoo builder right now: try again later


def example_entry() -> dict | None:
    meta = _read_json(EXAMPLE / "model.json")
    if meta is None or not (EXAMPLE / "model.onnx").exists():
        return None
    backdoored = meta.get("attack", "clean") != "clean"
    return {
        "name": "example", "file": str(EXAMPLE / "model.onnx"), "framework": meta.get("framework", "pytorch"),
        "architecture": meta.get("architecture", "example"), "dataset": meta.get("dataset"),
        "attack": meta.get("attack", "clean"), "target": meta.get("target") if backdoored else None,
        "seed": meta.get("seed", 0), "layout": meta.get("layout", "nchw"), "input": meta.get("input", "x"),
        "clean_accuracy": meta.get("clean_accuracy"), "attack_success_rate": meta.get("attack_success_rate"),
        "test": str(EXAMPLE / "test.npz"), "triggered": str(EXAMPLE / "triggered.npz") if backdoored else None,
        "clean_pool": str(EXAMPLE / "clean.npz"), "source": "models/example/model.json",
    }


def load_entries(zoo: Path = ZOO, include_example: bool = True) -> list[dict]:
    """Every model whose .onnx exists, paths made absolute, sorted by name."""
    entries: dict[str, dict] = {}
    for source in manifest_sources(zoo):
        listed = _read_json(source) or []
        if isinstance(listed, dict):
            listed = listed.get("models", [])
        for entry in listed:
            entry = dict(entry)
            for key in ("file", "test", "triggered", "clean_pool"):
                if entry.get(key):
                    entry[key] = str(zoo / entry[key])
            entry["source"] = str(source.relative_to(ROOT))
            if Path(entry["file"]).exists():
                entries[entry["name"]] = entry
    if include_example:
        example = example_entry()
        if example is not None and example["name"] not in entries:
            entries[example["name"]] = example
    return [entries[name] for name in sorted(entries)]


def select(entries: list[dict], patterns: str | None) -> list[dict]:
    if not patterns:
        return entries
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    return [e for e in entries if any(fnmatch.fnmatchcase(e["name"], g) for g in globs)]


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """[N, 1, 28, 28] images (as stored) to the model's layout."""
    if layout == "nchw":
        return x
    if layout == "nhwc":
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
    if layout == "flat":
        return x.reshape(len(x), -1)
    raise ValueError(f"unknown layout {layout!r}")


def pool_size(path: str) -> int:
    with np.load(path) as archive:
        return int(archive["x"].shape[0])


def _save_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def save_json(path: Path, result: dict) -> None:
    """Write `result` as JSON to `path` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        json.dump(result, handle, indent=1, sort_keys=False, default=float)
        handle.write("\n")
    os.replace(temporary, path)


def materialise(source: str, layout: str, first: int | None = None) -> Path:
    """`source` rewritten in `layout` (first `first` samples only when given), cached in bench/work/data under a name
    that says which file it came from: two zoos' files of one name (the RGB and the families zoo each have an
    emoji-test.npz) once shared a cache entry, and whichever zoo ran second was evaluated on the other's test set."""
    where = Path(source).resolve()
    origin = hashlib.sha256(str(where).encode()).hexdigest()[:8]
    name = f"{where.stem}-{origin}-{layout}" + ("" if first is None else f"-n{first}") + ".npz"
    target = WORK / "data" / name
    if target.exists() and target.stat().st_mtime >= Path(source).stat().st_mtime:
        return target
    with np.load(source) as archive:
        x, y = archive["x"], archive["y"] if "y" in archive.files else None
    if first is not None:
        if len(x) < first:
            raise ValueError(f"{source} holds {len(x)} samples, fewer than {first}")
        x = x[:first]
        y = None if y is None else y[:first]
    arrays = {"x": to_layout(x, layout)}
    if y is not None:
        arrays["y"] = y
    _save_atomic(target, **arrays)
    return target


def sample_set(entry: dict, start: int, count: int, folder: Path) -> Path:
    """Clean pool samples start .. start + count - 1 of a zoo model, in its input layout, as an .npz in `folder`: set k
    of n samples is sample_set(entry, k * n, n, folder) (the draws bench.verdict, bench.identity and bench.held_back share)."""
    with np.load(entry["clean_pool"]) as archive:
        x = archive["x"][start : start + count]
    path = folder / f"{entry['name']}-{start}.npz"
    np.savez(path, x=to_layout(x, entry.get("layout", "nchw")))
    return path


def stratified_set(entry: dict, count: int, folder: Path, after: int) -> Path:
    """One clean pool sample of each class, the first of each from pool position `after` on (past the disjoint draws),
    taken in turn over the classes until `count` are chosen, as `sample_set` writes them."""
    with np.load(entry["clean_pool"]) as archive:
        x, y = archive["x"], archive["y"]
    if len(y) - after < count:
        raise ValueError(f"{entry['clean_pool']}: {len(y) - after} pool samples after position {after}, fewer than {count}")
    rest = np.arange(after, len(y))
    queues = [list(rest[y[rest] == c]) for c in np.unique(y[rest])]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        chosen += [q.pop(0) for q in queues if q][: count - len(chosen)]
    path = folder / f"{entry['name']}-stratified.npz"
    np.savez(path, x=to_layout(x[np.sort(chosen)], entry.get("layout", "nchw")))
    return path


def over_sets(entries: list[dict], sets: int, count: int, measure) -> dict[str, list[dict]]:
    """{model: [measure(entry, k * count, count, folder) for each set k]}, in a temporary folder, each model's line on
    stderr as it finishes."""
    import sys
    import tempfile

    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for entry in entries:
            rows[entry["name"]] = [measure(entry, k * count, count, Path(folder)) for k in range(sets)]
            print(entry["name"], json.dumps(rows[entry["name"]], default=float), file=sys.stderr, flush=True)
    return rows


def points_lost(before: float | None, after: float | None) -> float | None:
    """Accuracy points lost from `before` to `after` (fractions), or None when either is unknown."""
    return None if before is None or after is None else 100.0 * (before - after)
