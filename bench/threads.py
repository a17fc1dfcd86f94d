"""auditor's time by onnxruntime's thread count: `auditor.repair` at N=10 on the CPU provider.

    python -m bench.threads [--threads 0,8,4,2,1] [--models 'vit*,resnet*'] [--output bench/results/threads.json]

Each thread count (0: onnxruntime's default, one thread per physical core) runs in a fresh
process; per model, the best of two timed repairs after one untimed warm-up. This is what the
`--threads` option is for: on many cores, the zoo's small models can lose more to the threads'
coordination than they gain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from bench import zoo

OUTPUT = zoo.RESULTS / "threads.json"
DEFAULT_MODELS = ("cnn-mnist-badnets-s0,cnn_bn-fmnist-wanet-s1,keras_cnn_blended_s1,mlp-mnist-trojan-s1,"
                  "mobilenet-fmnist-sig-s1,resnet-fmnist-badnets-s1,vit-fmnist-badnets-s1")


def measure(threads: int | None, names: list[str]) -> dict[str, float]:
    """Best of two timed repairs per model (after a warm-up), in this process."""
    import auditor

    entries = {e["name"]: e for e in zoo.load_entries()}
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            entry = entries[name]
            data = zoo.materialise(entry["clean_pool"], entry.get("layout", "nchw"), first=10)
            times = []
            for _ in range(3):
                tick = time.perf_counter()
                auditor.repair(entry["file"], str(data), str(Path(folder) / "repaired.onnx"), limit=10, device="cpu",
                               force=True, threads=threads)
                times.append(time.perf_counter() - tick)
            seconds[name] = min(times[1:])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="0,8,4,2,1", help="thread counts; 0 is onnxruntime's default")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated name globs")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    names = [e["name"] for e in zoo.select(zoo.load_entries(), args.models)]
    if args.one is not None:
        print(json.dumps(measure(args.one or None, names)))
        return 0
    rows = {}
    for count in [int(v) for v in args.threads.split(",") if v.strip()]:
        done = subprocess.run([sys.executable, "-m", "bench.threads", "--models", ",".join(names), "--one", str(count)],
                              capture_output=True, text=True, check=True, cwd=zoo.ROOT)
        rows[str(count)] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"threads {count or 'default'}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[str(count)].items()), file=sys.stderr)
    zoo.save_json(args.output, {
        "command": "python -m bench.threads " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__, "python": platform.python_version(), "seconds": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
