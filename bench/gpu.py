"""CUDA against CPU on one machine: the same audits and repairs under both providers.

    python -m bench.gpu [--models 'cnn*,resnet*'] [--n 10,100] [--anp] [--output bench/results/gpu.json]

For every selected zoo model and N, `auditor.audit` then `auditor.repair` run under
`--device cuda` and `--device cpu` (after one untimed warm-up of each), a plain
onnxruntime session classifies the same N samples, as the speed baseline, and ANP
(bench/anp.py, with `--anp`) runs on PyTorch's CUDA and CPU devices on the same labelled
samples, so the time ratio to the baseline is also taken on the GPU. Records wall times,
and whether the two providers reach the same verdict, suspected target, zeroed channels
and head correction (GPU kernels round differently, so scores may differ in the last
digits). Fails with one line when onnxruntime cannot use CUDA here. This is the GPU check
of the project: CI has no GPU and never runs it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import auditor
from auditor.errors import AuditorError
from auditor.io import model, runtime
from bench import zoo
from bench.verdict import constants

OUTPUT = zoo.RESULTS / "gpu.json"


def plain_seconds(path: str, samples: np.ndarray, provider: runtime.Provider, repeats: int = 5) -> float:
    """Median wall time of classifying `samples` in one run through a plain session (after a warm-up)."""
    session = runtime.session(model.load(path).proto, provider)
    feed = session.get_inputs()[0]
    step = 1 if feed.shape[0] == 1 else len(samples)

    def once() -> None:
        for k in range(0, len(samples), step):
            session.run(None, {feed.name: samples[k:k + step]})

    once()
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        once()
        times.append(time.perf_counter() - tick)
    return float(np.median(times))


def anp_seconds(entry: dict, data: Path, device: str, folder: Path) -> float | None:
    """Wall time of ANP on PyTorch's `device`, or None where it cannot run (onnx2torch, no labels)."""
    from bench import anp

    try:
        return anp.run_anp(entry["file"], str(data), str(folder / f"{entry['name']}-anp-{device}.onnx"), device=device).seconds
    except anp.Unavailable:
        return None


def one(entry: dict, n: int, device: str, folder: Path, with_anp: bool) -> dict:
    data = zoo.materialise(entry["clean_pool"], entry.get("layout", "nchw"), first=n)  # labelled: ANP needs y
    with np.load(data) as archive:
        x = archive["x"]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)  # as auditor.io.data reads images stored as bytes
    tick = time.perf_counter()
    audited = auditor.audit(entry["file"], str(data), limit=n, device=device)
    audit_s = time.perf_counter() - tick
    tick = time.perf_counter()
    repaired = auditor.repair(entry["file"], str(data), str(folder / f"{entry['name']}-{n}-{device}.onnx"), limit=n,
                              device=device, force=True)
    repair_s = time.perf_counter() - tick
    outcome = repaired.repair.to_dict()
    unlearning = outcome.get("unlearning") or {}
    verdict = audited.verdict
    return {
        "provider": audited.provider["name"],
        "audit_s": audit_s, "repair_s": repair_s,
        "plain_s": plain_seconds(entry["file"], x, runtime.select_provider(device)),
        "score": verdict.score, "suspicious": verdict.suspicious, "basis": verdict.basis, "target": verdict.target,
        "zeroed": outcome["zeroed"], "unlearned": bool(unlearning.get("applied")),
        "anp_s": anp_seconds(entry, data, device, folder) if with_anp else None,
    }


