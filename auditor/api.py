"""The public entry points: audit (scan) and repair. Each composes the stages; none holds method."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from auditor.detect import evidence
from auditor.detect import scan as detection
from auditor.errors import ModelError
from auditor.io import model, runtime
from auditor.mitigation import plan as mitigation
from auditor.report import ChannelRecord, LayerRecord, Report
from auditor.settings import Settings
from auditor.version import __version__


def _report(found: detection.Scan, command: str, method: str, model_path, data_path, settings: Settings) -> Report:
    layers = []
    for unit in found.units:
        scored, unit_signals = found.suspicion[unit.name], found.signals[unit.name]
        records = tuple(
            ChannelRecord(channel=c, score=float(scored.score[c]),
                          signals={k: float(v[c]) for k, v in unit_signals.values.items()},
                          z={k: float(v[c]) for k, v in scored.z.items()})
            for c in range(unit.channels)
        )
        layers.append(LayerRecord(unit.name, unit.op, unit.output, unit.channels, unit.prunable, unit.head,
                                  unit.activation, unit.bn is not None, records))
    skipped = [{"unit": u.name, "reason": "classifier head: never pruned"} for u in found.units if u.head]
    skipped += [{"unit": u.name, "reason": "single channel"} for u in found.units if not u.head and u.channels <= 1]
    loaded, provider = found.loaded, found.provider
    return Report(
        command=command, tool_version=__version__, method=method,
        model={"path": str(model_path), "sha256": loaded.sha256, "ir_version": loaded.proto.ir_version,
               "opset": loaded.opset, "notes": list(loaded.notes), "kinds": found.kinds.to_dict()},
        data={"path": str(data_path), "samples": len(found.capture.scores), "statistics_samples": found.capture.measured,
              "preprocessing": found.samples.preprocessing,
              **detection.coverage(found.capture)},
        provider={"name": provider.name, "reason": provider.reason, "threads": provider.threads},
        verdict=found.verdict, layers=layers, skipped=skipped, channel_threshold=settings.channels.threshold,
        settings=settings.differences(), timings=dict(found.timings),
        evidence=evidence.collect(found, settings),
    )


def audit(model_path: str | Path, data_path: str | Path, limit: int | None = None, method: str = "sus",
          device: str = "auto", threshold: float | None = None, patch_search: bool = True,
          fourier_probe: bool = True, threads: int | None = None, notice: Callable[[str], None] | None = None,
          settings: Settings | None = None, input_kind: str | None = None, output_kind: str | None = None,
          progress: detection.Progress | None = None) -> Report:
    """Score every channel of every hidden layer and decide whether the model looks backdoored.

    With `sus`, the verdict comes from the corruption probe and, on image inputs, unless they are
    switched off, the patch search and the Fourier probe (thousands of single-sample forward
    passes). `notice` (a message -> None) hears, before they start, when they are forecast to take
    more than `settings.run.notice_seconds`. `progress` (stage, done, total) hears each stage and its forward passes."""
    settings = settings or Settings()
    provider = runtime.select_provider(device, threads)
    found = detection.scan(model_path, data_path, limit, method, provider, settings, threshold, patch_search, fourier_probe, notice,
                           input_kind, output_kind, progress, keep_samples=False)
    return _report(found, "scan", method, model_path, data_path, settings)


def repair(model_path: str | Path, data_path: str | Path, output: str | Path, limit: int | None = None,
           method: str = "sus", device: str = "auto", threshold: float | None = None,
           max_prune: int | float | None = None, force: bool = False, bound: bool | None = None, zero: bool | None = None,
           unlearning: bool | None = None, patch_search: bool = True, fourier_probe: bool = True, notch: bool | None = None,
           occlude: bool | None = None, threads: int | None = None, notice: Callable[[str], None] | None = None,
           settings: Settings | None = None, input_kind: str | None = None, output_kind: str | None = None,
           progress: detection.Progress | None = None) -> Report:
    """Repair the model as far as the fidelity guard allows and write it (atomically).

    `sus` caps every hidden channel at a guard-calibrated multiple of its clean maximum (activation
    bounds); when the Fourier probe or the patch search gives the verdict, it removes the found
    pattern from the input (a notch or an occlusion); when a probe or search flags the model, it
    refits the head's row for the suspected target (head unlearning). It zeroes ranked channels
    only when asked (`zero`, a channel `threshold` or `max_prune`). The baselines `clp` and `fp`
    zero ranked channels and never bound, as published. Limits: `settings.repair`."""
    settings = settings or Settings()
    output = model.check_output_path(output, force, (Path(model_path), Path(data_path)))
    if max_prune is not None and max_prune <= 0:
        raise ModelError(f"max_prune must be positive, got {max_prune}")
    provider = runtime.select_provider(device, threads)
    # `threshold` is the channel-score cut for zeroing here; the verdict keeps its own default
    found = detection.scan(model_path, data_path, limit, method, provider, settings, None, patch_search, fourier_probe, notice,
                           input_kind, output_kind, progress)
    report = _report(found, "repair", method, model_path, data_path, settings)
    tick = time.perf_counter()
    branches = mitigation.remove_branches(found, settings)
    if branches is not None:  # the branch-free model is repaired as any other: its own scan, its own plan
        found = detection.scan(branches.loaded, data_path, limit, method, provider, settings, None, patch_search,
                               fourier_probe, notice, input_kind, output_kind, progress)
    if progress is not None:
        progress("repair", 0, 0)
    choices = mitigation.RepairChoices(method, threshold, max_prune, bound, zero, notch, occlude, unlearning)
    settled = mitigation.settle(found, choices, settings, __version__, branches)
    del found  # the scan's model, sessions and samples go before the repaired model is serialized (a BERT-base: 1 GB)
    sha256 = model.save_model(settled.built.model, output)
    report.repair = mitigation.RepairOutcome(str(output), sha256, settled.planned, settled.built.changes, settled.limits,
                                             *settled.residual, settled.meta, branches=() if branches is None else branches.removed,
                                             held_back=settled.kept, replanned=settled.replanned)
    report.timings["repair"] = time.perf_counter() - tick
    report.timings["total"] += report.timings["repair"]
    return report
