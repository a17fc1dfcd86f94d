"""Hostile and broken inputs through the real CLI: one line, exit code 2, no traceback,
nothing written, the inputs unchanged. Every model is a real ONNX file run by onnxruntime."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from builders import EXAMPLE, ROOT, sha256, tree
from onnx import TensorProto, helper
from typer.testing import CliRunner

from auditor import model as model_io
from auditor import runtime
from cli import app

RUNNER = CliRunner()
EXTENSIONS = {"scan": "report.json", "repair": "repaired.onnx", "evaluate": "result.json"}


def invoke(*args: object):
    """The real CLI in-process, with a wide terminal and without the debug switch."""
    return RUNNER.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "AUDITOR_DEBUG": None})


def command_args(command: str, model: Path, data: Path, out: Path, *extra: object) -> list[object]:
    """`command` on model and data, writing its one output to `out`."""
    flag = "-o" if command == "repair" else "--json"
    return [command, model, "--data", data, flag, out, *extra]


def error_line(result) -> str:
    """The single non-empty line the CLI wrote to stderr (asserts there is exactly one)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def assert_clean_exit(result) -> None:
    """No exception escaped the CLI and no traceback was printed."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


@dataclass
class Guarded:
    """Hashes and file listing of a folder before a command, to prove nothing changed after it."""

    folder: Path
    files: set[str]
    hashes: dict[str, str]
    top: set[str]

    @classmethod
    def take(cls, folder: Path) -> Guarded:
        hashes = {str(p): sha256(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}
        return cls(folder, tree(folder), hashes, set(os.listdir(ROOT)))

    def unchanged(self) -> None:
        assert tree(self.folder) == self.files, "files appeared or vanished"
        assert {p: sha256(Path(p)) for p in self.hashes} == self.hashes, "an input changed"
        assert set(os.listdir(ROOT)) == self.top, "something was written into the working directory"


def refuse(command: str, model: Path, data: Path, pattern: str, *extra: object, folder: Path | None = None) -> str:
    """Run `command`, assert it is refused with one line matching `pattern`, exit 2, nothing written."""
    folder = folder or model.parent
    out = folder / EXTENSIONS[command]
    before = Guarded.take(folder)
    result = invoke(*command_args(command, model, data, out, *extra))
    assert_clean_exit(result)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith("error: "), line
    assert re.search(pattern, line, re.IGNORECASE), f"{line!r} does not match {pattern!r}"
    assert not out.exists()
    before.unchanged()
    return line


def mlp_case(tmp: Path) -> tuple[Path, Path]:
    """A valid small model and valid data in `tmp`."""
    return builders.mlp(tmp / "model.onnx"), builders.data(tmp / "clean.npz")


def example_case(tmp: Path) -> tuple[Path, Path]:
    """Copies of the bundled example model and clean samples in `tmp`."""
    return Path(shutil.copy(EXAMPLE / "model.onnx", tmp)), Path(shutil.copy(EXAMPLE / "clean.npz", tmp))


# ---- the valid baselines ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
def test_valid_example_runs(command: str, tmp_path: Path) -> None:
    model, data = example_case(tmp_path)
    hashes = {model: sha256(model), data: sha256(data)}
    out = tmp_path / EXTENSIONS[command]
    result = invoke(*command_args(command, model, data, out, "--limit", "10"))
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output
    assert out.is_file()
    if command == "repair":
        onnx.checker.check_model(onnx.load(str(out)))
    assert tree(tmp_path) == {"model.onnx", "clean.npz", out.name}
    assert {p: sha256(p) for p in hashes} == hashes


def test_valid_small_model_scans(tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    result = invoke(*command_args("scan", model, data, tmp_path / "report.json"))
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output


# ---- files --------------------------------------------------------------------------------------

def _truncated(tmp: Path, keep: float) -> Path:
    raw = (EXAMPLE / "model.onnx").read_bytes()
    path = tmp / "model.onnx"
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def _corrupt(tmp: Path) -> Path:
    raw = bytearray((EXAMPLE / "model.onnx").read_bytes())
    rng = np.random.default_rng(3)
    for position in rng.integers(0, 400, 40):  # the graph's structure lives at the front
        raw[position] = int(rng.integers(0, 256))
    path = tmp / "model.onnx"
    path.write_bytes(bytes(raw))
    return path


def _external_symlink(tmp: Path) -> Path:
    folder = tmp / "m"
    folder.mkdir()
    outside = tmp / "outside"
    outside.mkdir()
    path = builders.external(folder, "w1.bin")
    shutil.move(folder / "w1.bin", outside / "w1.bin")
    (folder / "w1.bin").symlink_to(outside / "w1.bin")
    return path


def _external_dotdot(tmp: Path) -> Path:
    folder = tmp / "m"
    folder.mkdir()
    return builders.external(folder, "../outside/w1.bin")


def _external_truncated(tmp: Path) -> Path:
    path = builders.external(tmp, "w1.bin")
    (tmp / "w1.bin").write_bytes((tmp / "w1.bin").read_bytes()[:40])
    return path


def _lying_input(tmp: Path) -> Path:
    """Declares 5 features per sample; the first layer's weights take 4."""
    return builders.mlp(tmp / "model.onnx", x_shape=("N", builders.FEATURES + 1))


