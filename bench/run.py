"""Benchmark `auditor repair` / `auditor scan` against ANP on every zoo model.

    .venv/bin/python -m bench.run [--models GLOB[,GLOB]] [--n 10,50,100,500]
                                  [--methods sus,clp,fp,anp] [--force] [--jobs 1]

For each model (models/zoo manifests plus the bundled example):
  * the clean pool (first N), test and triggered sets are rewritten in the model's layout
    under bench/work/data (N larger than the pool: the cell is recorded as skipped);
  * baseline accuracy / attack success rate (ASR) with auditor.evaluate;
  * plain inference: onnxruntime session creation + one run over the same N samples
    (CPU provider, median of 3);
  * per N and method: wall time of auditor.repair (sus, clp, fp) or bench.anp (anp),
    accuracy / ASR of the repaired model, channels zeroed, and the auditor.audit verdict;
    with --repeat R, R timed runs per method taken in rounds over the methods, the median kept.
One JSON per model goes to bench/results/<model>.json; cells already there are kept
(resume) unless --force, or unless the model file changed. bench.report runs at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from auditor.io.model import file_sha256
from bench import anp, zoo

AUDITOR_METHODS = ("sus", "clp", "fp")
ALL_METHODS = (*AUDITOR_METHODS, "anp")
DEFAULT_N = (10, 50, 100, 500)
PLAIN_REPEATS = 3
SCHEMA = 1


def torch_threads() -> int | None:
    """PyTorch's intra-op threads. Left at its default, which like onnxruntime's default pool is
    one thread per physical core, so ANP and auditor time on the same cores."""
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def environment(jobs: int) -> dict:
    import onnxruntime

    import auditor

    info = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "auditor": auditor.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "jobs": jobs,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch_threads()
        import onnx2torch  # noqa: F401

        info["onnx2torch"] = getattr(sys.modules.get("onnx2torch"), "__version__", "installed")
    except ImportError:
        pass
    return info


def plain_inference(model_path: str, data_path: Path) -> float:
    """Median of PLAIN_REPEATS: CPU session creation + one run over all samples of data_path."""
    import onnxruntime as ort

    from auditor.io import data, model

    loaded = model.load(model_path)  # same normalisation auditor applies (never changes the graph's maths)
    samples = data.load(data_path, data.input_specs(loaded.proto))
    payload = loaded.proto.SerializeToString()
    times = []
    for _ in range(PLAIN_REPEATS):
        start = time.perf_counter()
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        session.run(None, samples.inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _evaluate(model_path, entry: dict, test: Path, triggered: Path | None) -> dict:
    import auditor

    start = time.perf_counter()
    target = entry.get("target") if triggered is not None else None
    result = auditor.evaluate(str(model_path), str(test), triggered=None if triggered is None else str(triggered),
                              target=target, device="cpu")
    return {"accuracy": result.accuracy, "asr": result.attack_success_rate, "triggered_accuracy": result.triggered_accuracy,
            "target_accuracy": result.target_accuracy, "test_samples": result.samples,
            "triggered_samples": result.triggered_samples, "seconds": time.perf_counter() - start}


def _effects(after: dict, baseline: dict) -> dict:
    out = {"accuracy": after["accuracy"], "asr": after["asr"], "triggered_accuracy": after.get("triggered_accuracy"),
           "eval_s": after["seconds"]}
    out["acc_drop_points"] = zoo.points_lost(baseline["accuracy"], after["accuracy"])
    # the target class's own accuracy: what a repair aimed at its score costs it
    out["target_accuracy"] = after.get("target_accuracy")
    out["target_drop_points"] = zoo.points_lost(baseline.get("target_accuracy"), after.get("target_accuracy"))
    if after["asr"] is None or baseline["asr"] is None:
        out["asr_cut"] = None
    else:
        out["asr_cut"] = (baseline["asr"] - after["asr"]) / baseline["asr"] if baseline["asr"] > 0 else None
    return out


def timed_run(entry: dict, method: str, clean: Path, out_path: Path):
    """One timed repair: (wall seconds, auditor's Report or ANP's result). Raises anp.Unavailable
    where ANP cannot run the model."""
    if method == "anp":
        result = anp.run_anp(entry["file"], str(clean), str(out_path))
        return result.seconds, result
    import auditor

    start = time.perf_counter()
    report = auditor.repair(entry["file"], str(clean), str(out_path), method=method, device="cpu", force=True)
    return time.perf_counter() - start, report


def auditor_record(entry, method, report, walls, clean, out_path, baseline, test, triggered) -> dict:
    """The cell of one auditor method: its last repair's decisions and effects, and its verdict."""
    import auditor

    repaired = report.repair.to_dict()
    record = {"status": "ok", "wall_s": statistics.median(walls), "wall_runs": walls,
              "count": repaired["count"], "zeroed": repaired["zeroed"],
              "agreement": repaired["agreement"], "how": repaired["how"], "bound": repaired.get("bound"),
              "unlearning": repaired.get("unlearning"), "notch": repaired.get("notch"),
              "occlusion": repaired.get("occlusion"), "probe_after": repaired.get("probe"),
              "patch_after": repaired.get("patch"), "fourier_after": repaired.get("fourier"),
              "repair_timings": {k: round(v, 4) for k, v in report.timings.items()}}
    record.update(_effects(_evaluate(out_path, entry, test, triggered), baseline))
    start = time.perf_counter()
    verdict = auditor.audit(entry["file"], str(clean), method=method, device="cpu").verdict
    record.update({"audit_s": time.perf_counter() - start, "verdict_score": verdict.score,
                   "verdict_threshold": verdict.threshold, "suspicious": verdict.suspicious,
                   "verdict_layer": verdict.layer, "verdict_target": verdict.target,
                   "verdict_basis": verdict.basis})
    return record


