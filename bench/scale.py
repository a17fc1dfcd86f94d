"""Real-size models: `scan` and `repair` against plain inference, interleaved, with peak memory and time per stage.

    .venv/bin/python -m bench.scale [--models resnet18,resnet50,...] [--n 10,100] [--repeats 3] [--commands plain,scan,repair]
                                    [--out bench/results/scale.json]

Needs torch (the `bench` extra) to build the models once (bench/scale_models.py; cached in bench/work/scale). Each
measurement runs in a fresh process (`--one`), so its peak resident memory is its own: plain = load the model and run
one onnxruntime pass over the samples in batches of 64; scan and repair = `auditor.audit` / `auditor.repair` with the
default settings (the time budget included) on CPU. Each N has its own file of N samples. Per repeat, each model's
plain, scan and repair run one after another; the median over repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import zoo

WORK = zoo.ROOT / "bench" / "work" / "scale"
MODELS = ("resnet18", "resnet50", "mobilenetv3", "vit_b16", "bert_tokens", "bert_embeddings")


def prepare(name: str, count: int) -> tuple[Path, Path]:
    """The model and `count` clean samples, built once."""
    from bench import scale_models

    model = WORK / f"{name}.onnx"
    if not model.exists():
        scale_models.build(name, model)
    data = WORK / f"{name}-n{count}.npz"
    if not data.exists():
        np.savez(data, **scale_models.samples(name, count))
    return model, data


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that over fork and exec,
    so a measurement started by a parent that had just built 1000 samples reported the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(command: str, model: Path, data: Path, count: int) -> dict:
    """One measurement, in this process: seconds, peak resident memory, and for scan/repair the stages and verdict."""
    start = time.perf_counter()
    out: dict = {}
    if command == "plain":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        with np.load(data) as archive:
            x = archive["x"][:count]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
        for first in range(0, len(x), 64):
            session.run(None, {session.get_inputs()[0].name: x[first:first + 64]})
    else:
        import auditor

        with tempfile.TemporaryDirectory() as folder:
            if command == "scan":
                report = auditor.audit(model, data, limit=count, device="cpu")
            else:
                report = auditor.repair(model, data, Path(folder) / "repaired.onnx", limit=count, device="cpu")
        verdict = report.verdict
        out = {"timings": report.timings, "outcome": "suspicious" if verdict.suspicious else "clean" if verdict.assessed else "not assessed",
               "basis": verdict.basis, "score": verdict.score, "cut": list(verdict.cut), "kinds": report.model.get("kinds")}
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_mb()
    return out


def measure(command: str, model: Path, data: Path, count: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench.scale", "--one", command, str(model), str(data), str(count)],
                            capture_output=True, text=True, cwd=zoo.ROOT)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=4, metavar=("COMMAND", "MODEL", "DATA", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--n", default="10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", default="plain,scan,repair")
    parser.add_argument("--out", type=Path, default=zoo.RESULTS / "scale.json")
    args = parser.parse_args(argv)
    if args.one:
        command, model, data, count = args.one
        print(json.dumps(one(command, Path(model), Path(data), int(count)), default=float))
        return 0
    names, counts, commands = args.models.split(","), [int(n) for n in args.n.split(",")], args.commands.split(",")
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name in names:
            for count in counts:
                model, data = prepare(name, count)  # a file of exactly N samples: plain reads no more than it runs
                for command in commands:
                    got = measure(command, model, data, count)
                    runs.setdefault(f"{name}|{count}|{command}", []).append(got)
                    shown = got.get("error") or f"{got['seconds']:.1f} s, {got['peak_mb']:.0f} MB {got.get('outcome', '')} {got.get('cut', '')}"
                    print(f"[{repeat + 1}/{args.repeats}] {name} N={count} {command}: {shown}", flush=True)
    rows = []
    for key, got in runs.items():
        name, count, command = key.split("|")
        fine = [g for g in got if "error" not in g]
        row = {"model": name, "n": int(count), "command": command, "repeats": len(got), "errors": [g["error"] for g in got if "error" in g]}
        if fine:
            row |= {"seconds": statistics.median(g["seconds"] for g in fine), "peak_mb": statistics.median(g["peak_mb"] for g in fine),
                    "all_seconds": [g["seconds"] for g in fine]}
            last = fine[-1]
            if "timings" in last:
                row |= {"timings": last["timings"], "outcome": last["outcome"], "basis": last["basis"], "cut": last["cut"],
                        "kinds": last["kinds"]}
        rows.append(row)
    command = "python -m bench.scale" + "".join(f" --{k} {v}" for k, v in (("models", args.models), ("n", args.n), ("repeats", args.repeats),
                                                                          ("commands", args.commands)))
    zoo.save_json(args.out, {"command": command, "cores": len(__import__("os").sched_getaffinity(0)), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