def _lying_initializer(tmp: Path) -> Path:
    """W1's dims say [4, 8] but its bytes hold [4, 7]."""
    model = builders.make_model(builders.mlp_graph())
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    w1.raw_data = np.ones((builders.FEATURES, builders.HIDDEN - 1), np.float32).tobytes()
    return builders.save(model, tmp / "model.onnx")


def _lying_value_info(tmp: Path) -> Path:
    """An intermediate tensor declared [N, 99] where the graph computes [N, 8]."""
    info = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 99])
    return builders.mlp(tmp / "model.onnx", value_info=[info])


def _data_for(model_builder: Callable[[Path], Path], features: int = builders.FEATURES):
    def build(tmp: Path) -> tuple[Path, Path]:
        return model_builder(tmp), builders.data(tmp / "clean.npz", features=features)
    return build


def _invalid_utf8(tmp: Path) -> Path:
    """The operator name 'Relu' with one byte replaced: not UTF-8, which onnx's C++ cannot take."""
    raw = builders.mlp(tmp / "model.onnx").read_bytes()
    at = raw.index(b"Relu")
    (tmp / "model.onnx").write_bytes(raw[:at] + b"R\xfflu" + raw[at + 4 :])
    return tmp / "model.onnx"


def _directory(tmp: Path) -> Path:
    path = tmp / "model.onnx"
    path.mkdir()
    return path


def _text(tmp: Path) -> Path:
    path = tmp / "model.onnx"
    path.write_text("name,score\nfoo,1\n")
    return path


def _npz_as_model(tmp: Path) -> Path:
    return Path(shutil.copy(EXAMPLE / "clean.npz", tmp / "model.onnx"))


def _empty(tmp: Path) -> Path:
    path = tmp / "model.onnx"
    path.write_bytes(b"")
    return path


