"""Experiment, not shipped: would a Fourier-basis probe add to the verdict?

    .venv/bin/python -m bench.fourier_probe [--sets 5] [--n 10]

The corruption probe adds i.i.d. noise and blur; SIG and blended triggers are smooth, global
patterns that such noise barely touches. This experiment adds every Fourier basis image
cos(2 pi (u i / H + v j / W) + phase) (|u|, |v| <= FMAX, four phases) at a few amplitudes to the
clean samples (as in Yin et al. 2019, "A Fourier perspective on model robustness") and asks
whether one basis sends the samples to one class. Clean models have natural sinks that absorb
many bases (Fashion-MNIST's "bag"), so the statistic is the largest share a class takes at one
basis minus that class's 90th-percentile share over all bases.

For every zoo model and the same disjoint sample sets as `bench.verdict`, it combines the shipped
verdict score (from bench/results/verdict_sets.json) with the Fourier statistic as
max(shipped, statistic * 0.6 / theta) and prints the verdict AUC per half, for several frequency
caps, amplitude sets and theta. Writes bench/results/fourier_probe.json. Needs bench.verdict's
results first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np

from auditor import model, runtime
from bench import zoo
from bench.report import roc_auc

AMPLITUDES = (0.05, 0.1, 0.15)  # of the clean value range
FMAX = (4, 7, 14)  # frequency caps compared; 14 is every frequency of a 28-wide image
THETAS = (0.7, 0.8, 0.9)
OUTPUT = zoo.RESULTS / "fourier_probe.json"


def bases(height: int, width: int, fmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Fourier basis images [B, H, W] with |u|, |v| <= fmax and four phases, and their largest |frequency|."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    images, reach = [], []
    for u, v in itertools.product(range(fmax + 1), range(-fmax, fmax + 1)):
        if u == 0 and v <= 0:
            continue  # the constant, and the mirror images of u = 0
        for phase in (0.0, np.pi / 2, np.pi, 3 * np.pi / 2):
            images.append(np.cos(2 * np.pi * (u * i / height + v * j / width) + phase))
            reach.append(max(u, abs(v)))
    return np.stack(images).astype(np.float32), np.array(reach)


def class_shares(predicted: np.ndarray, clean: np.ndarray, classes: int) -> np.ndarray:
    """[B, K]: per basis, the share of the samples not in class c when clean that it sends to c."""
    shares = np.zeros((predicted.shape[0], classes))
    for c in range(classes):
        others = clean != c
        if others.sum() >= 3:
            shares[:, c] = (predicted[:, others] == c).mean(axis=1)
    return shares


def statistic(shares: np.ndarray) -> tuple[float, int]:
    """max over classes of (largest share at one basis - 90th-percentile share), and that class."""
    lift = shares.max(axis=0) - np.quantile(shares, 0.9, axis=0)
    return float(lift.max()), int(lift.argmax())


def classifier(entry: dict):
    session = runtime.session(model.load(entry["file"]).proto, runtime.select_provider("cpu"))
    feed = session.get_inputs()[0]
    output = entry.get("output") or session.get_outputs()[0].name
    step = 1 if feed.shape[0] == 1 else 512

    def classify(x: np.ndarray) -> np.ndarray:
        x = zoo.to_layout(x, entry.get("layout", "nchw"))
        out = [session.run([output], {feed.name: x[k:k + step]})[0] for k in range(0, len(x), step)]
        return np.concatenate(out).reshape(len(x), -1)

    return classify


def measure(entry: dict, sets: int, n: int) -> list[dict]:
    classify = classifier(entry)
    with np.load(entry["clean_pool"]) as archive:
        pool = archive["x"].astype(np.float32)
        if archive["x"].dtype == np.uint8:
            pool /= 255.0  # as auditor.data reads images stored as bytes
    span = float(pool.max() - pool.min()) or 1.0
    images, reach = bases(pool.shape[2], pool.shape[3], max(FMAX))
    rows = []
    for k in range(sets):
        x = pool[k * n:(k + 1) * n]
        scores = classify(x)
        clean, classes = scores.argmax(axis=1), scores.shape[1]
        row = {"set": k}
        for amplitude in AMPLITUDES:
            moved = np.clip(x[None] + amplitude * span * images[:, None, None], pool.min(), pool.max())
            predicted = classify(moved.reshape(-1, *x.shape[1:])).argmax(axis=1).reshape(len(images), len(x))
            shares = class_shares(predicted, clean, classes)
            for fmax in FMAX:
                row[f"{amplitude:g}@{fmax}"] = statistic(shares[reach <= fmax])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=5)
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args(argv)
    shipped = {m["name"]: m for m in json.loads((zoo.RESULTS / "verdict_sets.json").read_text())["models"]}
    results, start = {}, time.perf_counter()
    for entry in zoo.load_entries():
        if entry["name"] not in shipped:
            continue
        tick = time.perf_counter()
        results[entry["name"]] = measure(entry, args.sets, args.n)
        print(f"{entry['name']}: {time.perf_counter() - tick:.1f} s", file=sys.stderr)
    table = []
    for fmax, count, theta in itertools.product(FMAX, range(1, len(AMPLITUDES) + 1), THETAS):
        amplitudes = AMPLITUDES[:count]
        line = {"fmax": fmax, "amplitudes": list(amplitudes), "theta": theta}
        for half, seed in (("tuning", 0), ("held-back", 1)):
            aucs = []
            for k in range(args.sets):
                positives, negatives = [], []
                for name, rows in results.items():
                    if shipped[name]["seed"] != seed:
                        continue
                    fourier = max(rows[k][f"{a:g}@{fmax}"][0] for a in amplitudes)
                    score = max(shipped[name]["sets"][k]["score"], fourier * 0.6 / theta)
                    (negatives if shipped[name]["kind"] == "clean" else positives).append(score)
                aucs.append(roc_auc(positives, negatives))
            line[half] = {"auc_mean": float(np.mean(aucs)), "auc_first_set": aucs[0]}
        table.append(line)
    baseline = {}
    for half, seed in (("tuning", 0), ("held-back", 1)):
        aucs = [roc_auc([m["sets"][k]["score"] for m in shipped.values() if m["seed"] == seed and m["kind"] != "clean"],
                        [m["sets"][k]["score"] for m in shipped.values() if m["seed"] == seed and m["kind"] == "clean"])
                for k in range(args.sets)]
        baseline[half] = {"auc_mean": float(np.mean(aucs)), "auc_first_set": aucs[0]}
    OUTPUT.write_text(json.dumps({"command": "python -m bench.fourier_probe", "seconds": time.perf_counter() - start,
                                  "shipped": baseline, "combined": table,
                                  "models": {k: [{key: v for key, v in r.items()} for r in rows] for k, rows in results.items()}},
                                 indent=1, sort_keys=True) + "\n")
    print(f"shipped verdict: tuning {baseline['tuning']['auc_mean']:.3f}, held-back {baseline['held-back']['auc_mean']:.3f} "
          f"(first set {baseline['held-back']['auc_first_set']:.3f})")
    for line in sorted(table, key=lambda r: -r["tuning"]["auc_mean"]):
        print(f"fmax {line['fmax']:>2} amplitudes {','.join(f'{a:g}' for a in line['amplitudes']):<14} theta {line['theta']}: "
              f"tuning {line['tuning']['auc_mean']:.3f}  held-back {line['held-back']['auc_mean']:.3f} "
              f"(first set {line['held-back']['auc_first_set']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
