"""The `auditor` command: parse, call the library, render, map outcomes to exit codes.

Exit codes: 0 clean verdict / output written, 1 the model looks backdoored (scan),
2 bad usage or input (one line on stderr, nothing written), 3 a bug in auditor (one line asking to
report it), 130 interrupted (SIGINT or SIGTERM; no partial output).
"""

from __future__ import annotations

import contextlib
import json as _json_module
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import auditor
from auditor import batch
from auditor import config as auditor_config
from auditor.errors import AuditorError, InternalError
from auditor.io import model as model_io
from auditor.report import repair_lines, verdict_text
from auditor.report.sarif import render_many
from auditor.settings import Settings, parse_overrides

EXIT_CLEAN, EXIT_SUSPICIOUS, EXIT_ERROR, EXIT_BUG, EXIT_NOT_ASSESSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Audit ONNX classifiers for backdoors from a few clean samples, and repair them.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# Shared option groups (one definition, every command).
ModelArg = Annotated[Path, typer.Argument(help="ONNX model to audit (never modified).", show_default=False)]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", "-d", show_default=False,
    help=".npz with array x (or arrays named after the model inputs) and optional labels y (uint8 images are scaled by "
    "1/255), or a folder of PNG/JPEG images (subfolders named by class give labels; see --resize ... --layout).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", "-n", help="Use only the first N samples.")]
MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", "-m", help="sus (combined, default), clp (weights alone), fp (activations alone).", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="auto (CUDA when usable, else CPU; the default), cpu or cuda.", show_default=False)]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="onnxruntime's threads per session (default: its own, one per physical core); on many-core "
    "machines small models can run faster on 4 to 8.", show_default=False)]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    "--threshold", "-u", help="scan: verdict threshold (on the verdict's score); repair: zero only channels scoring at or above it.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here.")]
SarifOpt = Annotated[Optional[Path], typer.Option("--sarif", help="Write a SARIF 2.1.0 report here.")]
HtmlOpt = Annotated[Optional[Path], typer.Option("--html", help="Write an HTML report here.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]
PatchOpt = Annotated[Optional[bool], typer.Option(
    "--patch-search/--no-patch-search", help="sus: search for a small patch that takes over the model (about 10,000 "
    "forward passes of single samples: under 1.5 s on the zoo's models on CPU, far longer for large image models).")]
FourierOpt = Annotated[Optional[bool], typer.Option(
    "--fourier-probe/--no-fourier-probe", help="sus: add faint low-frequency cosine patterns to the clean samples and see "
    "whether one sends them to one class (about 4,500 batched forward passes: under 0.4 s on the zoo's models on CPU).")]
InputKindOpt = Annotated[Optional[str], typer.Option(
    "--input-kind", help="What the input is, when auditor reads it wrongly: image, flat-image, sequence, tokens or tabular "
    "(the probe blurs an image's axes or a sequence's time axis, never tabular features).", show_default=False)]
OutputKindOpt = Annotated[Optional[str], typer.Option(
    "--output-kind", help="What the output is: scores, probabilities or binary (one score per sample); auditor refuses "
    "positions (detectors, CTC) and embeddings.", show_default=False)]
BudgetOpt = Annotated[Optional[float], typer.Option(
    "--budget", help=f"Seconds the detectors may take after the capture (run.budget, default {Settings().run.budget:g}; 0: no "
    "limit); a search cut short makes the outcome 'not assessed' (exit 4) unless what did run found a shortcut.",
    show_default=False)]
BackgroundOpt = Annotated[Optional[list[int]], typer.Option(
    "--background-class", help="A class the model is trained to give inputs with nothing in them (a background, silence, "
    "unknown or reject class; repeat for several): corrupted samples fill it by design, so the corruption probe does not "
    "take it for a shortcut's target (verdict.background_classes).", show_default=False)]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="auditor.toml, or a pyproject.toml with [tool.auditor] (default: the nearest one in this folder or above, "
    "up to the repository's root); the command line wins over it.", show_default=False)]
ResizeOpt = Annotated[Optional[int], typer.Option(
    "--resize", help="Image folders: resize so the shorter side has this many pixels (preprocess.resize).", show_default=False)]
