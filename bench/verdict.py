"""The verdict and the repair over several disjoint sets of clean samples: how much they
depend on which ten.

    .venv/bin/python -m bench.verdict [--sets 5] [--n 10] [--no-repair]
    .venv/bin/python -m bench.verdict --set patch.RESTARTS=2 --note "why"   # a variant of the method

For every zoo model, `auditor.audit` and `auditor.repair` run on clean-pool samples
[k*n, (k+1)*n) for k < sets, and the repaired model is evaluated on the test and triggered
sets. Writes bench/results/verdict_sets.json; `bench.report` puts its summary in
BENCHMARKS.md. The bench's main grid uses only the first set, so this is the check on luck
of the draw.

`--set MODULE.NAME=VALUE` (repeatable) runs a variant of the method instead: the module-level
constant NAME of auditor.MODULE (a number, string or flag that auditor reads when it runs: not
one that only gave a default argument its value, nor one another constant was computed from) takes
VALUE for this run, and the result goes to bench/results/variants/ (`bench.report` sets each
variant beside the shipped method, per half). That is how the method is tuned: a variant is kept
only when it does better on the tuning half.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import pkgutil
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import zoo

OUTPUT = zoo.RESULTS / "verdict_sets.json"
VARIANTS = zoo.RESULTS / "variants"


def parse_override(text: str) -> tuple[object, str, object]:
    """'MODULE.NAME=VALUE' -> (auditor.MODULE, NAME, VALUE cast to the constant's type); ValueError
    naming the problem where the module, the constant or the value does not fit."""
    match = re.fullmatch(r"(\w+)\.([A-Z][A-Z0-9_]*)=(.+)", text)
    if match is None:
        raise ValueError(f"--set {text!r}: give MODULE.NAME=VALUE, e.g. patch.RESTARTS=2")
    module_name, name, value = match.groups()
    try:
        module = importlib.import_module(f"auditor.{module_name}")
    except ImportError:
        raise ValueError(f"--set {text!r}: auditor has no module {module_name!r}") from None
    current = getattr(module, name, None)
    if isinstance(current, bool):
        if value not in ("true", "false"):
            raise ValueError(f"--set {text!r}: {module_name}.{name} is a flag: give true or false")
        return module, name, value == "true"
    if not isinstance(current, (int, float, str)):
        raise ValueError(f"--set {text!r}: auditor.{module_name} has no number or string constant {name}")
    try:
        return module, name, type(current)(value)
    except ValueError:
        raise ValueError(f"--set {text!r}: {module_name}.{name} is {type(current).__name__}, not {value!r}") from None


def constants() -> dict[str, object]:
    """Every number, string or flag constant of auditor's modules, as 'module.NAME': value: what a
    result was measured with, so that a variant measured before a default changed says so."""
    import auditor

    out = {}
    for info in sorted(pkgutil.iter_modules(auditor.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"auditor.{info.name}")
        for name, value in vars(module).items():
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and isinstance(value, (bool, int, float, str)) and name != "SCHEMA":
                out[f"{info.name}.{name}"] = value  # a report schema is the format, not the method
    return out


def variant_path(overrides: list[str]) -> Path:
    """bench/results/variants/<the overrides, as a file name>.json"""
    return VARIANTS / (re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "+".join(overrides)) + ".json")


def audit_set(entry: dict, start: int, count: int, folder: Path, repair: bool, baseline: dict | None) -> dict:
    import auditor

    with np.load(entry["clean_pool"]) as archive:
        x = archive["x"][start : start + count]
    path = folder / f"{entry['name']}-{start}.npz"
    np.savez(path, x=zoo.to_layout(x, entry.get("layout", "nchw")))
    verdict = auditor.audit(entry["file"], str(path), limit=count, device="cpu").verdict
    out = {"start": start, "score": verdict["score"], "threshold": verdict["threshold"], "suspicious": verdict["suspicious"],
           "basis": verdict["basis"], "target": verdict["target"]}
    if repair and baseline is not None:
        repaired = folder / f"{entry['name']}-{start}.onnx"
        report = auditor.repair(entry["file"], str(path), str(repaired), limit=count, device="cpu", force=True)
        after = _evaluate(str(repaired), entry)
        out.update(accuracy=after.accuracy, asr=after.attack_success_rate,
                   acc_drop_points=zoo.points_lost(baseline["accuracy"], after.accuracy),
                   target_drop_points=zoo.points_lost(baseline.get("target_accuracy"), after.target_accuracy),
                   unlearned=bool((report.repair.get("unlearning") or {}).get("applied")),
                   unlearned_class_drop_points=_unlearned_class_drop(entry, report.repair, str(repaired)),
                   unlearning_cause=(report.repair.get("unlearning") or {}).get("cause"),
                   filtered=_filter_applied(report.repair))
    return out


def _unlearned_class_drop(entry: dict, repair: dict, repaired: str) -> float | None:
    """Points of accuracy lost on the test samples of the class head unlearning lowered (the
    suspected target, right or wrong, on clean models too), or None when nothing was unlearned."""
    import auditor

    unlearned = repair.get("unlearning") or {}
    if not unlearned.get("applied"):
        return None
    test = str(zoo.materialise(entry["test"], entry.get("layout", "nchw")))
    after = auditor.evaluate(repaired, test, device="cpu", target=unlearned["target"]).target_accuracy
    return zoo.points_lost(_class_accuracy(str(entry["file"]), test, unlearned["target"]), after)


@functools.cache
def _class_accuracy(model: str, test: str, target: int) -> float | None:
    """The accuracy of an original zoo model on the test samples of class `target` (once per model and class)."""
    import auditor

    return auditor.evaluate(model, test, device="cpu", target=target).target_accuracy


def _filter_applied(repair: dict) -> str | None:
    """The input filter that went into the repaired model ("notch" or "occlusion", with " (weak)"
    when it ran on a verdict under the threshold), else None."""
    for name in ("notch", "occlusion"):
        entry = repair.get(name) or {}
        if entry.get("applied"):
            return name + (" (weak)" if entry.get("weak") else "")
    return None


def _evaluate(model: str, entry: dict):
    import auditor

    layout = entry.get("layout", "nchw")
    triggered = zoo.materialise(entry["triggered"], layout) if entry.get("triggered") and entry.get("target") is not None else None
    return auditor.evaluate(model, str(zoo.materialise(entry["test"], layout)), device="cpu",
                            triggered=None if triggered is None else str(triggered),
                            target=entry.get("target") if triggered is not None else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verdict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=5, help="disjoint sample sets per model (default 5)")
    parser.add_argument("--n", type=int, default=10, help="clean samples per set (default 10)")
    parser.add_argument("--no-repair", action="store_true", help="audit only: do not repair and evaluate each set")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="run a variant: auditor.MODULE's constant NAME takes VALUE (repeatable)")
    parser.add_argument("--note", default=None, help="with --set: what the variant tries (BENCHMARKS.md lists it)")
    args = parser.parse_args(argv)
    if args.sets < 1 or args.n < 1:
        parser.error("--sets and --n must be positive")
    if args.note is not None and not args.overrides:
        parser.error("--note describes a variant: it goes with --set")
    try:
        changes = [parse_override(text) for text in args.overrides]
    except ValueError as exc:
        parser.error(str(exc))
    for module, name, value in changes:
        setattr(module, name, value)  # this process only: the variant's run
    output = variant_path(args.overrides) if args.overrides else OUTPUT
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory() as folder:
        for entry in zoo.load_entries():
            if zoo.pool_size(entry["clean_pool"]) < args.sets * args.n:
                continue
            before = None
            if not args.no_repair:
                evaluated = _evaluate(entry["file"], entry)
                before = {"accuracy": evaluated.accuracy, "asr": evaluated.attack_success_rate,
                          "target_accuracy": evaluated.target_accuracy}
            sets = [audit_set(entry, k * args.n, args.n, Path(folder), not args.no_repair, before) for k in range(args.sets)]
            kind = "clean" if entry.get("attack", "clean") == "clean" or entry.get("target") is None else "backdoored"
            models.append({"name": entry["name"], "kind": kind, "attack": entry.get("attack"), "target": entry.get("target"),
                           "seed": entry.get("seed"), "architecture": entry.get("architecture"), "baseline": before,
                           "sets": sets})
            print(f"  {entry['name']}: " + " ".join(f"{s['score']:.2f}" for s in sets), flush=True)
    given = sys.argv[1:] if argv is None else argv
    result = {"command": " ".join([".venv/bin/python -m bench.verdict", shlex.join(given)]).strip(),
              "sets": args.sets, "n": args.n, "seconds": time.perf_counter() - started, "constants": constants(),
              "models": models}
    if args.overrides:
        result.update(overrides=args.overrides, note=args.note)
    zoo.save_json(output, result)
    print(f"verdict: {len(models)} models x {args.sets} sets -> {output.relative_to(zoo.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
