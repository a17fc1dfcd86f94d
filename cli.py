"""The `auditor` command: parse, call the library, render, map outcomes to exit codes.

Exit codes: 0 clean verdict / output written, 1 the model looks backdoored (scan),
2 bad usage or input (one line on stderr, nothing written), 130 interrupted (SIGINT or SIGTERM; no partial output).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import auditor
from auditor import model as model_io
from auditor.errors import AuditorError
from auditor.patch import fill_text, window_text
from auditor.report import basis_text, notch_text
from auditor.score import SHORTCUT_BASES

EXIT_CLEAN, EXIT_SUSPICIOUS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Audit ONNX classifiers for backdoors from a few clean samples, and repair them.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# Shared option groups (one definition, every command).
ModelArg = Annotated[Path, typer.Argument(help="ONNX model to audit (never modified).", show_default=False)]
DataOpt = Annotated[Path, typer.Option(
    "--data", "-d", show_default=False,
    help=".npz with array x (or arrays named after the model inputs) and optional labels y; uint8 images are scaled by 1/255.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", "-n", help="Use only the first N samples.")]
MethodOpt = Annotated[str, typer.Option(
    "--method", "-m", help="sus (combined, default), clp (weights alone), fp (activations alone).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when usable, else CPU), cpu or cuda.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="onnxruntime's threads per session (default: its own, one per physical core); on many-core "
    "machines small models can run faster on 4 to 8.", show_default=False)]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    "--threshold", "-u", help="scan: verdict threshold (on the verdict's score); repair: zero only channels scoring at or above it.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here.")]
SarifOpt = Annotated[Optional[Path], typer.Option("--sarif", help="Write a SARIF 2.1.0 report here.")]
HtmlOpt = Annotated[Optional[Path], typer.Option("--html", help="Write an HTML report here.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]
PatchOpt = Annotated[bool, typer.Option(
    "--patch-search/--no-patch-search", help="sus: search for a small patch that takes over the model (about 10,000 "
    "forward passes of single samples: under 1.5 s on the zoo's models on CPU, far longer for large image models).")]
FourierOpt = Annotated[bool, typer.Option(
    "--fourier-probe/--no-fourier-probe", help="sus: add faint low-frequency cosine patterns to the clean samples and see "
    "whether one sends them to one class (about 4,500 batched forward passes: under 0.4 s on the zoo's models on CPU).")]


def _one_line(text: str) -> str:
    """Messages from onnx / onnxruntime may span lines; a release log wants exactly one."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _fail(message: str) -> None:
    err.print(f"error: {_one_line(message)}", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


_interruption_said = []


def _say_interrupted() -> None:
    if not _interruption_said:
        _interruption_said.append(True)
        err.print("interrupted: no partial output was left behind", markup=False, soft_wrap=True)


def _guarded(work):
    """Run `work`, turning every failure into one line and exit code 2 (library warnings silenced:
    stderr carries the one line only)."""
    try:
        with warnings.catch_warnings():
            if not os.environ.get("AUDITOR_DEBUG"):
                warnings.simplefilter("ignore")
            return work()
    except typer.Exit:
        raise
    except AuditorError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _say_interrupted()
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except MemoryError:
        _fail("out of memory: try fewer samples (--limit)")
    except RecursionError:
        _fail("the model is nested too deeply to analyse (recursion limit)")
    except Exception as exc:  # a release gate must never dump a traceback
        if os.environ.get("AUDITOR_DEBUG"):
            raise
        _fail(f"unexpected failure ({type(exc).__name__}: {_one_line(str(exc))[:200]}); "
              "rerun with AUDITOR_DEBUG=1 for details and report it")


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


def _write_reports(report: auditor.Report, json_path, sarif_path, html_path) -> None:
    for path, text in ((json_path, report.to_json), (sarif_path, report.to_sarif), (html_path, report.to_html)):
        if path is not None:
            model_io.write_atomic(path, text().encode())


def _threads_text(threads: int | None) -> str:
    return "" if threads is None else f", {threads} thread{'s' * (threads != 1)}"


def _note(message: str) -> None:
    """A heads-up while the work runs (a long search ahead), on standard output like the other notes."""
    out.print(f"note: {message}", markup=False, soft_wrap=True)


def _say_provider(report: auditor.Report) -> None:
    provider = report.provider
    out.print(f"provider: {provider['name']} ({provider['reason']})" + _threads_text(provider.get("threads")))
    covered, classes = report.data.get("predicted_classes"), report.data.get("classes")
    if covered is not None and classes is not None and covered < classes:
        missing = report.data.get("missing_classes") or []
        named = f" (none in {', '.join(map(str, missing))})" if 0 < len(missing) <= 20 else ""
        out.print(f"note: the model puts the {report.data['samples']} clean samples in {covered} of its {classes} classes{named}; "
                  "samples of every class let repair protect each of them")


def _render(report: auditor.Report) -> None:
    table = Table(title="most suspicious layers", show_lines=False)
    for column in ("unit", "op", "channels", "layer score", "top channels (score)"):
        table.add_column(column)
    layers = [layer for layer in report.layers if layer.prunable]
    ranked = sorted(layers, key=lambda layer: -max(r.score for r in layer.records))[:8]
    for layer in ranked:
        top = sorted(layer.records, key=lambda r: (-r.score, r.channel))[:4]
        table.add_row(layer.unit, layer.op, str(layer.channels), f"{max(r.score for r in layer.records):.2f}",
                      ", ".join(f"{r.channel} ({r.score:.2f})" for r in top))
    out.print(table)
    v = report.verdict
    word = "[bold red]SUSPICIOUS[/]" if v["suspicious"] else "[bold green]clean[/]"
    out.print(f"verdict: {word}  score {v['score']:.3f} vs threshold {v['threshold']:.3f} ({basis_text(v)})")


def _check_verdict(report: auditor.Report) -> None:
    """A NaN score compares as 'not suspicious': never let it pass the gate as clean."""
    if not math.isfinite(report.verdict["score"]):
        raise auditor.ModelError("the audit produced no finite score: the model computes NaN or Inf on the clean samples")


@app.command()
def scan(model: ModelArg, data: DataOpt, limit: LimitOpt = None, method: MethodOpt = "sus",
         device: DeviceOpt = "auto", threshold: ThresholdOpt = None, json: JsonOpt = None,
         sarif: SarifOpt = None, html: HtmlOpt = None, force: ForceOpt = False, patch_search: PatchOpt = True,
         fourier_probe: FourierOpt = True, threads: ThreadsOpt = None) -> None:
    """Probe for a shortcut (corruptions, a patch, a Fourier pattern), score every channel; exit 1 when it looks backdoored."""
    def work():
        _outputs([json, sarif, html], force, _inputs(model, data))
        report = auditor.audit(model, data, limit=limit, method=method, device=device, threshold=threshold,
                               patch_search=patch_search, fourier_probe=fourier_probe, threads=threads, notice=_note)
        _check_verdict(report)
        _say_provider(report)
        _render(report)
        _write_reports(report, json, sarif, html)
        return report
    report = _guarded(work)
    raise typer.Exit(EXIT_SUSPICIOUS if report.suspicious else EXIT_CLEAN)


@app.command(name="repair")
def repair_command(
    model: ModelArg, data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the repaired model.", show_default=False)],
    limit: LimitOpt = None, method: MethodOpt = "sus", device: DeviceOpt = "auto", threshold: ThresholdOpt = None,
    max_prune: Annotated[Optional[float], typer.Option(
        "--max-prune", help="At most this many channels (>= 1) or this fraction of all (< 1).")] = None,
    floor: Annotated[float, typer.Option(
        "--floor", help="Least agreement with the original on augmented clean samples.")] = auditor.api.DEFAULT_FLOOR,
    layer_cap: Annotated[float, typer.Option(
        "--layer-cap", help="At most this fraction of one layer's channels.")] = auditor.api.DEFAULT_LAYER_CAP,
    max_divergence: Annotated[float, typer.Option(
        "--max-divergence", help="Largest mean KL(original || repaired) on augmented clean samples, in nats.",
    )] = auditor.api.DEFAULT_MAX_DIVERGENCE,
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
    patch_search: PatchOpt = True,
    fourier_probe: FourierOpt = True,
    threads: ThreadsOpt = None,
) -> None:
    """Bound activations, filter out a found trigger, unlearn its shortcut, as far as fidelity allows; write the model."""
    def work():
        if triggered is not None and test is None:
            raise auditor.DataError("--triggered needs --test too (the clean test set that measures accuracy)")
        _outputs([output, json, sarif, html], force, _inputs(model, data, test, triggered))
        # The test and triggered sets are measured on the original first: a bad one is refused
        # before the repaired model is written, not after.
        before = None if test is None else auditor.evaluate(model, test, triggered=triggered, target=target, device=device,
                                                            threads=threads)
        report = auditor.repair(model, data, output, limit=limit, method=method, device=device, threshold=threshold,
                                max_prune=max_prune, floor=floor, layer_cap=layer_cap,
                                max_divergence=max_divergence, force=force, bound=bound, zero=zero, unlearning=unlearn,
                                patch_search=patch_search, fourier_probe=fourier_probe, notch=notch,
                                occlude=occlude, threads=threads, notice=_note)
        _say_provider(report)
        _render(report)
        r = report.repair
        factor = r["bound"]["factor"]
        clamped = r["bound"].get("input_radius")
        capped = f"capped {r['bound']['units']} layers at {factor:g}x their clean maxima" if factor is not None else ""
        if capped and r["bound"]["position"]:
            capped += f" and per position (radius {r['bound']['position']['radius']})"
        if clamped is not None:
            capped = f"clamped inputs to their clean range (radius {clamped})" + (f", {capped}" if capped else "")
        capped += ", " if capped else ""
        out.print(f"repair: {capped}zeroed {r['count']} channels in {len(r['zeroed'])} layers "
                  f"(agreement {r['agreement']:.3f} >= {r['floor']}, divergence {r['divergence']:.4f} <= {r['max_divergence']}) "
                  f"-> {r['output']}")
        notched = r.get("notch")
        weak = " (a weak verdict: within tighter fidelity bounds)"
        if notched is not None and notched["applied"]:
            out.print(f"notch: removed {notch_text(notched)}, the found Fourier pattern's, from the image input"
                      + (weak if notched["weak"] else ""))
        elif notched is not None and notched["frequency"] is not None:
            out.print(f"notch: not applied: {notched['reason']}")
        occluded = r.get("occlusion")
        if occluded is not None and occluded["applied"]:
            out.print(f"occlusion: covered {window_text(occluded['window'])}, around the found patch, with "
                      f"{fill_text(occluded.get('fill') or 'mean')}"
                      + (weak if occluded["weak"] else ""))
        elif occluded is not None and occluded["window"] is not None:
            out.print(f"occlusion: not applied: {occluded['reason']}")
        unlearned = r.get("unlearning")
        if unlearned is not None and unlearned["applied"]:
            kind = {"patch": "patched", "fourier": "perturbed"}.get(report.verdict.get("basis"), "corrupted")
            out.print(f"unlearning: refit the head's row for class {unlearned['target']} on {unlearned['surrogates']} {kind} "
                      f"samples it took and {unlearned['anchors']} clean samples of that class "
                      f"(their weight {unlearned['weight']:g}, penalty {unlearned['strength']:g})")
            if before is None:
                t, k = unlearned["target"], unlearned["anchors"]
                out.print(f"caution: class {t}'s own accuracy was guarded by {k} clean sample{'s' if k != 1 else ''} of it "
                          f"only, and unlearning can cost that class more than the agreement shows: check it with "
                          f"--test TEST.npz --target {t}")
        elif unlearned is not None and report.verdict.get("basis") in SHORTCUT_BASES and report.verdict["suspicious"]:
            out.print(f"unlearning: not applied: {unlearned['reason']}")
        left = r.get("probe")
        if left is not None and report.verdict["suspicious"]:
            side = ">=" if left["above_threshold"] else "<"
            line = (f"after repair: class {left['suspected_target']} takes {left['suspected_target_share']:.3f} of the corrupted "
                    f"samples ({side} threshold {report.verdict['threshold']:.3f}, was {report.verdict['score']:.3f})")
            if left["target"] is not None and left["target"] != left["suspected_target"]:
                line += f"; the largest share is now class {left['target']}'s, {left['score']:.3f} under {left['corruption']}"
            out.print(line)
        for key, found in (("patch", "the found patch"), ("fourier", "the found Fourier pattern")):
            moved = r.get(key)
            if moved is not None and report.verdict["suspicious"]:
                out.print(f"after repair: {found} sends {moved['share_after']:.3f} of the other clean samples to "
                          f"class {moved['target']} (was {moved['share_before']:.3f})")
        if before is not None:
            after = auditor.evaluate(output, test, triggered=triggered, target=target, device=device, threads=threads)
            report.repair["evaluation"] = {"before": before.to_dict(), "after": after.to_dict()}
            _render_before_after(before, after)
        _write_reports(report, json, sarif, html)
        return report
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
    threads: ThreadsOpt = None,
) -> None:
    """Accuracy on labelled data, attack success rate on triggered data, agreement with a reference."""
    def work():
        _outputs([json], force, _inputs(model, data, triggered, reference))
        result = auditor.evaluate(model, data, triggered=triggered, target=target, reference=reference,
                                  limit=limit, device=device, threads=threads)
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
        if json is not None:
            import json as json_module
            model_io.write_atomic(json, (json_module.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n").encode())
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
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so partial outputs are removed; a second
    SIGTERM is ignored so that the clean-up it started is not itself interrupted."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt:  # came before typer's own handling began (building the command)
        _say_interrupted()
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer turned it into a silent exit while parsing the options
            _say_interrupted()
        raise
    finally:
        # The work is done (or undone): from here a SIGTERM must not turn the exit status into a
        # kill. Python restores the default action for handled signals while it shuts down, but
        # leaves an ignored one ignored.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