CropOpt = Annotated[Optional[int], typer.Option(
    "--crop", help="Image folders: then crop the centre square of this side (preprocess.crop).", show_default=False)]
ScaleOpt = Annotated[Optional[float], typer.Option(
    "--scale", help="Image folders: pixel values (0-255) times this (preprocess.scale, default 1/255).", show_default=False)]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Image folders: per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406 (preprocess.mean).",
    show_default=False)]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="Image folders: per-channel divisor after the mean, e.g. 0.229,0.224,0.225 (preprocess.std).", show_default=False)]
ChannelOrderOpt = Annotated[Optional[str], typer.Option(
    "--channel-order", help="Image folders: rgb (default) or bgr (preprocess.channel_order).", show_default=False)]
LayoutOpt = Annotated[Optional[str], typer.Option(
    "--layout", help="Image folders: nchw or nhwc (preprocess.layout; default: read from the model's input shape).",
    show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one setting of the method, SECTION.NAME=VALUE (repeatable), e.g. verdict.probe_threshold=0.7; "
    "see auditor/settings.py.", show_default=False)]


def _one_line(text: str) -> str:
    """Messages from onnx / onnxruntime may span lines; a release log wants exactly one."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _fail(message: str) -> None:
    err.print(f"error: {_one_line(message)}", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def _bug(message: str) -> None:
    """Our fault, not the input's: its own exit code and a request to report it."""
    err.print(f"internal error: {_one_line(message)[:300]}; this is a bug in auditor {auditor.__version__}: "
              "please report it (rerun with AUDITOR_DEBUG=1 for the traceback)", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_BUG)


_interruption_said = []


def _say_interrupted() -> None:
    if not _interruption_said:
        _interruption_said.append(True)
        err.print("interrupted: no partial output was left behind", markup=False, soft_wrap=True)


class _TimeUp(KeyboardInterrupt):
    """limits.seconds ran out: the run unwinds as Ctrl-C does (what it wrote is removed), then reports the limit."""


_HARD_STOP_GRACE = 30.0  # seconds after limits.seconds before a run stuck inside onnxruntime is ended outright


def _deadline(seconds: float) -> None:
    """From now, stop the command after `seconds` of wall-clock time (0: never). The alarm unwinds the run between
    onnxruntime calls; one call that never returns (a hostile Loop) is ended by a watchdog a grace period later."""
    def up(signum, frame) -> None:
        if not (_Run.committed or _Run.cleaning):  # every output in place, or a failure's clean-up under way
            raise _TimeUp(seconds)

    def hard_stop() -> None:
        err.print(f"error: stopped after {seconds:g} s, the run time limit (limits.seconds), inside onnxruntime; "
                  "raise it with --set limits.seconds=S", markup=False, soft_wrap=True)
        os._exit(EXIT_ERROR)

    if seconds > 0:
        signal.signal(signal.SIGALRM, up)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        watchdog = threading.Timer(seconds + _HARD_STOP_GRACE, hard_stop)
        watchdog.daemon = True
        watchdog.start()


class _Run:
    """Whether the run is done: once every output is in place, SIGINT, SIGTERM and the time limit no longer
    unwind it (an interruption would remove complete outputs, or report them as removed while they stay); nor
    while a failed run removes what it wrote (`cleaning`), so that the removal is not cut short."""
    committed = False
    cleaning = False