def anp_record(entry, result, walls, out_path, baseline, test, triggered) -> dict:
    """The cell of ANP: its last run's pruning and effects."""
    record = {"status": "ok", "wall_s": statistics.median(walls), "wall_runs": walls, "torch_threads": torch_threads(),
              "count": result.count, "zeroed": result.zeroed,
              "convert_s": result.convert_seconds, "optimise_s": result.optimise_seconds,
              "iterations": result.iterations, "batch": result.batch, "units": result.units,
              "channels": result.channels, "final_loss": result.final_loss, "mask_quantiles": result.mask_quantiles,
              "notes": result.notes, "verdict_score": None}
    record.update(_effects(_evaluate(out_path, entry, test, triggered), baseline))
    return record


def run_methods(entry, methods, clean, work: Path, n: int, baseline, test, triggered, repeat: int = 1) -> dict[str, dict]:
    """Every method's cell at one N. Repeats go round the methods (sus, anp, sus, anp, ...), not one
    method's repeats in a row, so a stretch of load on the machine slows every method alike and the
    time ratios stay fair; each method's wall time is the median of its runs (repairs are
    deterministic, repeats only steady the time)."""
    paths = {m: work / f"repaired-{m}-n{n}.onnx" for m in methods}
    walls: dict[str, list[float]] = {m: [] for m in methods}
    last: dict[str, object] = {}
    records: dict[str, dict] = {}
    for _ in range(repeat):
        for method in methods:
            if method in records:
                continue  # failed or not applicable: not retried within this run
            try:
                seconds, last[method] = timed_run(entry, method, clean, paths[method])
                walls[method].append(seconds)
            except Exception as exc:
                records[method] = _failure(exc)
    for method in methods:
        if method in records:
            continue
        try:
            if method == "anp":
                records[method] = anp_record(entry, last[method], walls[method], paths[method], baseline, test, triggered)
            else:
                records[method] = auditor_record(entry, method, last[method], walls[method], clean, paths[method], baseline,
                                                 test, triggered)
        except Exception as exc:
            records[method] = _failure(exc)
    return records


def _failure(exc: BaseException) -> dict:
    """A cell that could not be measured: "n/a" where ANP cannot run the model, else an error."""
    if isinstance(exc, anp.Unavailable):
        return {"status": "n/a", "reason": str(exc)}
    return {"status": "error", "reason": _reason(exc), "traceback": traceback.format_exc()[-2000:]}


