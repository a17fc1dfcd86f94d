"""The verdict's probability: calibrated on the zoo, judged on families the fit never saw.

    .venv/bin/python -m bench.calibrate

Reads the verdicts bench.verdict recorded (bench/results/verdict_sets.json and, when there,
verdict_sets-zoo_rgb.json and verdict_sets-zoo_families.json: every (model, draw) pair's verdict score) and fits the map from the verdict
score to the chance the model is backdoored, p = 1 / (1 + exp(-(slope * score + intercept))), by
class-balanced logistic regression (a prior of one half, as NIST TrojAI's test rounds hold; for a
prior q the odds scale by q / (1 - q)). Then, holding out one architecture, one dataset and one
attack at a time (and each zoo built after the constants were chosen, as a whole), it refits on the rest and scores the held-out pairs:
ROC AUC, cross-entropy, and the true- and false-positive rates at the shipped threshold and at the
threshold the fold's own data puts at a false-positive rate of at most 5%. Writes
bench/results/calibration.json; `bench.report` shows it in BENCHMARKS.md. The shipped calibration
(`verdict.calibration` in auditor/settings.py) is the fit on the grey-scale zoo alone, so the later
zoos stay families it never saw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from auditor.settings import Settings
from bench import zoo
from bench.report import roc_auc

SOURCES = {"zoo": "verdict_sets.json", "zoo_rgb": "verdict_sets-zoo_rgb.json", "zoo_families": "verdict_sets-zoo_families.json"}
MAX_FPR = 0.05  # the false-positive rate the verdict threshold is chosen for


def pairs() -> list[dict]:
    """Every assessed (model, draw) pair bench.verdict recorded: its families, kind and verdict score."""
    rows = []
    for source, name in SOURCES.items():
        path = zoo.RESULTS / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for model in data["models"]:
            dataset = model.get("dataset") or ("fashion-mnist" if "fmnist" in model["name"] else
                                               "emoji" if source == "zoo_rgb" else "mnist")
            for draw in model["sets"]:
                if not draw.get("assessed", True):
                    continue  # not assessed (runs before bench.verdict recorded it had none on the zoo)
                rows.append({"source": source, "model": model["name"], "architecture": model["architecture"],
                             "dataset": dataset, "attack": model["attack"], "backdoored": model["kind"] == "backdoored",
                             "draw": draw["start"], "score": float(draw["score"]),
                             "channels": None if draw.get("channels") is None else float(draw["channels"])})
    return rows


def fit(scores: np.ndarray, backdoored: np.ndarray, ridge: float = 1e-3) -> tuple[float, float]:
    """(slope, intercept) of the class-balanced logistic regression of `backdoored` on `scores` (Newton's method
    from zero, a small ridge on the slope so that separable data still has an answer): deterministic."""
    x = np.stack([scores, np.ones_like(scores)], axis=1)
    y = backdoored.astype(np.float64)
    positives = max(1, int(y.sum()))
    negatives = max(1, len(y) - int(y.sum()))
    weight = np.where(y > 0, 0.5 / positives, 0.5 / negatives)
    theta = np.zeros(2)
    penalty = np.diag([ridge, 0.0])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        gradient = x.T @ (weight * (p - y)) + penalty @ theta
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def probability(scores: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(slope * np.asarray(scores) + intercept)))


def cross_entropy(p: np.ndarray, backdoored: np.ndarray, balanced: bool) -> float:
    """Mean binary cross-entropy (nats), probabilities clipped to [1e-6, 1 - 1e-6]; `balanced`: each kind weighs half."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    loss = -np.where(backdoored, np.log(p), np.log(1 - p))
    if not balanced or backdoored.all() or not backdoored.any():
        return float(loss.mean())
    return float(0.5 * loss[backdoored].mean() + 0.5 * loss[~backdoored].mean())