def _guarded(work):
    """Run `work`, turning every failure into one line: exit code 2 for bad input or a limit reached, 3 for a
    bug in auditor (library warnings silenced: stderr carries the one line only)."""
    _Run.committed = False  # a fresh command (tests run several in one process)
    try:
        with warnings.catch_warnings():
            if not os.environ.get("AUDITOR_DEBUG"):
                warnings.simplefilter("ignore")
            return work()
    except typer.Exit:
        raise
    except AuditorError as exc:
        _fail(str(exc))
    except _TimeUp as exc:
        _fail(f"stopped after {exc.args[0]:g} s, the run time limit (limits.seconds); nothing was written; raise it "
              "with --set limits.seconds=S, or give fewer samples (--limit) or switch off the searches")
    except KeyboardInterrupt:
        _say_interrupted()
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except MemoryError:
        _fail("out of memory: try fewer samples (--limit)")
    except RecursionError:
        _fail("the model is nested too deeply to analyse (recursion limit)")
    except InternalError as exc:
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        _bug(str(exc))
    except Exception as exc:  # a release gate must never dump a traceback
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        _bug(f"unexpected {type(exc).__name__}: {_one_line(str(exc))}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _inputs(model: Path, *others: Optional[Path]) -> tuple[Path, ...]:
    """Every file a command reads, the model's external data included: outputs may replace none of them."""
    return (model, *model_io.external_data_files(model), *(p for p in others if p is not None))


def _outputs(paths: list[Optional[Path]], force: bool, inputs: tuple[Path, ...]) -> None:
    seen = set()
    for path in paths:
        if path is None:
            continue
        model_io.check_output_path(path, force, inputs)
        key = os.path.abspath(path)
        if key in seen:
            raise auditor.OutputError(f"{path} is given for two outputs")
        seen.add(key)


def _write_all(outputs: list[tuple[Optional[Path], Callable[[], str]]]) -> None:
    """Each (path, text) whose path is given, atomically. A failure part-way (a full disk, Ctrl-C) removes every
    output this run put in place, one whose write had not yet returned included (its path holds another file than
    before): a run that fails leaves no output. The last output in place commits the run."""
    given = [(Path(path), text) for path, text in outputs if path is not None]
    before = {path: _identity(path) for path, _ in given}
    try:
        for path, text in given:
            model_io.write_atomic(path, text().encode())
        _Run.committed = True
    except BaseException:
        _remove([path for path, found in before.items() if _identity(path) != found])
        raise


def _write_reports(report: auditor.Report, json_path, sarif_path, html_path) -> None:
    _write_all([(json_path, report.to_json), (sarif_path, report.to_sarif), (html_path, report.to_html)])


def _identity(path: Path) -> Optional[tuple[int, int]]:
    """(device, inode) of the file at `path`, None when there is none: an atomic write puts a new inode in place."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _remove(paths: list[Path]) -> None:
    _Run.cleaning = True
    try:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    finally:
        _Run.cleaning = False


def _threads_text(threads: int | None) -> str:
    return "" if threads is None else f", {threads} thread{'s' * (threads != 1)}"


# The library's switches, as this command's flags (the library never names a flag).
_FLAGS = {"switched off by: fourier_probe, patch_search": "--no-fourier-probe / --no-patch-search skip them",
          "switched off by: fourier_probe": "--no-fourier-probe skips it",
          "switched off by: patch_search": "--no-patch-search skips it"}


def _note(message: str) -> None:
    """A heads-up while the work runs (a long search ahead), on standard output like the other notes."""
    for switch, flag in _FLAGS.items():
        message = message.replace(switch, flag)
    out.print(f"note: {message}", markup=False, soft_wrap=True)


def _say_provider(report: auditor.Report) -> None:
    provider = report.provider
    out.print(f"provider: {provider['name']} ({provider['reason']})" + _threads_text(provider.get("threads")))
    kinds = report.model.get("kinds")
    if kinds:
        out.print(f"model: input read as {kinds['input']} ({kinds['input_reason']}), output as {kinds['output']} "
                  f"({kinds['output_reason']})", markup=False, soft_wrap=True)
    covered, classes = report.data.get("predicted_classes"), report.data.get("classes")
    if covered is not None and classes is not None and covered < classes:
        missing = report.data.get("missing_classes") or []
        named = f" (none in {', '.join(map(str, missing))})" if 0 < len(missing) <= 20 else ""
        out.print(f"note: the model puts the {report.data['samples']} clean samples in {covered} of its {classes} classes{named}; "
                  "samples of every class let repair protect each of them")


def _render(report: auditor.Report) -> None:
    table = Table(title="channel ranking (not a finding: clean models score as high; it orders the channels repair zeroes "
                        "with --zero, --threshold or --max-prune and the clp/fp methods remove; the verdict below decides)",
                  show_lines=False)
    for column in ("unit", "op", "channels", "top channel score", "top channels (score)"):
        table.add_column(column)
    layers = [layer for layer in report.layers if layer.prunable]
    ranked = sorted(layers, key=lambda layer: -max(r.score for r in layer.records))[:8]
    for layer in ranked:
        top = sorted(layer.records, key=lambda r: (-r.score, r.channel))[:4]
        table.add_row(layer.unit, layer.op, str(layer.channels), f"{max(r.score for r in layer.records):.2f}",
                      ", ".join(f"{r.channel} ({r.score:.2f})" for r in top))
    out.print(table)
    style = "bold red" if report.verdict.suspicious else "bold green" if report.verdict.assessed else "bold yellow"
    out.print(f"verdict: [{style}]{verdict_text(report.verdict)}[/]", soft_wrap=True)
    for finding in report.verdict.findings:
        out.print(f"graph finding ({finding.kind}): {finding.reason}", markup=False, soft_wrap=True)
        if finding.nodes:
            out.print(f"  nodes: {', '.join(finding.nodes)}", markup=False, soft_wrap=True)
        for fact in (finding.fires, finding.confirmation, finding.refusal and f"repair cannot cut it out: {finding.refusal}"):
            if fact:
                out.print(f"  {fact}", markup=False, soft_wrap=True)
    if report.settings:
        out.print("settings changed: " + ", ".join(f"{k}={v}" for k, v in sorted(report.settings.items())), markup=False)


def _settings(overrides: Optional[list[str]], config: Optional[auditor_config.Config] = None, **flags) -> Settings:
    """The settings from the config file, then `--set` overrides, then the flags that name a setting (`repair_floor=`
    for repair.floor; None: not given): the command line wins."""
    given = {name.replace("_", ".", 1): value for name, value in flags.items() if value is not None}
    chosen = {} if config is None else dict(config.settings)
    return Settings().override({**chosen, **parse_overrides(overrides or []), **given})


# the options `scan` and `repair` hand to the library as they are, after the config file filled in what was not given
_AUDIT_OPTIONS = ("limit", "method", "device", "threshold", "patch_search", "fourier_probe", "threads", "input_kind", "output_kind")
_OPTION_DEFAULTS = {"method": "sus", "device": "auto", "patch_search": True, "fourier_probe": True, "jobs": 1}


def _configured(path: Optional[Path], **given) -> tuple[Optional[auditor_config.Config], dict]:
    """The config file (--config, else the nearest one) and each option's value: the command line's, else the file's,
    else the default."""
    found = path if path is not None else auditor_config.find(Path.cwd())
    config = None if found is None else auditor_config.load(found)
    values = {name: value if config is None else config.pick(name, value) for name, value in given.items()}
    for name, default in _OPTION_DEFAULTS.items():
        if name in values and values[name] is None:
            values[name] = default
    if "data" in values and values["data"] is None:
        raise auditor.DataError("no clean samples given: pass --data CLEAN.npz (or a folder of images), or set `data` in "
                                "auditor.toml or [tool.auditor] in pyproject.toml")
    if config is not None:
        out.print(f"config: {config.path}", markup=False, soft_wrap=True)
    return config, values


def _classes(given: Optional[list[int]]) -> Optional[tuple[int, ...]]:
    """A repeated class option as the setting's tuple (None: not given)."""
    return None if not given else tuple(sorted(set(given)))


def _preprocess_flags(resize, crop, scale, mean, std, channel_order, layout) -> dict:
    """The image-folder flags as the settings they name."""
    return {"preprocess_resize": resize, "preprocess_crop": crop, "preprocess_scale": scale, "preprocess_mean": mean,
            "preprocess_std": std, "preprocess_channel_order": channel_order, "preprocess_layout": layout}


def _check_verdict(report: auditor.Report) -> None:
    """A NaN score compares as 'not suspicious': never let it pass the gate as clean."""
    if not math.isfinite(report.verdict.score):
        raise auditor.ModelError("the audit produced no finite score: the model computes NaN or Inf on the clean samples")


@contextlib.contextmanager
def _progress_bars():
    """A progress bar per stage on a terminal (stderr, cleared when done); None when stderr is not a terminal or CI
    is set, so logs stay exactly as before."""
    if not err.is_terminal or os.environ.get("CI"):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True)
    tasks: dict[str, object] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            for task in bars.tasks:  # a new stage means the earlier ones are over
                if not task.finished:
                    bars.update(task.id, total=task.completed or 1, completed=task.completed or 1)
            tasks[stage] = bars.add_task(stage, total=total or None)
        bars.update(tasks[stage], completed=done, total=total or None)

    with bars:
        yield update


