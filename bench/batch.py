"""The whole zoo in one batch scan: wall time with --jobs 1 and --jobs 2 against plain inference, interleaved.

    .venv/bin/python -m bench.batch [--n 10] [--repeats 3] [--out bench/results/batch.json]

The zoo's models take different samples (MNIST or Fashion-MNIST, NCHW, NHWC or flat), so each group of models
that shares one clean-sample file is one `auditor.batch.scan_many` call, as a team would run one `auditor scan`
per data set. Per repeat, in turn: plain (load each model and run one onnxruntime pass over the samples), jobs 1,
jobs 2; the median over repeats. Outcomes must be the same whatever the job count (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench import zoo


def plain(models: list[Path], data: Path) -> float:
    """Load every model and run one pass over the samples: the floor a scan is measured against."""
    import onnxruntime as ort

    start = time.perf_counter()
    with np.load(data) as archive:
        x = archive["x"].astype(np.float32) / (255.0 if archive["x"].dtype == np.uint8 else 1.0)
    for model in models:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: x})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=zoo.RESULTS / "batch.json")
    args = parser.parse_args(argv)
    from auditor import batch

    groups: dict[Path, list[Path]] = defaultdict(list)
    for entry in zoo.load_entries():
        groups[zoo.materialise(entry["clean_pool"], entry.get("layout", "nchw"), args.n)].append(Path(entry["file"]))
    seconds: dict[str, list[float]] = {"plain": [], "jobs 1": [], "jobs 2": []}
    outcomes: dict[str, dict[str, str]] = {}
    for _ in range(args.repeats):
        seconds["plain"].append(sum(plain(models, data) for data, models in groups.items()))
        for jobs in (1, 2):
            tick, seen = time.perf_counter(), {}
            for data, models in groups.items():
                for entry in batch.scan_many(models, data, jobs=jobs, limit=args.n, device="cpu"):
                    seen[Path(entry.model).name] = entry.outcome
            seconds[f"jobs {jobs}"].append(time.perf_counter() - tick)
            if outcomes and seen != next(iter(outcomes.values())):
                print(f"outcomes differ with --jobs {jobs}", file=sys.stderr)
                return 1
            outcomes[f"jobs {jobs}"] = seen
    found = next(iter(outcomes.values()))
    result = {"command": "python -m bench.batch" + (f" --n {args.n}" if args.n != 10 else ""), "n": args.n,
              "repeats": args.repeats, "cores": len(os.sched_getaffinity(0)), "models": len(found),
              "groups": {str(Path(d).name): [m.name for m in ms] for d, ms in groups.items()},
              "seconds": {k: {"median": statistics.median(v), "all": v} for k, v in seconds.items()},
              "outcomes": dict(sorted(found.items())),
              "counts": {o: sum(v == o for v in found.values()) for o in batch.SEVERITY}}
    zoo.save_json(args.out, result)
    median = {k: v["median"] for k, v in result["seconds"].items()}
    print(f"{len(found)} models: plain {median['plain']:.1f} s, jobs 1 {median['jobs 1']:.1f} s, jobs 2 {median['jobs 2']:.1f} s; "
          f"{result['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