def accelerator() -> str | None:
    """The GPU's name as PyTorch reports it, where PyTorch with CUDA is installed."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no PyTorch, or no CUDA build of it: the record says so by None
        return None


def _ratios(rows: list[dict], device: str) -> list[float]:
    """ANP's time over auditor's (audit + repair) on `device`, per row where ANP ran."""
    return [r[device]["anp_s"] / (r[device]["audit_s"] + r[device]["repair_s"]) for r in rows if r[device].get("anp_s")]


def write(path: Path, argv: list[str] | None, provider: runtime.Provider, sizes: list[int], rows: list[dict]) -> dict:
    """Summarise the rows per N and write them all (after every model, so a cut-off run keeps what it measured)."""
    summary = {}
    for n in sizes:
        chosen = [r for r in rows if r["n"] == n and "error" not in r]
        if chosen:
            ratios = {device: _ratios(chosen, device) for device in ("cuda", "cpu")}
            summary[str(n)] = {
                **{f"median_anp_{device}_s": float(np.median([r[device]["anp_s"] for r in chosen if r[device].get("anp_s")]))
                   for device in ("cuda", "cpu") if ratios[device]},
                **{f"median_anp_ratio_{device}": float(np.median(ratios[device])) for device in ("cuda", "cpu") if ratios[device]},
                "models": len(chosen),
                "median_cuda_s": float(np.median([r["cuda"]["audit_s"] + r["cuda"]["repair_s"] for r in chosen])),
                "median_cpu_s": float(np.median([r["cpu"]["audit_s"] + r["cpu"]["repair_s"] for r in chosen])),
                "median_plain_cuda_s": float(np.median([r["cuda"]["plain_s"] for r in chosen])),
                "median_plain_cpu_s": float(np.median([r["cpu"]["plain_s"] for r in chosen])),
                "same_everything": sum(all(r["same"].values()) for r in chosen),
                "max_score_difference": float(max(r["score_difference"] for r in chosen)),
                "errors": sum(1 for r in rows if r["n"] == n and "error" in r),
            }
    zoo.save_json(path, {
        "command": "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "provider": provider.name, "onnxruntime": ort.__version__, "python": platform.python_version(),
        "accelerator": accelerator(), "cpus": os.cpu_count(), "constants": constants(),
        "summary": summary, "rows": rows})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated name globs (default: every zoo model)")
    parser.add_argument("--n", default="10,100")
    parser.add_argument("--anp", action="store_true", help="also time ANP on PyTorch's CUDA and CPU devices")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    cuda = runtime.select_provider("auto")
    print(f"provider: {cuda.name} ({cuda.reason}); onnxruntime {ort.__version__}", file=sys.stderr)
    if cuda.name != "CUDAExecutionProvider":
        print("bench.gpu: onnxruntime cannot use CUDA here; nothing measured", file=sys.stderr)
        return 2
    entries = zoo.select(zoo.load_entries(), args.models)
    sizes = [int(v) for v in args.n.split(",") if v.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for device in ("cuda", "cpu"):  # warm-up: library loading and kernel selection stay out of the timings
            one(entries[0], sizes[0], device, folder, args.anp)
        for n in sizes:  # every model at the first N before the next N: a run cut short keeps whole sizes
            for entry in entries:
                if zoo.pool_size(entry["clean_pool"]) < n:
                    continue
                try:
                    pair = {device: one(entry, n, device, folder, args.anp) for device in ("cuda", "cpu")}
                except AuditorError as exc:  # recorded, not fatal: one model's failure must not hide the others
                    rows.append({"name": entry["name"], "n": n, "error": f"{type(exc).__name__}: {exc}"})
                    print(f"{entry['name']} N={n}: error: {exc}", file=sys.stderr)
                    write(args.output, argv, cuda, sizes, rows)
                    continue
                same = {key: pair["cuda"][key] == pair["cpu"][key]
                        for key in ("suspicious", "basis", "target", "zeroed", "unlearned")}
                rows.append({"name": entry["name"], "n": n, **pair, "same": same,
                             "score_difference": abs(pair["cuda"]["score"] - pair["cpu"]["score"])})
                anp_times = "".join(f", ANP {device} {pair[device]['anp_s']:.2f} s" for device in ("cuda", "cpu") if pair[device]["anp_s"])
                print(f"{entry['name']} N={n}: cuda {pair['cuda']['audit_s'] + pair['cuda']['repair_s']:.2f} s, "
                      f"cpu {pair['cpu']['audit_s'] + pair['cpu']['repair_s']:.2f} s{anp_times}, same {all(same.values())}",
                      file=sys.stderr)
                write(args.output, argv, cuda, sizes, rows)
    summary = write(args.output, argv, cuda, sizes, rows)
    for n, line in summary.items():
        print(f"N={n}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