FILE_CASES = {
    "empty": (_empty, r"empty \(0 bytes\)"),
    "truncated-early": (lambda t: _truncated(t, 0.01), r"corrupt or truncated|not a valid ONNX|no nodes"),
    "truncated-half": (lambda t: _truncated(t, 0.5), r"corrupt or truncated|not a valid ONNX|no nodes"),
    "truncated-last-bytes": (lambda t: _truncated(t, 0.9999), r"corrupt or truncated|not a valid ONNX|no nodes"),
    "corrupt": (_corrupt, r"corrupt|not a valid ONNX|no nodes|not a readable"),
    "directory": (_directory, r"is a directory"),
    "text-file": (_text, r"not a readable ONNX model .*re-export or re-download it"),
    "npz-as-model": (_npz_as_model, r"not a readable ONNX model .*re-export or re-download it"),
    "external-absolute": (lambda t: builders.external(t, str(t / "elsewhere" / "w1.bin")), r"not a relative path"),
    "external-dotdot": (_external_dotdot, r"escapes the model's folder"),
    "external-symlink": (_external_symlink, r"escapes the model's folder"),
    "external-missing": (lambda t: builders.external(t, "w1.bin", write_data=False), r"external data file .* is missing"),
    "external-truncated": (_external_truncated, r"shorter than|truncated"),
    "external-bad-offset": (lambda t: builders.external(t, "w1.bin", offset="-4"), r"negative"),
    "external-huge-length": (lambda t: builders.external(t, "w1.bin", length=str(2**62)), r"shorter than|truncated"),
    "lying-initializer": (_lying_initializer, r"W1"),
    "invalid-utf8-operator": (_invalid_utf8, r"operator b'R\\xfflu' is not valid UTF-8"),
}


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
@pytest.mark.parametrize("case", FILE_CASES, ids=str)
def test_bad_model_file(case: str, command: str, tmp_path: Path) -> None:
    build, pattern = FILE_CASES[case]
    model = build(tmp_path)
    data = builders.data(tmp_path / "clean.npz") if model.parent == tmp_path else builders.data(model.parent / "clean.npz")
    refuse(command, model, data, pattern, folder=tmp_path)


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
def test_missing_model_file(command: str, tmp_path: Path) -> None:
    data = builders.data(tmp_path / "clean.npz")
    refuse(command, tmp_path / "absent.onnx", data, r"not found")


def _lying_output(tmp: Path) -> Path:
    """Declares 7 classes; the head computes 3."""
    return builders.mlp(tmp / "model.onnx", out_shape=("N", 7))


LYING_SHAPES = {
    "input-declares-5-features": (_data_for(_lying_input, builders.FEATURES + 1), r"declared shapes contradict.*'fc1'.*4 and 5"),
    "value-info-declares-99": (_data_for(_lying_value_info), r"declared shapes contradict.*'fc1'.*\(8\) vs \(99\)"),
    "output-declares-7": (_data_for(_lying_output), r"declared shapes contradict.*'fc2'.*\(3\) vs \(7\)"),
}


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
@pytest.mark.parametrize("case", LYING_SHAPES, ids=str)
def test_model_whose_shapes_lie(case: str, command: str, tmp_path: Path) -> None:
    build, pattern = LYING_SHAPES[case]
    model, data = build(tmp_path)
    refuse(command, model, data, pattern)


# ---- graphs -------------------------------------------------------------------------------------

def _quantized(builder: Callable[[Path], Path], shape: tuple[int, ...]):
    def build(tmp: Path) -> tuple[Path, Path]:
        path = builder(tmp / "model.onnx")
        x = np.random.default_rng(0).normal(size=(12, *shape)).astype(np.float32)
        np.savez(tmp / "clean.npz", x=x)
        return path, tmp / "clean.npz"
    return build


def _model(builder: Callable[..., Path], *args: object):
    """A builder of `builder(tmp / "model.onnx", *args)` with valid data beside it."""
    return _data_for(lambda tmp: builder(tmp / "model.onnx", *args))


GRAPH_CASES = {
    "custom-domain": (_model(builders.custom_op), r"custom operator 'Exfiltrate' from domain 'com.evil'"),
    "unknown-op": (_model(builders.unknown_op), r"unknown operator 'TotallyRelu'"),
    "opset-from-the-future": (_model(builders.opset, 999), r"opset 999 is newer"),
    "opset-zero": (_model(builders.opset, 0), r"opset 0 .*not a valid"),
    "ml-opset-from-the-future": (_model(builders.ml_opset, 99), r"opset 99 of domain 'ai.onnx.ml' is newer"),
    "no-prunable-unit": (_model(builders.head_only), r"no prunable unit"),
    "if": (_model(builders.control_flow, "If"), r"control flow \(If\)"),
    "loop": (_model(builders.control_flow, "Loop"), r"control flow \(Loop\)"),
    "scan": (_model(builders.control_flow, "Scan"), r"control flow \(Scan\)"),
    "qlinearconv": (_quantized(builders.qlinear_conv, (1, 8, 8)), r"quantized"),
    "qdq": (_quantized(builders.qdq_mlp, (builders.FEATURES,)), r"quantized"),
    "zipmap": (_model(builders.zipmap), r"ZipMap.*zipmap': False"),
    "zipmap-only": (_model(builders.zipmap, False), r"ZipMap"),
    "label-only": (_model(builders.label_only), r"no float output with class scores.*'label'"),
}


