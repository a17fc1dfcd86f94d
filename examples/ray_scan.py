"""Scan many models on a Ray cluster: one Ray task per model, one summary JSON, the worst outcome as exit code.

A registry of thousands of models is fanned out over an engine that already schedules, retries and spreads work
over machines, instead of a scheduler of our own. Each model is one `@ray.remote(num_cpus=1)` task running
`auditor.batch.scan_one` with onnxruntime's threads set to 1, so Ray's CPU count is the number of scans that run
at once and they never fight over cores. A bad model never stops the run: its entry says "error" and why. The
summary is `auditor.batch.combined` of the entries, in the order the models were given: the same JSON the CLI's
batch scan writes (`auditor scan A.onnx B.onnx ... --json`).

    pip install 'auditor[ray]'
    python examples/ray_scan.py models/ --data clean.npz --out summary.json                 # a local Ray instance
    python examples/ray_scan.py models/ --data clean.npz --out summary.json --address HOST:PORT   # a running cluster

Models and data are read on the workers by absolute path: on a cluster of several machines, keep them on a
filesystem every node mounts at the same path. Exit code: 0 every model clean, 1 one looks backdoored, 4 one could
not be assessed, 2 a model or the command line is bad input, 3 a bug in auditor (the CLI's codes; the worst wins).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from auditor.batch import EXIT_CODES, Entry, combined, expand, scan_one
from auditor.errors import AuditorError


def scan_task(model: str, data: str, options: dict) -> Entry:
    """One model's scan on a Ray worker, with one onnxruntime thread (Ray's num_cpus=1 is the core it gets)."""
    return scan_one(model, data, threads=1, **options)


def scan_on_ray(models: list[Path], data: Path, address: str | None = None, **options) -> list[Entry]:
    """Every model as one Ray task; the entries in the order of `models`. Connects to `address`, else starts a local
    Ray instance for the run (and stops it after)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine unless asked for
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1)(scan_task)
        pending = {task.remote(str(model.absolute()), str(data.absolute()), options): i for i, model in enumerate(models)}
        entries: dict[int, Entry] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                entries[i] = ray.get(ref)
                print(f"[{len(entries)}/{len(models)}] {entries[i].outcome}: {entries[i].model}", file=sys.stderr)
        return [entries[i] for i in range(len(models))]
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scan ONNX models for backdoors as Ray tasks, one task per model.")
    parser.add_argument("models", nargs="+", help="model files, folders (every .onnx below) or glob patterns")
    parser.add_argument("--data", required=True, type=Path, help="clean samples (.npz / .npy), the same for every model")
    parser.add_argument("--out", required=True, type=Path, help="where to write the summary JSON")
    parser.add_argument("--address", help="a running Ray cluster (HOST:PORT or 'auto'); default: start a local Ray instance")
    parser.add_argument("--limit", type=int, help="use only the first N samples")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (as `auditor scan --device`)")
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: Ray is not installed: pip install 'auditor[ray]'", file=sys.stderr)
        return EXIT_CODES["error"]
    try:
        models = expand(args.models)
    except AuditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["error"]
    try:
        entries = scan_on_ray(models, args.data, args.address, limit=args.limit, device=args.device)
    except KeyboardInterrupt:
        return 130
    except ConnectionError as exc:  # no Ray cluster at --address
        print(f"error: Ray: {exc}", file=sys.stderr)
        return EXIT_CODES["error"]
    except Exception as exc:  # Ray itself failed (scan_one never raises): not a verdict, so never exit 1
        print(f"error: the Ray run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CODES["bug"]
    summary = combined(entries)
    args.out.write_text(json.dumps(summary, indent=1, sort_keys=True, allow_nan=False) + "\n")
    counts = ", ".join(f"{count} {name}" for name, count in summary["summary"]["outcomes"].items() if count)
    print(f"{len(entries)} models: {counts}; worst: {summary['summary']['worst']}; summary written to {args.out}")
    return summary["summary"]["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