def fpr_threshold(clean_scores: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """The lowest threshold on the score at which at most `max_fpr` of `clean_scores` reach it (flagged: score >=
    threshold), just above the highest clean score that must stay under it."""
    ordered = np.sort(clean_scores)[::-1]
    allowed = math.floor(max_fpr * len(ordered))
    if allowed >= len(ordered):
        return 0.0
    return float(np.nextafter(ordered[allowed], np.inf))


def judge(train: list[dict], test: list[dict], shipped: float) -> dict:
    """Fit on `train`, score `test`: the held-out predictions, each with its probability and both thresholds' calls."""
    scores = np.array([r["score"] for r in train])
    kinds = np.array([r["backdoored"] for r in train])
    slope, intercept = fit(scores, kinds)
    chosen = fpr_threshold(scores[~kinds])
    held = np.array([r["score"] for r in test])
    p = probability(held, slope, intercept)
    return {"slope": slope, "intercept": intercept, "threshold": chosen,
            "held_out": [{**r, "probability": float(q), "flagged_shipped": bool(r["score"] >= shipped),
                          "flagged_chosen": bool(r["score"] >= chosen)} for r, q in zip(test, p)]}


def summary(held_out: list[dict]) -> dict:
    """ROC AUC, cross-entropy (plain and class-balanced), TPR and FPR at both thresholds over held-out pairs."""
    kinds = np.array([r["backdoored"] for r in held_out], dtype=bool)
    scores = np.array([r["score"] for r in held_out])
    p = np.array([r["probability"] for r in held_out])

    def rate(key: str, which: np.ndarray) -> float | None:
        return float(np.mean([r[key] for r, w in zip(held_out, which) if w])) if which.any() else None

    return {"pairs": len(held_out), "backdoored": int(kinds.sum()), "clean": int((~kinds).sum()),
            "auc": roc_auc(scores[kinds].tolist(), scores[~kinds].tolist()),
            "cross_entropy": cross_entropy(p, kinds, balanced=False) if len(p) else None,
            "cross_entropy_balanced": cross_entropy(p, kinds, balanced=True) if len(p) else None,
            "tpr_shipped": rate("flagged_shipped", kinds), "fpr_shipped": rate("flagged_shipped", ~kinds),
            "tpr_chosen": rate("flagged_chosen", kinds), "fpr_chosen": rate("flagged_chosen", ~kinds)}


def leave_one_out(rows: list[dict], key: str, shipped: float) -> dict:
    """Every family of `key` held out in turn (for "attack": the backdoored models of one attack; the clean models
    stay in training, so that fold measures true positives only)."""
    folds = {}
    for family in sorted({r[key] for r in rows if key != "attack" or r["backdoored"]}):
        def out(r: dict, family: str = family) -> bool:
            return r[key] == family and (key != "attack" or r["backdoored"])
        judged = judge([r for r in rows if not out(r)], [r for r in rows if out(r)], shipped)
        folds[family] = {"slope": judged["slope"], "intercept": judged["intercept"], "threshold": judged["threshold"],
                         **summary(judged["held_out"]), "held_out": judged["held_out"]}
    pooled = [r for fold in folds.values() for r in fold["held_out"]]
    return {"folds": {k: {n: v for n, v in f.items() if n != "held_out"} for k, f in folds.items()},
            "pooled": summary(pooled)}


def channel_detector(rows: list[dict]) -> dict:
    """The paper's channel suspicion as a detector (issue 28): per zoo that recorded it, the ROC AUC of the model's
    top layer score (bench.verdict's `channels`: the largest mean of a layer's top channel scores) between
    backdoored and clean pairs, beside the verdict score's on the same pairs."""
    out = {}
    for source in sorted({r["source"] for r in rows}):
        chosen = [r for r in rows if r["source"] == source and r["channels"] is not None]
        if not chosen:
            continue
        kinds = np.array([r["backdoored"] for r in chosen])
        channels = np.array([r["channels"] for r in chosen])
        scores = np.array([r["score"] for r in chosen])
        out[source] = {"pairs": len(chosen), "auc_channels": roc_auc(channels[kinds].tolist(), channels[~kinds].tolist()),
                       "auc_verdict": roc_auc(scores[kinds].tolist(), scores[~kinds].tolist())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    rows = pairs()
    if not rows:
        print("no bench.verdict results: run `.venv/bin/python -m bench.verdict` first", file=sys.stderr)
        return 2
    settings = Settings().verdict
    shipped = settings.probe_threshold
    grey = [r for r in rows if r["source"] == "zoo"]
    unseen = [r for r in rows if r["source"] != "zoo"]
    slope, intercept = fit(np.array([r["score"] for r in grey]), np.array([r["backdoored"] for r in grey]))
    result = {"command": ".venv/bin/python -m bench.calibrate", "shipped": {"slope": settings.calibration[0],
              "intercept": settings.calibration[1], "threshold": shipped},
              "fit_on_zoo": {"slope": slope, "intercept": intercept,
                             "threshold_for_fpr": fpr_threshold(np.array([r["score"] for r in grey if not r["backdoored"]]))},
              "views": {}}
    if unseen:  # the zoos built after the constants were chosen, each judged by the fit on the grey zoo
        folds = {}
        for source in sorted({r["source"] for r in unseen}):
            judged = judge(grey, [r for r in unseen if r["source"] == source], shipped)
            folds[source] = {**{k: judged[k] for k in ("slope", "intercept", "threshold")}, **summary(judged["held_out"]),
                             "held_out": judged["held_out"]}
        pooled = [r for fold in folds.values() for r in fold.pop("held_out")]
        result["views"]["zoos never tuned on (fit on the grey zoo)"] = {"folds": folds, "pooled": summary(pooled)}
    for key in ("architecture", "dataset", "attack"):
        result["views"][f"leave one {key} out"] = leave_one_out(rows, key, shipped)
    result["channels"] = channel_detector(rows)
    zoo.save_json(zoo.RESULTS / "calibration.json", result)
    for view, got in result["views"].items():
        pooled = got["pooled"]
        print(f"{view}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in pooled.items()))
    print(f"fit on the grey zoo: slope {slope:.4f}, intercept {intercept:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
