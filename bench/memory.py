"""Peak memory of `auditor repair` against plain inference and ANP, each in a fresh process.

    .venv/bin/python -m bench.memory [--models GLOB[,GLOB]] [--n 10,100,500]

A process's resident-set high-water mark only grows, so every measurement runs in its own
Python process (`python -m bench.memory --child KIND MODEL N`), which reports the mark after
its imports and again after the work: the first is the interpreter and its libraries
(numpy, onnx and onnxruntime; for ANP also PyTorch and onnx2torch), the difference is what the work itself needed.
KIND is `plain` (onnxruntime session creation and one run over the N samples, as bench.run
times it), `sus` (auditor.repair with the default method) or `anp` (bench.anp).

By default one model per architecture (the first by name). Results go to
bench/results/memory.json; bench.report turns them into a table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import zoo

KINDS = ("plain", "sus", "anp")
DEFAULT_N = (10, 100, 500)
OUTPUT = zoo.RESULTS / "memory.json"


def high_water_mb() -> float:
    """This process's peak resident set so far, in MiB (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def child(kind: str, name: str, n: int) -> dict:
    """Import what `kind` needs, note the high-water mark, do the work, note it again."""
    entry = {e["name"]: e for e in zoo.load_entries()}[name]
    clean = zoo.materialise(entry["clean_pool"], entry.get("layout", "nchw"), first=n)
    import onnx  # noqa: F401  every kind loads the model with onnx and runs it with onnxruntime
    import onnxruntime as ort

    if kind == "plain":
        from auditor.io import data, model
    elif kind == "sus":
        import auditor
    else:
        import torch  # noqa: F401  imported before the mark, as onnxruntime is for the others

        from bench import anp

        anp._import_onnx2torch()
    imported = high_water_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.onnx")
        if kind == "plain":
            loaded = model.load(entry["file"])
            samples = data.load(clean, data.input_specs(loaded.proto))
            options = ort.SessionOptions()
            options.log_severity_level = 4
            session = ort.InferenceSession(loaded.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
            session.run(None, samples.inputs)
        elif kind == "sus":
            auditor.repair(entry["file"], str(clean), out, device="cpu", force=True)
        else:
            anp.run_anp(entry["file"], str(clean), out)
    return {"imported_mb": imported, "peak_mb": high_water_mb(), "seconds": time.perf_counter() - start}


def measure(kind: str, name: str, n: int) -> dict:
    """One child process; its report, or status "error" with its last line of stderr."""
    done = subprocess.run([sys.executable, "-m", "bench.memory", "--child", kind, name, str(n)],
                          capture_output=True, text=True, timeout=900, cwd=zoo.ROOT)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return {"status": "error", "reason": lines[-1][:300]}
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["status"] = "ok"
    record["work_mb"] = record["peak_mb"] - record["imported_mb"]
    return record


def one_per_architecture(entries: list[dict]) -> list[dict]:
    chosen: dict[str, dict] = {}
    for entry in sorted(entries, key=lambda e: e["name"]):
        chosen.setdefault(entry.get("architecture", "?"), entry)
    return [chosen[a] for a in sorted(chosen)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated globs on model names (default: one per architecture)")
    parser.add_argument("--n", default=",".join(map(str, DEFAULT_N)), help="clean sample counts (default 10,100,500)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, name, n = args.child
        print(json.dumps(child(kind, name, int(n))))
        return 0
    try:
        ns = sorted({int(v) for v in args.n.split(",") if v.strip()})
    except ValueError:
        parser.error("--n takes comma-separated integers")
    if not ns or min(ns) < 1:
        parser.error("--n takes positive integers")
    entries = zoo.load_entries()
    entries = zoo.select(entries, args.models) if args.models else one_per_architecture(entries)
    started = time.perf_counter()
    rows = []
    for entry in entries:
        pool = zoo.pool_size(entry["clean_pool"])
        for n in ns:
            if n > pool:
                rows.append({"name": entry["name"], "n": n, "status": "skipped", "reason": f"clean pool holds {pool} samples"})
                continue
            row = {"name": entry["name"], "architecture": entry.get("architecture"), "n": n}
            for kind in KINDS:
                row[kind] = measure(kind, entry["name"], n)
            rows.append(row)
            print(f"  {entry['name']} N={n}: " + ", ".join(
                f"{k} {row[k]['peak_mb']:.0f} MiB" if row[k]["status"] == "ok" else f"{k} error" for k in KINDS), flush=True)
    command = " ".join([".venv/bin/python -m bench.memory", *(sys.argv[1:] if argv is None else argv)]).strip()
    result = {"command": command, "seconds": time.perf_counter() - started, "rows": rows}
    zoo.save_json(OUTPUT, result)
    print(f"memory: {len(entries)} models -> {OUTPUT.relative_to(zoo.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