ModelsArg = Annotated[list[Path], typer.Argument(
    help="ONNX model(s) to audit (never modified): files, folders (every .onnx below) or glob patterns.", show_default=False,
    metavar="MODEL")]
JobsOpt = Annotated[int, typer.Option(
    "--jobs", "-j", help="Scan this many models at once, in separate processes (onnxruntime's threads per process: the "
    "cores divided among them, unless --threads is given).")]


@app.command()
def scan(models: ModelsArg, data: DataOpt = None, limit: LimitOpt = None, method: MethodOpt = None,
         device: DeviceOpt = None, threshold: ThresholdOpt = None, json: JsonOpt = None,
         sarif: SarifOpt = None, html: HtmlOpt = None, force: ForceOpt = False, patch_search: PatchOpt = None,
         fourier_probe: FourierOpt = None, threads: ThreadsOpt = None, set_: SetOpt = None,
         input_kind: InputKindOpt = None, output_kind: OutputKindOpt = None, jobs: JobsOpt = None, budget: BudgetOpt = None,
         background_class: BackgroundOpt = None, config: ConfigOpt = None, resize: ResizeOpt = None, crop: CropOpt = None,
         scale: ScaleOpt = None, mean: MeanOpt = None, std: StdOpt = None, channel_order: ChannelOrderOpt = None, layout: LayoutOpt = None) -> None:
    """Probe for a shortcut (corruptions, a patch, a Fourier pattern), score every channel; exit 1 when it looks backdoored.
    Several models: one summary table, one JSON/SARIF holding every model, exit code the worst outcome."""
    def work():
        chosen, given = _configured(config, data=data, limit=limit, method=method, device=device, threshold=threshold,
                                    json=json, sarif=sarif, html=html, patch_search=patch_search, fourier_probe=fourier_probe,
                                    threads=threads, input_kind=input_kind, output_kind=output_kind, jobs=jobs)
        settings = _settings(set_, chosen, run_budget=budget, verdict_background_classes=_classes(background_class),
                             **_preprocess_flags(resize, crop, scale, mean, std, channel_order, layout))
        _deadline(settings.limits.seconds)
        paths = batch.expand(models)
        options = {**{name: given[name] for name in _AUDIT_OPTIONS}, "settings": settings}
        outputs = (given["json"], given["sarif"], given["html"])
        recorded = None if chosen is None else chosen.to_dict()
        if len(paths) == 1 and len(models) == 1 and Path(models[0]).is_file():
            return _scan_one(paths[0], given["data"], *outputs, force, options, recorded)
        return _scan_many(paths, given["data"], *outputs, force, given["jobs"], options, recorded)
    code = _guarded(work)
    raise typer.Exit(code)


