"""How often the checks after the guard (held-back samples, a moved shortcut) replan or refuse a repair, on the zoo.

    .venv/bin/python -m bench.held_back [--sets 5] [--n 10] [--models GLOB] [--out bench/results/held_back.json]

For each zoo model and set k (clean pool samples k*n .. k*n+n-1, the sets bench.verdict draws): `repair` with
the default settings; the guard's agreement and divergence, the held-back check's, and whether it refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import zoo


def measure(entry: dict, start: int, count: int, folder: Path) -> dict:
    import auditor

    samples = zoo.sample_set(entry, start, count, folder)
    try:
        report = auditor.repair(entry["file"], str(samples), str(folder / "repaired.onnx"), limit=count, device="cpu", force=True)
    except auditor.RepairError as exc:
        return {"start": start, "refused": str(exc)}
    outcome = report.repair
    return {"start": start, "guard": {"agreement": outcome.plan.fidelity.agreement, "divergence": outcome.plan.fidelity.divergence},
            "held_back": vars(outcome.held_back).copy(), "replanned": outcome.replanned,
            "probe_after": None if outcome.probe is None else vars(outcome.probe).copy(),
            "unlearned": bool(outcome.plan.unlearning is not None and outcome.plan.unlearning.applied)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=zoo.RESULTS / "held_back.json")
    parser.add_argument("--sets", type=int, default=5)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--models", default=None)
    args = parser.parse_args(argv)
    rows = zoo.over_sets(zoo.select(zoo.load_entries(), args.models), args.sets, args.n, measure)
    command = ".venv/bin/python -m bench.held_back " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.write_text(json.dumps({"command": command, "sets": args.sets, "n": args.n, "rows": rows}, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