@pytest.mark.parametrize("command", ["scan", "repair"])
@pytest.mark.parametrize("case", GRAPH_CASES, ids=str)
def test_graph_auditor_cannot_audit(case: str, command: str, tmp_path: Path) -> None:
    build, pattern = GRAPH_CASES[case]
    model, data = build(tmp_path)
    refuse(command, model, data, pattern)


def test_old_opset_is_converted_and_said(tmp_path: Path) -> None:
    """Opset 6 predates onnxruntime's kernels: converted to 13, and the JSON report says so."""
    graph = builders.mlp_graph()
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in graph.initializer)  # IR 3 wants them
    model = builders.save(builders.make_model(graph, opset=6, ir_version=3), tmp_path / "model.onnx")
    data = builders.data(tmp_path / "clean.npz")
    digest = sha256(model)
    result = invoke(*command_args("scan", model, data, tmp_path / "report.json"))
    assert_clean_exit(result)
    if result.exit_code == 2:
        assert re.search(r"opset 6", error_line(result))
    else:
        assert result.exit_code in (0, 1), result.output
        assert "opset 6 converted to 13" in (tmp_path / "report.json").read_text()
    assert sha256(model) == digest


def test_opset_newer_than_the_runtime_is_converted_and_said(tmp_path: Path) -> None:
    """onnx may know opsets onnxruntime does not run yet: converted down, and the report says so."""
    newest, runnable = onnx.defs.onnx_opset_version(), runtime.max_opset()
    if newest <= runnable:
        pytest.skip(f"onnxruntime runs every opset this onnx knows ({newest})")
    model = builders.opset(tmp_path / "model.onnx", newest)
    result = invoke(*command_args("scan", model, builders.data(tmp_path / "clean.npz"), tmp_path / "report.json"))
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output
    assert f"opset {newest} converted to {runnable}" in (tmp_path / "report.json").read_text()


@pytest.mark.parametrize("command", ["scan", "repair"])
def test_probabilities_output_is_audited(command: str, tmp_path: Path) -> None:
    """A model that ends in Softmax (probabilities, not logits) is still a classifier to audit."""
    graph = builders.mlp_graph()
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", builders.CLASSES]))
    model = builders.save(builders.make_model(graph), tmp_path / "model.onnx")
    out = tmp_path / EXTENSIONS[command]
    result = invoke(*command_args(command, model, builders.data(tmp_path / "clean.npz"), out))
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output
    assert out.is_file()


def test_multiple_inputs_and_outputs_are_audited(tmp_path: Path) -> None:
    model = builders.two_inputs(tmp_path / "model.onnx")
    x = np.random.default_rng(1).normal(size=(20, builders.FEATURES)).astype(np.float32)
    np.savez(tmp_path / "clean.npz", a=x[:, :3], b=x[:, 3:])
    result = invoke(*command_args("scan", model, tmp_path / "clean.npz", tmp_path / "report.json"))
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output
    assert (tmp_path / "report.json").is_file()


# ---- data ---------------------------------------------------------------------------------------

def _npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        np.savez(tmp / "clean.npz", **arrays)
        return tmp / "clean.npz"
    return build


def _x(count: int = 20, features: int = builders.FEATURES, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, features)).astype(dtype)


def _with(value: float) -> np.ndarray:
    x = _x()
    x[3, 1] = value
    return x