def _scan_one(model: Path, data: Path, json, sarif, html, force: bool, options: dict, config: Optional[dict]) -> int:
    _outputs([json, sarif, html], force, _inputs(model, data))
    with _progress_bars() as progress:
        report = auditor.audit(model, data, notice=_note, progress=progress, **options)
    report.config = config
    _check_verdict(report)
    _say_provider(report)
    _render(report)
    _write_reports(report, json, sarif, html)
    return batch.EXIT_CODES[batch.outcome(report)]


def _scan_many(models: list[Path], data: Path, json, sarif, html, force: bool, jobs: int, options: dict,
               config: Optional[dict]) -> int:
    """Every model scanned (a bad one is a row, not the end of the run), one table, one JSON and one SARIF."""
    if html is not None:
        raise auditor.OutputError("--html takes one model; for several, write --json (every report) or --sarif")
    _outputs([json, sarif], force, tuple(p for m in models for p in _inputs(m, data)))
    styles = {"clean": "green", "suspicious": "bold red", "not assessed": "yellow", "error": "red", "bug": "red"}
    table = Table(title=f"{len(models)} models")
    for column in ("model", "outcome", "score", "basis", "target"):
        table.add_column(column, overflow="fold")
    if not Path(data).exists():
        raise auditor.DataError(f"{data}: no such file or folder; give the clean samples with --data")
    with _progress_bars() as progress:
        finished = [0]

        def done(entry: batch.Entry) -> None:
            finished[0] += 1
            if progress is not None:
                progress("models", finished[0], len(models))
        entries = batch.scan_many(models, data, jobs=jobs, done=done, **options)
    for entry in entries:
        if entry.report is not None:
            entry.report.config = config
    for entry in entries:
        verdict = None if entry.report is None else entry.report.verdict
        score = "" if verdict is None or not verdict.assessed else f"{verdict.score:.3f}"
        table.add_row(entry.model, f"[{styles[entry.outcome]}]{entry.outcome}[/]", score,
                      "" if verdict is None or not verdict.assessed else verdict.basis,
                      "" if verdict is None or verdict.target is None else str(verdict.target))
    out.print(table)
    for entry in entries:  # why a model has no verdict, one line each, in full
        if entry.outcome in ("error", "bug", "not assessed"):
            out.print(f"{entry.outcome}: {entry.model}: {entry.message}", markup=False, soft_wrap=True)
    decided = batch.worst(entries)
    counts = ", ".join(f"{n} {name}" for name, n in batch.counts(entries).items() if n)
    out.print(f"summary: {counts}; exit code {batch.EXIT_CODES[decided]} ({decided})", markup=False)
    failures = [(e.model, e.message) for e in entries if e.report is None]
    _write_all([(json, lambda: _json_module.dumps(batch.combined(entries), indent=1, sort_keys=True, allow_nan=False) + "\n"),
                (sarif, lambda: render_many([e.report for e in entries if e.report is not None], failures))])
    return batch.EXIT_CODES[decided]


