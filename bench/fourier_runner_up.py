"""The experiment behind the Fourier probe's score and `verdict.fourier_threshold` (issue 28).

    .venv/bin/python -m bench.fourier_runner_up --zoo models/zoo            # measure one zoo (repeat per zoo)
    .venv/bin/python -m bench.fourier_runner_up                             # choose and judge from what was measured

Measure: for every model of a zoo and the draws `bench.verdict` audits (five disjoint sets of 10 clean samples and the
stratified one), every class's lift under the shipped Fourier bases (its largest share at one basis minus its
90th-percentile share) and the patch search's score, as the scan computes them; the corruption probe's score is read
from the zoo's `bench.verdict` result file (the probe does not depend on either). Writes
bench/results/fourier_runner_up-<zoo>.json.

Choose: the verdict is max(probe share, patch score x 0.6 / 0.9, Fourier statistic x 0.6 / theta), capped at 1, for two
statistics: the target's lift (the score before 2026-12-07) and its lift minus the runner-up class's lift (shipped
since). For each, theta is chosen on the grey-scale zoo alone (largest TPR - 2 x FPR at the verdict threshold 0.6, ties
to the smaller theta) and judged on the RGB and families zoos; then with one architecture, dataset or attack left out of
the choice over all zoos. Writes bench/results/fourier_runner_up.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from auditor.capture import classifier
from auditor.detect import fourier, patch
from auditor.detect.images import first_images, to_images
from auditor.graph.index import GraphIndex
from auditor.io import data, model, runtime
from auditor.settings import Settings
from bench import zoo
from bench.report import roc_auc

SHIPPED = Settings()
DRAWS = (0, 10, 20, 30, 40, "stratified")
ZOOS = {"zoo": "verdict_sets.json", "zoo_rgb": "verdict_sets-zoo_rgb.json", "zoo_families": "verdict_sets-zoo_families.json"}
THETAS = tuple(round(0.3 + 0.05 * k, 2) for k in range(25))  # 0.3 .. 1.5
STATISTICS = ("lift", "separation")
OUTPUT = zoo.RESULTS / "fourier_runner_up.json"


def class_lifts(samples: data.Samples, scores: np.ndarray, classify) -> dict[int, float]:
    """Every candidate class's lift under the shipped bases and amplitude (as `fourier.search` computes it)."""
    settings = SHIPPED.fourier
    name, axes, samples, scores = first_images(samples, scores, settings.max_samples)
    count, clean = len(samples), scores.argmax(axis=1)
    original = samples.inputs[name]
    images = to_images(original, axes)
    low, high = float(original.min()), float(original.max())
    keys = fourier.frequencies(settings.fmax, settings.phases)
    step = max(1, settings.chunk // max(1, images[0].size * count))
    predicted = []
    for first in range(0, len(keys), step):
        moved = fourier.perturbed(images, fourier.render(keys[first:first + step], *images.shape[1:3]),
                                  settings.amplitudes[0], low, high)
        out = np.asarray(classify(fourier.with_images(samples, name, axes, moved)))
        predicted.append(out.reshape(len(moved), -1).argmax(axis=1).reshape(-1, count))
    labels = np.concatenate(predicted)
    return {c: fourier.lift(fourier.class_shares(labels, clean, c), settings.quantile)
            for c in range(scores.shape[1]) if (clean != c).sum() >= SHIPPED.verdict.min_others}


def measure(folder: Path) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for entry in zoo.load_entries(folder.resolve(), include_example=False):
            if zoo.pool_size(entry["clean_pool"]) < 60:
                continue
            loaded = model.load(entry["file"])
            specs = data.input_specs(loaded.proto)
            classify = classifier(loaded.proto, GraphIndex(loaded.proto), runtime.select_provider("cpu"),
                                  data.batch_size(specs, 256))
            for start in DRAWS:
                path = (zoo.stratified_set(entry, 10, Path(scratch), 50) if start == "stratified"
                        else zoo.sample_set(entry, start, 10, Path(scratch)))
                samples = data.load(path, specs, 10)
                scores = np.asarray(classify(samples)).reshape(10, -1)
                found = patch.search(samples, scores, classify, SHIPPED.patch, SHIPPED.verdict.min_others)
                rows.append({"name": entry["name"], "attack": entry.get("attack") or "clean", "target": entry.get("target"),
                             "architecture": entry.get("architecture"), "dataset": entry.get("dataset"), "start": start,
                             "patch": None if found is None else found.summary(),
                             "fourier": {str(c): {"lift": v} for c, v in class_lifts(samples, scores, classify).items()}})
            print(entry["name"], flush=True)
    return rows


def pairs() -> list[dict]:
    """Every measured (model, draw), with its zoo and the corruption probe's score from the zoo's bench.verdict file."""
    out = []
    for name, verdicts in ZOOS.items():
        path = zoo.RESULTS / f"fourier_runner_up-{name}.json"
        if not path.exists():
            continue
        recorded = {m["name"]: {str(s["start"]): s for s in m["sets"]}
                    for m in json.loads((zoo.RESULTS / verdicts).read_text())["models"]}
        for row in json.loads(path.read_text())["rows"]:
            found = recorded.get(row["name"], {}).get(str(row["start"]))
            if found is not None:
                out.append({**row, "zoo": name, "corruption": found["detectors"]["corruption"] or 0.0})
    return out


def statistic(row: dict, kind: str) -> float:
    lifts = sorted((v["lift"] for v in row["fourier"].values()), reverse=True)
    if not lifts:
        return 0.0
    return lifts[0] - (lifts[1] if kind == "separation" and len(lifts) > 1 else 0.0)


def verdict(row: dict, kind: str, theta: float) -> float:
    patched = max(0.0, row["patch"]["score"]) * SHIPPED.verdict.patch_reach if row["patch"] else 0.0
    return max(row["corruption"], patched, min(1.0, max(0.0, statistic(row, kind)) * SHIPPED.verdict.probe_threshold / theta))


def rates(rows: list[dict], kind: str, theta: float) -> dict:
    backdoored = np.array([r["attack"] != "clean" for r in rows])
    scores = np.array([verdict(r, kind, theta) for r in rows])
    flagged = scores >= SHIPPED.verdict.probe_threshold
    return {"tpr": float(flagged[backdoored].mean()) if backdoored.any() else None,
            "fpr": float(flagged[~backdoored].mean()) if (~backdoored).any() else None,
            "auc": roc_auc(list(scores[backdoored]), list(scores[~backdoored])), "pairs": [int(backdoored.sum()), int((~backdoored).sum())]}


def choose(rows: list[dict], kind: str) -> float:
    def value(theta: float) -> float:
        found = rates(rows, kind, theta)
        return (found["tpr"] or 0.0) - 2 * (found["fpr"] or 0.0)
    return max(THETAS, key=lambda theta: (round(value(theta), 12), -theta))


def judge(rows: list[dict]) -> dict:
    out: dict = {}
    for kind in STATISTICS:
        grey = [r for r in rows if r["zoo"] == "zoo"]
        theta = choose(grey, kind)
        views = {"curve": {str(t): {z: rates([r for r in rows if r["zoo"] == z], kind, t) for z in ZOOS} for t in THETAS},
                 "fit on the grey zoo": {"theta": theta, **{z: rates([r for r in rows if r["zoo"] == z], kind, theta)
                                                           for z in ZOOS if z != "zoo"}}}
        for key in ("architecture", "dataset", "attack"):
            held = []
            for family in sorted({r[key] for r in rows if r[key] not in (None, "clean")}):
                chosen = choose([r for r in rows if r[key] != family], kind)
                held += [{**r, "theta": chosen} for r in rows if r[key] == family]
            backdoored = np.array([r["attack"] != "clean" for r in held])
            scores = np.array([verdict(r, kind, r["theta"]) for r in held])
            flagged = scores >= SHIPPED.verdict.probe_threshold
            views[f"leave one {key} out"] = {
                "tpr": float(flagged[backdoored].mean()), "fpr": float(flagged[~backdoored].mean()) if (~backdoored).any() else None,
                "auc": roc_auc(list(scores[backdoored]), list(scores[~backdoored])), "pairs": [int(backdoored.sum()), int((~backdoored).sum())]}
        out[kind] = views
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fourier_runner_up", description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None, help="measure this zoo folder; without it, choose and judge")
    args = parser.parse_args(argv)
    if args.zoo is not None:
        rows = measure(args.zoo)
        command = f".venv/bin/python -m bench.fourier_runner_up --zoo {args.zoo}"
        zoo.save_json(zoo.RESULTS / f"fourier_runner_up-{args.zoo.resolve().name}.json", {"command": command, "rows": rows})
        return 0
    result = {"command": ".venv/bin/python -m bench.fourier_runner_up", **judge(pairs())}
    zoo.save_json(OUTPUT, result)
    for kind in STATISTICS:
        fit = result[kind]["fit on the grey zoo"]
        print(f"{kind}: theta {fit['theta']} on the grey zoo; " + "; ".join(
            f"{z} TPR {fit[z]['tpr']:.1%} FPR {fit[z]['fpr']:.1%} AUC {fit[z]['auc']:.3f}" for z in ZOOS if z != "zoo"))
        for view in ("leave one architecture out", "leave one dataset out", "leave one attack out"):
            v = result[kind][view]
            fpr = "–" if v["fpr"] is None else f"{v['fpr']:.1%}"
            auc = "–" if v["auc"] is None else f"{v['auc']:.3f}"
            print(f"  {view}: TPR {v['tpr']:.1%} FPR {fpr} AUC {auc} (pairs {v['pairs'][0]} / {v['pairs'][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