def _bytes(payload: bytes, name: str = "clean.npz") -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_bytes(payload)
        return tmp / name
    return build


def _truncated_npz(tmp: Path) -> Path:
    builders.data(tmp / "full.npz")
    raw = (tmp / "full.npz").read_bytes()
    (tmp / "full.npz").unlink()
    (tmp / "clean.npz").write_bytes(raw[: len(raw) // 2])
    return tmp / "clean.npz"


def _data_directory(tmp: Path) -> Path:
    (tmp / "clean.npz").mkdir()
    return tmp / "clean.npz"


DATA_CASES = {
    "wrong-shape": (_npz(x=_x(features=5)), r"shape \(5,\).*expects \(4,\)"),
    "wrong-rank": (_npz(x=_x()[:, :, None]), r"shape \(4, 1\).*expects \(4,\)"),
    "string-dtype": (_npz(x=np.array([["a"] * 4] * 20)), r"dtype <U1; numeric arrays only"),
    "complex-dtype": (_npz(x=_x().astype(np.complex64)), r"complex64; numeric arrays only"),
    "scalar": (_npz(x=np.float32(1.0)), r"scalar"),
    "no-x": (_npz(images=_x()), r"no array 'x' \(found: images\); save the samples under that name"),
    "extra-array": (_npz(x=_x(), z=_x()), r"\['z'\] that match no model input"),
    "nan": (_npz(x=_with(np.nan)), r"NaN or Inf"),
    "inf": (_npz(x=_with(np.inf)), r"NaN or Inf"),
    "too-large-for-float32": (_npz(x=_x(dtype=np.float64) * 1e300), r"too large"),
    "empty-file": (_bytes(b""), r"empty \(0 bytes\)"),
    "no-samples": (_npz(x=_x(count=0)), r"holds no samples"),
    "fewer-than-limit": (_npz(x=_x(count=5)), r"holds 5 samples, fewer than --limit 10"),
    "negative-labels": (_npz(x=_x(), y=-np.ones(20, np.int64)), r"non-negative class indices"),
    "float-labels": (_npz(x=_x(), y=np.zeros(20, np.float32)), r"1-D integer array"),
    "label-count": (_npz(x=_x(), y=np.zeros(7, np.int64)), r"7 labels for 20 samples"),
    "truncated-npz": (_truncated_npz, r"corrupt or truncated"),
    "lying-npy-header": (lambda t: builders.npz_members(t / "clean.npz", {"x.npy": builders.lying_npy((20, 4), _x(10))}),
                         r"declares shape \(20, 4\) \(320 bytes\) but holds 160"),
    "not-npy-member": (lambda t: builders.npz_members(t / "clean.npz", {"x.txt": b"1,2,3"}), r"'x.txt' is not a .npy"),
    "text-file": (_bytes(b"0.1,0.2,0.3,0.4\n"), r"not an .npz or .npy"),
    "onnx-as-data": (_bytes((EXAMPLE / "model.onnx").read_bytes()[:4096]), r"not an .npz or .npy"),
    "directory": (_data_directory, r"is a directory"),
    "missing": (lambda t: t / "absent.npz", r"not found"),
}


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
@pytest.mark.parametrize("case", DATA_CASES, ids=str)
def test_bad_data(case: str, command: str, tmp_path: Path) -> None:
    build, pattern = DATA_CASES[case]
    model = builders.mlp(tmp_path / "model.onnx")
    data = build(tmp_path)
    extra = ("--limit", "10") if case == "fewer-than-limit" else ()
    refuse(command, model, data, pattern, *extra)


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
def test_pickles_are_never_unpickled(command: str, tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "model.onnx")
    marker = tmp_path / "detonated"
    for data, pattern in ((builders.pickled_npz(tmp_path / "clean.npz", marker), r"Python objects \(pickle\)"),
                          (builders.raw_pickle(tmp_path / "clean.pkl", marker), r"is a Python pickle")):
        refuse(command, model, data, pattern)
        assert not marker.exists(), "the loader unpickled the data"


def test_layout_nhwc_for_nchw_model(tmp_path: Path) -> None:
    model, _ = example_case(tmp_path)
    x = np.load(EXAMPLE / "clean.npz")["x"]
    np.savez(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1))
    for command in ("scan", "repair", "evaluate"):
        refuse(command, model, tmp_path / "nhwc.npz", r"\(28, 28, 1\).*expects \(1, 28, 28\).*NCHW vs NHWC", "--limit", "10")


def test_integer_input_refuses_float_data(tmp_path: Path) -> None:
    """A token-id input (int64) fed floats: refused by dtype, not silently truncated."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["x"], to=TensorProto.FLOAT), *builders.mlp_graph().node],
        "ids", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", builders.FEATURES])],
        list(builders.mlp_graph().output), list(builders.mlp_graph().initializer))
    model = builders.save(builders.make_model(graph), tmp_path / "model.onnx")
    refuse("scan", model, builders.data(tmp_path / "clean.npz"), r"model input 'ids' is int64, data is float32")


def test_missing_input_name(tmp_path: Path) -> None:
    model = builders.two_inputs(tmp_path / "model.onnx")
    np.savez(tmp_path / "clean.npz", a=_x()[:, :3])
    for command in ("scan", "repair", "evaluate"):
        refuse(command, model, tmp_path / "clean.npz", r"lacks arrays for model inputs \['b'\]")


def test_labels_out_of_range(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "model.onnx")
    data = builders.data(tmp_path / "clean.npz", y=np.full(20, 7, np.int64))
    refuse("evaluate", model, data, r"label 7 is out of range for a model with 3 classes")
    test = builders.data(tmp_path / "test.npz", y=np.full(20, 7, np.int64))
    refuse("repair", model, builders.data(tmp_path / "ok.npz"), r"label 7 is out of range", "--test", test)
    refuse("scan", model, data, r"clean.npz: label 7 is out of range for a model with 3 classes")
    refuse("repair", model, data, r"clean.npz: label 7 is out of range for a model with 3 classes")


@pytest.mark.parametrize("target, triggered, pattern", [
    (None, True, r"--triggered needs --target"),
    (9, True, r"--target 9 is not a class of the model \(0..2\)"),
])
def test_evaluate_target(target, triggered, pattern: str, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    attacked = builders.data(tmp_path / "triggered.npz", seed=4)
    extra = ["--triggered", attacked] + ([] if target is None else ["--target", target])
    refuse("evaluate", model, data, pattern, *extra)


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
@pytest.mark.parametrize("threads", [0, -2])
def test_threads_below_one_are_refused(command: str, threads: int, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    refuse(command, model, data, rf"--threads {threads}: give a whole number of at least 1", "--threads", threads)


def test_threads_change_the_speed_not_the_report(tmp_path: Path) -> None:
    """One onnxruntime thread per session gives the same report as the default, but for the
    thread count it records and the wall times (which differ between any two runs)."""
    model, data = example_case(tmp_path)
    reports = {}
    for extra in ((), ("--threads", "1")):
        out = tmp_path / f"report{len(extra)}.json"
        result = invoke(*command_args("scan", model, data, out, "--limit", "10", *extra))
        assert_clean_exit(result)
        assert result.exit_code == 1, result.output
        reports[extra] = json.loads(out.read_text())
        assert ("1 thread" in result.output) == bool(extra), result.output
    default, single = reports.values()
    assert default["provider"]["threads"] is None and single["provider"]["threads"] == 1
    single["provider"]["threads"] = None
    for report in (default, single):
        report.pop("timings")
    assert single == default


def test_evaluate_says_and_records_its_thread_count(tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    for extra, threads in (((), None), (("--threads", "2"), 2)):
        out = tmp_path / f"evaluation{len(extra)}.json"
        result = invoke(*command_args("evaluate", model, data, out, *extra))
        assert_clean_exit(result)
        assert result.exit_code == 0, result.output
        assert ("2 threads" in result.output) == (threads == 2), result.output
        assert json.loads(out.read_text())["threads"] == threads


# ---- outputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
def test_existing_output_needs_force(command: str, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    out = tmp_path / EXTENSIONS[command]
    out.write_text("keep me")
    before = Guarded.take(tmp_path)
    result = invoke(*command_args(command, model, data, out))
    assert_clean_exit(result)
    assert result.exit_code == 2
    assert re.search(r"already exists; pass --force", error_line(result))
    before.unchanged()
    result = invoke(*command_args(command, model, data, out, "--force"))
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output
    assert out.read_bytes() != b"keep me"
    assert tree(tmp_path) == before.files


def _unwritable(tmp: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "out"
    return Path("/proc") / f"auditor-test-{os.getpid()}"  # root may write anywhere but here


OUTPUT_CASES = {
    "is-a-directory": (lambda t: (t / "outdir").mkdir() or t / "outdir", r"is a directory"),
    "folder-missing": (lambda t: t / "nowhere" / "out", r"output folder does not exist"),
    "parent-is-a-file": (lambda t: t / "clean.npz" / "out", r"is a file, not a folder"),
    "not-writable": (_unwritable, r"not writable|cannot write.*choose a writable output folder"),
    "is-the-model": (lambda t: t / "model.onnx", r"would overwrite an input"),
    "is-the-data": (lambda t: t / "clean.npz", r"would overwrite an input"),
    "symlink-to-model": (lambda t: (t / "link").symlink_to(t / "model.onnx") or t / "link", r"would overwrite an input"),
}


@pytest.mark.parametrize("command", ["scan", "repair", "evaluate"])
@pytest.mark.parametrize("case", OUTPUT_CASES, ids=str)
def test_bad_output_path(case: str, command: str, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    build, pattern = OUTPUT_CASES[case]
    out = build(tmp_path)
    before = Guarded.take(tmp_path)
    result = invoke(*command_args(command, model, data, out, "--force"))
    assert_clean_exit(result)
    assert result.exit_code == 2, result.output
    assert re.search(pattern, error_line(result)), error_line(result)
    before.unchanged()
    if case == "not-writable" and os.geteuid() == 0:
        assert not out.exists()


def test_same_path_for_two_outputs(tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    before = Guarded.take(tmp_path)
    result = invoke("repair", model, "--data", data, "-o", tmp_path / "x", "--json", tmp_path / "x")
    assert_clean_exit(result)
    assert result.exit_code == 2
    assert "is given for two outputs" in error_line(result)
    before.unchanged()


def test_interrupted_write_leaves_old_output_or_nothing(tmp_path: Path) -> None:
    """A real KeyboardInterrupt half-way through writing: the target is absent (or keeps its old
    bytes) and no temporary file is left in the folder."""
    def half_then_interrupt(handle) -> None:
        handle.write(b"x" * 100_000)
        raise KeyboardInterrupt

    target = tmp_path / "repaired.onnx"
    with pytest.raises(KeyboardInterrupt):
        model_io.write_atomic(target, half_then_interrupt)
    assert tree(tmp_path) == set()
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        model_io.write_atomic(target, half_then_interrupt)
    assert tree(tmp_path) == {"repaired.onnx"} and target.read_bytes() == b"old"


def _wait_for_sigterm_handler(pid: int, timeout: float = 60) -> None:
    """Until the CLI has installed its SIGTERM handler (Linux: bit 15 of SigCgt in /proc/PID/status):
    a signal before then ends the interpreter during its imports, before any work began."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.02)
    raise AssertionError("the CLI never installed its SIGTERM handler")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to know when the CLI is ready")
@pytest.mark.parametrize("delay", [0.0, 0.8])
def test_sigterm_during_repair(delay: float, tmp_path: Path) -> None:
    """CI cancelling the job (SIGTERM) at some point of a real repair: the output is complete and
    valid or absent, nothing else appears, the inputs are unchanged."""
    model, data = example_case(tmp_path)
    before = Guarded.take(tmp_path)
    out = tmp_path / "repaired.onnx"
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    env.pop("AUDITOR_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "cli", "repair", str(model), "--data", str(data), "-o", str(out),
                                "--limit", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_for_sigterm_handler(process.pid)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stdout + stderr
    # Python may end an interrupted run by re-raising SIGINT on itself: a shell reports that as 130 too.
    assert process.returncode in (0, 130, -signal.SIGINT), f"exit {process.returncode}: {stderr!r} {stdout[-300:]!r}"
    if process.returncode != 0:
        assert stderr.strip().splitlines() == ["interrupted: no partial output was left behind"]
        assert not out.exists()
        before.unchanged()
    else:
        onnx.checker.check_model(onnx.load(str(out)))
        assert tree(tmp_path) == before.files | {out.name}
    assert {p: sha256(Path(p)) for p in before.hashes} == before.hashes


def test_a_model_over_2_gib_with_external_data_is_audited_not_refused(tmp_path: Path) -> None:
    """A real 2.1 GiB embedding table in external data (sparse on disk). Protobuf cannot hold the
    whole model in one message, so every size check and the session take the large-model path.
    About a minute and 9 GB of memory on a 2-core machine."""
    model = builders.big_external(tmp_path)
    data = builders.big_data(tmp_path / "clean.npz")
    report_path = tmp_path / "out" / "report.json"
    report_path.parent.mkdir()
    before = {p.name: sha256(p) for p in (model, tmp_path / "embedding.bin")}
    result = invoke("scan", model, "--data", data, "--json", report_path)
    assert_clean_exit(result)
    assert result.exit_code in (0, 1), result.output
    report = json.loads(report_path.read_text())
    assert report["verdict"]["basis"] == "margin" and report["data"]["samples"] == 20
    assert {layer["unit"] for layer in report["layers"]} == {"fc1", "fc2"}
    assert {p.name: sha256(p) for p in (model, tmp_path / "embedding.bin")} == before


def _full_disk_run(out_dir: Path, preexec=None) -> subprocess.CompletedProcess:
    model, clean = EXAMPLE / "model.onnx", EXAMPLE / "clean.npz"
    return subprocess.run([sys.executable, "-m", "cli", "repair", str(model), "--data", str(clean), "--limit", "10",
                           "-o", str(out_dir / "repaired.onnx"), "--json", str(out_dir / "report.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, preexec_fn=preexec,
                          env={**os.environ, "AUDITOR_DEBUG": ""})


def _assert_refused_cleanly(result: subprocess.CompletedProcess, out_dir: Path, before: dict[str, str]) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines
    assert list(out_dir.iterdir()) == []  # no partial model, no temporary file
    assert {name: sha256(EXAMPLE / name) for name in before} == before


def test_the_disk_filling_up_leaves_no_output(tmp_path: Path) -> None:
    """A real 64 KiB tmpfs: the repaired model (about 250 KB) cannot fit."""
    out_dir = tmp_path / "tiny"
    out_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here; the file-size-limit test covers the same path")
    try:
        before = {name: sha256(EXAMPLE / name) for name in ("model.onnx", "clean.npz")}
        result = _full_disk_run(out_dir)
        _assert_refused_cleanly(result, out_dir, before)
        assert re.search(r"no space left on device", result.stderr, re.IGNORECASE)
    finally:
        subprocess.run(["umount", str(out_dir)], capture_output=True)


def test_a_file_size_limit_mid_write_leaves_no_output(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the write fail part-way (EFBIG), as a full disk does, on any machine."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    before = {name: sha256(EXAMPLE / name) for name in ("model.onnx", "clean.npz")}
    result = _full_disk_run(tmp_path, preexec=limit)
    _assert_refused_cleanly(result, tmp_path, before)


def test_version_flag_and_command_print_the_package_version() -> None:
    import auditor

    for args in (["--version"], ["version"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == auditor.__version__
