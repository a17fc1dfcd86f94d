"""Many models in one run: expand files, folders and globs, scan each (in parallel processes), one summary.

A registry scan must not stop at its first bad file: each model ends as one `Entry` with one of the
outcomes below, and the run's exit code is the worst of them. Parallel scans run in separate processes
(onnxruntime sessions do not share a Python thread well), each with onnxruntime's threads set so that
the processes together use the machine's cores once.
"""

from __future__ import annotations

import concurrent.futures
import glob
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError, DataError, InternalError
from auditor.report import Report, verdict_text
from auditor.version import __version__

SCHEMA = "auditor.batch/1"

# outcome -> the CLI's exit code for it; `worst` ranks them: a run that could not judge a model (a bug, bad input)
# outranks a finding, a finding outranks "not assessed", which outranks clean.
EXIT_CODES = {"clean": 0, "suspicious": 1, "error": 2, "bug": 3, "not assessed": 4}
SEVERITY = ("clean", "not assessed", "suspicious", "error", "bug")


@dataclass(frozen=True)
class Entry:
    """One model's outcome: its report, or the one line that says why it has none."""

    model: str
    outcome: str  # one of EXIT_CODES
    report: Report | None
    message: str  # the verdict line, or the error

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        return {"model": self.model, "outcome": self.outcome, "exit_code": self.exit_code, "message": self.message,
                "report": None if self.report is None else self.report.to_dict(timings)}


def outcome(report: Report) -> str:
    """clean, suspicious or not assessed: what one report means for a release gate."""
    if report.verdict.suspicious:
        return "suspicious"
    return "clean" if report.verdict.assessed else "not assessed"


def worst(entries: Iterable[Entry]) -> str:
    """The outcome that decides the run's exit code ("clean" for no entries)."""
    return max((e.outcome for e in entries), key=SEVERITY.index, default="clean")


def expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Model files from files, folders (every *.onnx below, sorted) and glob patterns, in the order given, each once."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".onnx" and p.is_file())
            if not matches:
                raise DataError(f"{path} is a directory holding no .onnx file: give model files, or a folder of them")
        elif path.exists():
            matches = [path]
        elif glob.has_magic(str(given)):
            matches = sorted(Path(p) for p in glob.glob(str(given), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{given}: the pattern matches no file")
        else:
            raise DataError(f"{path}: file not found; give model files, folders or glob patterns")
        found.extend(matches)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def scan_one(model: str | os.PathLike[str], data: str | os.PathLike[str], **audit_options: Any) -> Entry:
    """`auditor.audit` of one model, its failure kept as an entry (a bad model must not stop a registry scan)."""
    from auditor.api import audit

    name = str(model)
    try:
        report = audit(model, data, **audit_options)
    except AuditorError as exc:
        return Entry(name, "error", None, _one_line(str(exc)))
    except MemoryError:
        return Entry(name, "error", None, "out of memory: try fewer samples (--limit)")
    except RecursionError:
        return Entry(name, "error", None, "the model is nested too deeply to analyse (recursion limit)")
    except InternalError as exc:
        return Entry(name, "bug", None, f"internal error: {_one_line(str(exc))}; this is a bug in auditor {__version__}")
    except Exception as exc:  # one model's bug must not lose the others' reports
        return Entry(name, "bug", None, f"unexpected {type(exc).__name__}: {_one_line(str(exc))}; "
                                        f"this is a bug in auditor {__version__}")
    return Entry(name, outcome(report), report, verdict_text(report.verdict))


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """onnxruntime threads for each of `jobs` processes, so that together they use the cores once."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def scan_many(models: list[Path], data: str | os.PathLike[str], jobs: int = 1,
              done: Callable[[Entry], None] | None = None, **audit_options: Any) -> list[Entry]:
    """Scan each model, `jobs` at a time in separate processes; entries in the order of `models` whatever order
    they finish in. `done` hears each entry as it finishes. With jobs > 1 and no `threads` given, each process gets
    `threads_per_job(jobs)` onnxruntime threads."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise DataError(f"jobs {jobs}: give a whole number of at least 1")
    if jobs == 1 or len(models) <= 1:
        entries = []
        for model in models:
            entries.append(scan_one(model, data, **audit_options))
            if done is not None:
                done(entries[-1])
        return entries
    audit_options.pop("notice", None)  # a callback cannot cross into another process
    if audit_options.get("threads") is None:
        audit_options["threads"] = threads_per_job(min(jobs, len(models)))
    results: dict[int, Entry] = {}
    # forkserver: workers fork from a clean server process that imported auditor once (fast to start, and never a
    # fork of a caller that may hold onnxruntime's thread pools); spawn where the platform has no forkserver
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["auditor.api"])
    else:
        context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(models)), mp_context=context)
    try:
        futures = {pool.submit(scan_one, model, data, **audit_options): i for i, model in enumerate(models)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                results[i] = Entry(str(models[i]), "error", None,
                                   "the scanning process died (out of memory, or killed); scan this model alone to see why")
            if done is not None:
                done(results[i])
    except BaseException:  # Ctrl-C or the run's time limit: stop the workers now, not after their scans
        _stop(pool)
        raise
    pool.shutdown()
    return [results[i] for i in range(len(models))]


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())  # the executor has no public way to end running work
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(5)


def counts(entries: list[Entry]) -> dict[str, int]:
    """How many entries have each outcome, in SEVERITY order."""
    return {name: sum(e.outcome == name for e in entries) for name in SEVERITY}


def combined(entries: list[Entry], timings: bool = True) -> dict[str, Any]:
    """The run as one JSON object: every model's entry (its full report), counts per outcome, the worst outcome."""
    decided = worst(entries)
    return {"schema": SCHEMA, "tool_version": __version__, "models": [e.to_dict(timings) for e in entries],
            "summary": {"models": len(entries), "outcomes": counts(entries), "worst": decided, "exit_code": EXIT_CODES[decided]}}


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
