"""Fingerprint of what auditor decides and writes on every zoo model and two sample sets.

    .venv/bin/python -m bench.identity OUT.json [--sets 2] [--n 10] [--models GLOB]

For each model and set k (clean pool samples k*n .. k*n+n-1, the sets bench.verdict draws first):
the verdict (score, threshold, suspicious, basis, target) of `audit` and the SHA-256 of the model
`repair` writes. Two fingerprints taken before and after a refactor must be equal: the check that
a change of structure changed no behaviour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from bench import zoo


def _verdict(report) -> dict:
    verdict = report.verdict if isinstance(report.verdict, dict) else report.verdict.to_dict()
    return {key: verdict[key] for key in ("score", "threshold", "suspicious", "basis", "target")}


def fingerprint(entry: dict, start: int, count: int, folder: Path) -> dict:
    import auditor

    samples = zoo.sample_set(entry, start, count, folder)
    scanned = auditor.audit(entry["file"], str(samples), limit=count, device="cpu")
    repaired = folder / f"{entry['name']}-{start}.onnx"
    report = auditor.repair(entry["file"], str(samples), str(repaired), limit=count, device="cpu", force=True)
    return {"start": start, "scan": _verdict(scanned), "repair": _verdict(report),
            "sha256": hashlib.sha256(repaired.read_bytes()).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--models", default=None)
    args = parser.parse_args(argv)
    results = zoo.over_sets(zoo.select(zoo.load_entries(), args.models), args.sets, args.n, fingerprint)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