@app.command(name="repair")
def repair_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the repaired model.", show_default=False)],
    data: DataOpt = None, limit: LimitOpt = None, method: MethodOpt = None, device: DeviceOpt = None, threshold: ThresholdOpt = None,
    max_prune: Annotated[Optional[float], typer.Option(
        "--max-prune", help="At most this many channels (>= 1) or this fraction of all (< 1).")] = None,
    floor: Annotated[Optional[float], typer.Option(
        "--floor", help=f"Least agreement with the original on augmented clean samples (repair.floor, default "
        f"{Settings().repair.floor}).", show_default=False)] = None,
    layer_cap: Annotated[Optional[float], typer.Option(
        "--layer-cap", help=f"At most this fraction of one layer's channels (repair.layer_cap, default {Settings().repair.layer_cap}).",
        show_default=False)] = None,
    max_divergence: Annotated[Optional[float], typer.Option(
        "--max-divergence", help="Largest mean KL(original || repaired) on augmented clean samples, in nats "
        f"(repair.max_divergence, default {Settings().repair.max_divergence}).", show_default=False)] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="Labelled test set: print accuracy before and after.")] = None,
    triggered: Annotated[Optional[Path], typer.Option(
        "--triggered", help="Triggered set: print attack success rate before and after (needs --target).")] = None,
    target: Annotated[Optional[int], typer.Option("--target", help="Attack target class for --triggered.")] = None,
    bound: Annotated[Optional[bool], typer.Option(
        "--bound/--no-bound", help="Cap each hidden channel at a guard-calibrated multiple of its clean maximum "
        "(default: on for sus, off for clp/fp).", show_default=False)] = None,
    zero: Annotated[Optional[bool], typer.Option(
        "--zero/--no-zero", help="Zero ranked channels (default: on for clp/fp, or when --threshold/--max-prune is given).",
        show_default=False)] = None,
    unlearn: Annotated[Optional[bool], typer.Option(
        "--unlearn/--no-unlearn", help="sus: when the corruption probe, the patch search or the Fourier probe finds a shortcut, refit the "
        "head's row for that class so corrupted, patched or perturbed clean inputs leave it (default: on).", show_default=False)] = None,
    notch: Annotated[Optional[bool], typer.Option(
        "--notch/--no-notch", help="sus: when the Fourier probe gives the verdict, remove its pattern's spatial frequency "
        "from the image input, if the fidelity guard allows; needs no clean sample of the target (default: on).",
        show_default=False)] = None,
    occlude: Annotated[Optional[bool], typer.Option(
        "--occlude/--no-occlude", help="sus: when the patch search gives the verdict, cover the found patch (and a pixel around "
        "it) with the clean samples' mean, if the fidelity guard allows; needs no clean sample of the target (default: on).",
        show_default=False)] = None,
    json: JsonOpt = None, sarif: SarifOpt = None, html: HtmlOpt = None, force: ForceOpt = False,
    patch_search: PatchOpt = None,
    fourier_probe: FourierOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
    input_kind: InputKindOpt = None,
    output_kind: OutputKindOpt = None,
    budget: BudgetOpt = None,
    background_class: BackgroundOpt = None,
    config: ConfigOpt = None, resize: ResizeOpt = None, crop: CropOpt = None, scale: ScaleOpt = None, mean: MeanOpt = None,
    std: StdOpt = None, channel_order: ChannelOrderOpt = None, layout: LayoutOpt = None,
) -> None:
    """Bound activations, filter out a found trigger, unlearn its shortcut, as far as fidelity allows; write the model."""
    def work():
        chosen, given = _configured(config, data=data, limit=limit, method=method, device=device, threshold=threshold,
                                    json=json, sarif=sarif, html=html, patch_search=patch_search, fourier_probe=fourier_probe,
                                    threads=threads, input_kind=input_kind, output_kind=output_kind)
        settings = _settings(set_, chosen, repair_floor=floor, repair_layer_cap=layer_cap, repair_max_divergence=max_divergence,
                             run_budget=budget, verdict_background_classes=_classes(background_class),
                             **_preprocess_flags(resize, crop, scale, mean, std, channel_order, layout))
        _deadline(settings.limits.seconds)
        if triggered is not None and test is None:
            raise auditor.DataError("--triggered needs --test too (the clean test set that measures accuracy)")
        reports = (given["json"], given["sarif"], given["html"])
        _outputs([output, *reports], force, _inputs(model, given["data"], test, triggered))
        # The test and triggered sets are measured on the original first: a bad one is refused
        # before the repaired model is written, not after.
        measured = {"triggered": triggered, "target": target, "device": given["device"], "threads": given["threads"],
                    "settings": settings}
        before = None if test is None else auditor.evaluate(model, test, **measured)
        previous = _identity(output)  # what --force may replace: left alone unless this run put a model there
        try:
            with _progress_bars() as progress:
                report = auditor.repair(model, given["data"], output, max_prune=max_prune, force=force, bound=bound,
                                        zero=zero, unlearning=unlearn, notch=notch, occlude=occlude, notice=_note,
                                        settings=settings, progress=progress,
                                        **{name: given[name] for name in _AUDIT_OPTIONS})
            report.config = None if chosen is None else chosen.to_dict()
            _finish_repair(report, before, measured, reports)
        except BaseException:  # a run that fails or is interrupted leaves none of its outputs, the model included
            if _identity(output) != previous:  # this run put a model there (maybe before the library returned)
                _remove([Path(output), *model_io.external_data_files(output)])  # the model before its data
            raise
        return report

    def _finish_repair(report: auditor.Report, before, measured: dict, reports: tuple) -> None:
        _say_provider(report)
        _render(report)
        for line in repair_lines(report.repair, report.verdict):
            out.print(f"repair: {line}", markup=False, soft_wrap=True)
        unlearned = report.repair.plan.unlearning
        if unlearned is not None and unlearned.applied and before is None:
            t, k = unlearned.target, unlearned.anchors
            out.print(f"caution: class {t}'s own accuracy was guarded by {k} clean sample{'s' if k != 1 else ''} of it "
                      f"only, and unlearning can cost that class more than the agreement shows: check it with "
                      f"--test TEST.npz --target {t}", markup=False, soft_wrap=True)
        if before is not None:
            after = auditor.evaluate(output, test, **measured)
            report.repair.evaluation = {"before": before.to_dict(), "after": after.to_dict()}
            _render_before_after(before, after)
        _write_reports(report, *reports)
    _guarded(work)
    raise typer.Exit(EXIT_CLEAN)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _render_before_after(before: auditor.Evaluation, after: auditor.Evaluation) -> None:
    table = Table(title="before / after repair")
    for column in ("", "accuracy (ACC)", "target class ACC", "attack success (ASR)", "triggered, right class"):
        table.add_column(column)
    for name, result in (("before", before), ("after", after)):
        table.add_row(name, _pct(result.accuracy), _pct(result.target_accuracy), _pct(result.attack_success_rate),
                      _pct(result.triggered_accuracy))
    out.print(table)


