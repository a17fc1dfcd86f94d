"""ANP at its published iteration budget, for the speed comparison's context.

    .venv/bin/python -m bench.anp_budget [--n 10] [--iterations 2000] [--models GLOBS]

The grid (bench/run.py) runs ANP for `anp.ITERATIONS` (200) iterations: a tenth of the
paper's 2000, so that ANP at N = 500 fits the bench's time. That makes ANP faster than as
published, and the grid's `ANP time / this` ratio conservative. This command times ANP once
per model at the published budget and evaluates its repair, so BENCHMARKS.md can say what
the published setting costs and whether it removes more. Writes bench/results/anp_budget.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench import anp, zoo
from bench.run import _effects, _evaluate, torch_threads

OUTPUT = zoo.RESULTS / "anp_budget.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anp_budget", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="clean samples (default 10)")
    parser.add_argument("--iterations", type=int, default=2000, help="ANP iterations (default 2000, the paper's)")
    parser.add_argument("--models", default=None, help="comma-separated globs on model names (default: all)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.iterations < 1:
        parser.error("--n and --iterations must be positive")
    command = " ".join([".venv/bin/python -m bench.anp_budget", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    started = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory() as folder:
        for entry in zoo.select(zoo.load_entries(), args.models):
            if zoo.pool_size(entry["clean_pool"]) < args.n:
                continue
            layout = entry.get("layout", "nchw")
            test = zoo.materialise(entry["test"], layout)
            backdoored = entry.get("attack", "clean") != "clean" and entry.get("target") is not None
            triggered = zoo.materialise(entry["triggered"], layout) if backdoored and entry.get("triggered") else None
            clean = zoo.materialise(entry["clean_pool"], layout, first=args.n)
            out = Path(folder) / f"{entry['name']}.onnx"
            try:
                result = anp.run_anp(entry["file"], str(clean), str(out), iterations=args.iterations)
            except anp.Unavailable as exc:
                models.append({"name": entry["name"], "status": "n/a", "reason": str(exc)})
                continue
            record = {"name": entry["name"], "status": "ok", "wall_s": result.seconds, "iterations": result.iterations,
                      "count": result.count, "torch_threads": torch_threads()}
            record.update(_effects(_evaluate(out, entry, test, triggered), _evaluate(entry["file"], entry, test, triggered)))
            models.append(record)
            print(f"  {entry['name']}: {result.seconds:.1f} s", flush=True)
    data = {"command": command, "n": args.n, "iterations": args.iterations, "seconds": time.perf_counter() - started,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": models}
    zoo.save_json(OUTPUT, data)
    print(f"anp_budget: {len(models)} models -> {OUTPUT.relative_to(zoo.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
