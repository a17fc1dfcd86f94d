"""The verdict and the repair over several disjoint sets of clean samples: how much they
depend on which ten.

    .venv/bin/python -m bench.verdict [--sets 5] [--n 10] [--no-repair]
    .venv/bin/python -m bench.verdict --set patch.restarts=2 --note "why"   # a variant of the method

For every zoo model, `auditor.audit` and `auditor.repair` run on clean-pool samples
[k*n, (k+1)*n) for k < sets and on one more draw with a sample of each class (start
"stratified"), and the repaired model is evaluated on the test and triggered sets. Writes
bench/results/verdict_sets.json; `bench.report` puts its summary in BENCHMARKS.md. The bench's
main grid uses only the first set, so this is the check on luck of the draw.

`--set SECTION.NAME=VALUE` (repeatable) runs a variant of the method instead: the setting NAME of
section SECTION of `auditor.settings.Settings` takes VALUE for this run (parsed by the setting's
type; an unknown name is refused), passed to `auditor.audit` and `auditor.repair` as `settings=`,
and the result goes to bench/results/variants/ (`bench.report` sets each variant beside the
shipped method, per half). That is how the method is tuned: a variant is kept only when it does
better on the tuning half. Every run records the settings it ran with ("constants"), so that a
variant measured before a default changed says so.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

from auditor.errors import SettingsError
from auditor.settings import Settings, parse_overrides
from bench import zoo

OUTPUT = zoo.RESULTS / "verdict_sets.json"
VARIANTS = zoo.RESULTS / "variants"


def parse_override(text: str) -> tuple[str, object]:
    """'SECTION.NAME=VALUE' -> ('SECTION.NAME', VALUE parsed as the setting's type); SettingsError
    naming the problem where the form, the name or the value does not fit."""
    ((key, value),) = parse_overrides([text]).items()
    section, name = key.split(".", 1)
    return key, getattr(getattr(Settings().override({key: value}), section), name)


def variant_settings(overrides: list[str]) -> Settings:
    """The shipped settings with every 'SECTION.NAME=VALUE' of `overrides` applied (SettingsError
    where one does not fit)."""
    return Settings().override(parse_overrides(overrides))


def constants(settings: Settings | None = None) -> dict[str, object]:
    """Every setting of `settings` (default: the shipped ones) as 'section.name': value (tuples as
    lists): what a result was measured with, so that a variant measured before a default changed
    says so."""
    tree = (settings or Settings()).to_dict()
    return {f"{section}.{name}": value for section, values in tree.items() for name, value in values.items()}


def variant_path(overrides: list[str]) -> Path:
    """bench/results/variants/<the overrides, as a file name>.json"""
    return VARIANTS / (re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "+".join(overrides)) + ".json")


def audit_set(entry: dict, start: int | str, count: int, folder: Path, repair: bool, baseline: dict | None,
              settings: Settings | None = None, after: int = 0) -> dict:
    """Audit (and repair) one draw: pool samples start .. start + count - 1, or with start "stratified" the first
    pool sample of each class from pool position `after` on (past the disjoint draws; `count` of them in all)."""
    import auditor

    settings = settings or Settings()
    path = (zoo.stratified_set(entry, count, folder, after) if start == "stratified"
            else zoo.sample_set(entry, start, count, folder))
    report = auditor.audit(entry["file"], str(path), limit=count, device="cpu", settings=settings)
    verdict = report.verdict
    out = {"start": start, "channels": _channel_score(report, settings),
           "score": verdict.score, "threshold": verdict.threshold, "suspicious": verdict.suspicious, "assessed": verdict.assessed,
           "probability": verdict.probability, "basis": verdict.basis, "target": verdict.target,
           "detectors": {"corruption": None if verdict.probe is None else verdict.probe.score,
                         "patch": None if verdict.patch is None else verdict.patch.score,
                         "fourier": None if verdict.fourier is None else verdict.fourier.score}}
    if repair and baseline is not None:
        repaired = folder / f"{entry['name']}-{start}.onnx"
        try:
            report = auditor.repair(entry["file"], str(path), str(repaired), limit=count, device="cpu", force=True,
                                    settings=settings)
        except auditor.RepairError as refused:  # nothing written: the model stays as it was (its ASR counts as not halved)
            return {**out, "refused": str(refused), "accuracy": baseline["accuracy"], "asr": baseline["asr"],
                    "acc_drop_points": 0.0, "target_drop_points": 0.0, "unlearned": False, "unlearned_class_drop_points": None,
                    "unlearning_cause": None, "filtered": None}
        outcome = report.repair.to_dict()
        after = _evaluate(str(repaired), entry)
        out.update(accuracy=after.accuracy, asr=after.attack_success_rate,
                   acc_drop_points=zoo.points_lost(baseline["accuracy"], after.accuracy),
                   target_drop_points=zoo.points_lost(baseline.get("target_accuracy"), after.target_accuracy),
                   unlearned=bool((outcome.get("unlearning") or {}).get("applied")),
                   unlearned_class_drop_points=_unlearned_class_drop(entry, outcome, str(repaired)),
                   unlearning_cause=(outcome.get("unlearning") or {}).get("cause"),
                   filtered=_filter_applied(outcome))
    return out


def _channel_score(report, settings: Settings) -> float | None:
    """The paper's model-level channel suspicion: the largest layer score (mean of a layer's top channel scores) over
    the prunable layers, as a candidate detector feature (issue 28: does it tell backdoored from clean?)."""
    import numpy as np

    from auditor.detect.channels import layer_score

    scores = [layer_score(values, settings.channels.top_fraction) for layer in report.layers if layer.prunable
              for values in [np.array([r.score for r in layer.records if np.isfinite(r.score)])] if len(values)]
    return max(scores) if scores else None


def _unlearned_class_drop(entry: dict, repair: dict, repaired: str) -> float | None:
    """Points of accuracy lost on the test samples of the class head unlearning lowered (the
    suspected target, right or wrong, on clean models too), or None when nothing was unlearned.
    `repair`: the report's repair as a dict (`RepairOutcome.to_dict()`)."""
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
    when it ran on a verdict under the threshold), else None (`repair` as in `_unlearned_class_drop`)."""
    for name in ("notch", "occlusion"):
        entry = repair.get(name) or {}
        if entry.get("applied"):
            return name + (" (weak)" if entry.get("weak") else "")
    return None


def _evaluate(model: str, entry: dict):
    """ACC on the test set, ASR on the triggered set (and the target class's ACC); an all-to-all attack's success is
    the share of triggered samples sent to their own label + `all_to_all` (mod 10)."""
    import dataclasses

    import numpy as np

    import auditor

    layout = entry.get("layout", "nchw")
    if entry.get("all_to_all") and entry.get("triggered"):
        plain = auditor.evaluate(model, str(zoo.materialise(entry["test"], layout)), device="cpu")
        with np.load(zoo.materialise(entry["triggered"], layout)) as archive:
            x, y = archive["x"], archive["y"]
        with tempfile.TemporaryDirectory() as folder:
            shifted = Path(folder) / "shifted.npz"
            np.savez(shifted, x=x, y=(y + int(entry["all_to_all"])) % 10)
            success = auditor.evaluate(model, str(shifted), device="cpu").accuracy
        return dataclasses.replace(plain, attack_success_rate=success)
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
    parser.add_argument("--no-stratified", action="store_true",
                        help="leave out the extra draw with one sample of each class (after the disjoint sets)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.NAME=VALUE",
                        help="run a variant: the setting SECTION.NAME (auditor/settings.py) takes VALUE (repeatable)")
    parser.add_argument("--note", default=None, help="with --set: what the variant tries (BENCHMARKS.md lists it)")
    parser.add_argument("--zoo", type=Path, default=None,
                        help="another zoo folder (its manifest.json), e.g. models/zoo_rgb: a family the method was never "
                             "tuned on; results go to bench/results/verdict_sets-<folder>.json")
    args = parser.parse_args(argv)
    if args.sets < 1 or args.n < 1:
        parser.error("--sets and --n must be positive")
    if args.note is not None and not args.overrides:
        parser.error("--note describes a variant: it goes with --set")
    try:
        settings = variant_settings(args.overrides)  # the variant's run: passed to every audit and repair
    except SettingsError as exc:
        parser.error(f"--set: {exc}")
    output = variant_path(args.overrides) if args.overrides else OUTPUT
    if args.zoo is not None:
        if args.overrides:
            parser.error("--zoo measures the shipped method: no --set")
        output = zoo.RESULTS / f"verdict_sets-{args.zoo.resolve().name}.json"
    entries = zoo.load_entries() if args.zoo is None else zoo.load_entries(args.zoo.resolve(), include_example=False)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory() as folder:
        for entry in entries:
            if zoo.pool_size(entry["clean_pool"]) < (args.sets + (0 if args.no_stratified else 1)) * args.n:
                continue
            before = None
            if not args.no_repair:
                evaluated = _evaluate(entry["file"], entry)
                before = {"accuracy": evaluated.accuracy, "asr": evaluated.attack_success_rate,
                          "target_accuracy": evaluated.target_accuracy}
            sets = [audit_set(entry, k * args.n, args.n, Path(folder), not args.no_repair, before, settings)
                    for k in range(args.sets)]
            if not args.no_stratified:
                sets.append(audit_set(entry, "stratified", args.n, Path(folder), not args.no_repair, before, settings,
                                      after=args.sets * args.n))
            kind = "clean" if entry.get("attack", "clean") in ("clean", None) else "backdoored"
            models.append({"name": entry["name"], "kind": kind, "attack": entry.get("attack"), "target": entry.get("target"),
                           "seed": entry.get("seed"), "architecture": entry.get("architecture"),
                           "dataset": entry.get("dataset"), "baseline": before,
                           "sets": sets})
            print(f"  {entry['name']}: " + " ".join(f"{s['score']:.2f}" for s in sets), flush=True)
    given = sys.argv[1:] if argv is None else argv
    result = {"command": " ".join([".venv/bin/python -m bench.verdict", shlex.join(given)]).strip(),
              "sets": args.sets, "n": args.n, "seconds": time.perf_counter() - started, "constants": constants(settings),
              "models": models}
    if args.overrides:
        result.update(overrides=args.overrides, note=args.note)
    zoo.save_json(output, result)
    print(f"verdict: {len(models)} models x {args.sets} sets -> {output.relative_to(zoo.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