@app.command(name="evaluate")
def evaluate_command(
    model: ModelArg, data: DataOpt,
    triggered: Annotated[Optional[Path], typer.Option(
        "--triggered", help="Triggered samples (x, optional true labels y).")] = None,
    target: Annotated[Optional[int], typer.Option("--target", help="Class the attack aims for.")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", help="Original model: report agreement with its predictions.")] = None,
    limit: LimitOpt = None, device: DeviceOpt = "auto", json: JsonOpt = None, force: ForceOpt = False,
    threads: ThreadsOpt = None, resize: ResizeOpt = None, crop: CropOpt = None, scale: ScaleOpt = None, mean: MeanOpt = None,
    std: StdOpt = None, channel_order: ChannelOrderOpt = None, layout: LayoutOpt = None,
) -> None:
    """Accuracy on labelled data, attack success rate on triggered data, agreement with a reference."""
    def work():
        if data is None:
            raise auditor.DataError("no test samples given: pass --data TEST.npz (or a folder of labelled images)")
        _outputs([json], force, _inputs(model, data, triggered, reference))
        settings = _settings(None, **_preprocess_flags(resize, crop, scale, mean, std, channel_order, layout))
        result = auditor.evaluate(model, data, triggered=triggered, target=target, reference=reference,
                                  limit=limit, device=device, threads=threads, settings=settings)
        out.print(f"provider: {result.provider}" + _threads_text(result.threads))
        out.print(f"accuracy: {_pct(result.accuracy)} on {result.samples} samples")
        if result.attack_success_rate is not None:
            out.print(f"attack success rate: {_pct(result.attack_success_rate)} "
                      f"({result.triggered_samples} triggered samples, target {result.target})")
        if result.triggered_accuracy is not None:
            out.print(f"triggered samples classified as their true label: {_pct(result.triggered_accuracy)}")
        if result.target_accuracy is not None:
            out.print(f"accuracy on the samples of class {result.target}: {_pct(result.target_accuracy)}")
        if result.agreement is not None:
            out.print(f"agreement with reference: {_pct(result.agreement)}")
        _write_all([(json, lambda: _json_module.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")])
    _guarded(work)
    raise typer.Exit(EXIT_CLEAN)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(auditor.__version__)


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit(EXIT_CLEAN)


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                               help="Print the version and exit.")] = False,
) -> None:
    """The options of `auditor` itself; the help text shown is the app's."""


def _terminate(signum, frame) -> None:
    """SIGTERM (CI cancelling a job) and Ctrl-C unwind the run, so partial outputs are removed; a second
    signal is ignored so that the clean-up the first started is not itself interrupted. Once the run
    is committed (every output in place) they are ignored: the run ends as it would have. From the first signal on,
    a clean-up that takes long (a batch scan stopping its workers) can no longer be cut short by another."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not (_Run.committed or _Run.cleaning):
        raise KeyboardInterrupt


def main() -> None:
    """The `auditor` command. A usage error (an unknown option, a value of the wrong type) is one line on stderr and exit
    2, like every other bad input, rather than click's framed usage block."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):  # before typer's own handling began, or while parsing the options
        _say_interrupted()
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as exc:  # typer's own click: a usage error, or a bare `auditor` / `auditor scan`
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help, as before
            exc.show()
            sys.exit(exc.exit_code)
        where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
        err.print(f"error: {' '.join(exc.format_message().split())}{where}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer turned it into a silent exit while parsing the options
            _say_interrupted()
        raise
    finally:
        # The work is done (or undone): from here a SIGTERM must not turn the exit status into a
        # kill. Python restores the default action for handled signals while it shuts down, but
        # leaves an ignored one ignored.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == EXIT_INTERRUPTED:  # a command that unwound an interruption returns its code here
        _say_interrupted()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