def bench_model(entry: dict, ns: list[int], methods: list[str], force: bool, command: str, jobs: int,
                repeat: int = 1) -> dict:
    """Fill bench/results/<name>.json with every requested cell; returns a short status."""
    name = entry["name"]
    path = zoo.RESULTS / f"{name}.json"
    sha = file_sha256(entry["file"])
    result = None
    if path.exists():  # --force recomputes the requested cells; it never drops the others
        try:
            with open(path) as handle:
                result = json.load(handle)
        except (OSError, json.JSONDecodeError):
            result = None
        if result is not None and (result.get("model_sha256") != sha or result.get("schema") != SCHEMA):
            result = None  # the model was regenerated: old numbers are stale
    if result is None:
        result = {"schema": SCHEMA, "name": name, "model_sha256": sha, "runs": {}}
    meta = {k: v for k, v in entry.items() if k not in ("file", "test", "triggered", "clean_pool")}
    meta.update({k: os.path.relpath(entry[k], zoo.ROOT) if entry.get(k) else None
                 for k in ("file", "test", "triggered", "clean_pool")})
    result["entry"] = meta
    result["kind"] = "clean" if entry.get("attack", "clean") == "clean" or entry.get("target") is None else "backdoored"
    work = zoo.WORK / name
    work.mkdir(parents=True, exist_ok=True)
    layout = entry.get("layout", "nchw")
    done, started = 0, time.perf_counter()
    test = zoo.materialise(entry["test"], layout)
    triggered = zoo.materialise(entry["triggered"], layout) if result["kind"] == "backdoored" and entry.get("triggered") else None
    if "baseline" not in result or force:
        result["baseline"] = _evaluate(entry["file"], entry, test, triggered)
        zoo.save_json(path, result)
    baseline = result["baseline"]
    available = zoo.pool_size(entry["clean_pool"])
    for n in ns:
        cell = result["runs"].setdefault(str(n), {"n": n, "methods": {}})
        if available < n:
            cell.update(status="skipped", methods={},
                        reason=f"clean pool {os.path.relpath(entry['clean_pool'], zoo.ROOT)} holds {available} samples < N={n}")
            zoo.save_json(path, result)
            continue
        cell["status"] = "ok"
        cell.pop("reason", None)
        clean = zoo.materialise(entry["clean_pool"], layout, first=n)
        if "plain_inference_s" not in cell or force:
            cell["plain_inference_s"] = plain_inference(entry["file"], clean)
        todo = [m for m in methods if force or cell["methods"].get(m) is None or cell["methods"][m].get("status") == "error"]
        # errors are retried on the next run; "n/a" (ANP cannot convert) is kept
        for method, record in run_methods(entry, todo, clean, work, n, baseline, test, triggered, repeat).items():
            record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            record["command"] = command
            record["jobs"] = jobs
            cell["methods"][method] = record
            done += 1
        zoo.save_json(path, result)
    if done:
        result["command"] = command
        result["bench_seconds"] = result.get("bench_seconds", 0.0) + time.perf_counter() - started
    result["environment"] = environment(jobs)
    zoo.save_json(path, result)
    return {"name": name, "cells": done, "seconds": time.perf_counter() - started}


def _parse_list(text: str, cast=str) -> list:
    return [cast(part.strip()) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated globs on model names (default: all)")
    parser.add_argument("--n", default=",".join(map(str, DEFAULT_N)), help="clean sample counts (default 10,50,100,500)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="sus,clp,fp,anp (default: all)")
    parser.add_argument("--force", action="store_true", help="recompute cells that already have results")
    parser.add_argument("--jobs", type=int, default=1, help="models benchmarked in parallel (timings get noisier)")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md at the end")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each repair this many times and record the median wall time (default 1)")
    args = parser.parse_args(argv)
    ns = _parse_list(args.n, int)
    methods = _parse_list(args.methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or not methods or not ns or any(n < 1 for n in ns) or args.jobs < 1 or args.repeat < 1:
        parser.error(f"bad --methods/--n/--jobs/--repeat (methods: {', '.join(ALL_METHODS)})")
    command = " ".join([".venv/bin/python -m bench.run", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    entries = zoo.select(zoo.load_entries(), args.models)
    if not entries:
        print("no model matches", file=sys.stderr)
        return 2
    print(f"bench: {len(entries)} models, N={ns}, methods={methods}, jobs={args.jobs}", flush=True)
    start = time.perf_counter()
    if args.jobs == 1:
        for entry in entries:
            status = bench_model(entry, ns, methods, args.force, command, args.jobs, args.repeat)
            print(f"  {status['name']}: {status['cells']} new cells in {status['seconds']:.1f} s", flush=True)
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(bench_model, e, ns, methods, args.force, command, args.jobs, args.repeat): e for e in entries}
            for future in concurrent.futures.as_completed(futures):
                try:
                    status = future.result()
                    print(f"  {status['name']}: {status['cells']} new cells in {status['seconds']:.1f} s", flush=True)
                except Exception as exc:
                    print(f"  {futures[future]['name']}: FAILED {_reason(exc)}", flush=True)
    elapsed = time.perf_counter() - start
    print(f"bench: done in {elapsed:.1f} s", flush=True)
    if not args.no_report:
        from bench import report

        report.main(command=command, grid_seconds=elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
