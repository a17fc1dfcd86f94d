"""Hostile and broken inputs to the io stage (auditor/io: reading models and data, writing outputs),
through the library's entry points: each is refused with the AuditorError of whose fault it is and a
message that says what is wrong, nothing is written, the inputs are unchanged. Every model is a real
ONNX file run by onnxruntime. The CLI's side of the same refusals (one line, exit 2): tests/test_cli.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from builders import sha256, tree
from hostile_cases import (
    DATA_CASES,
    FILE_CASES,
    GRAPH_CASES,
    LYING_SHAPES,
    OUTPUT_CASES,
    Guarded,
    example_case,
    file_case,
    fixed_batch,
    mlp_case,
    one_line,
    x,
)
from onnx import TensorProto, helper

import auditor
from auditor.errors import AuditorError, DataError, ModelError, OutputError
from auditor.io import model as model_io
from auditor.io import runtime

COMMANDS = ("scan", "repair", "evaluate")


def run(command: str, model: Path, data: Path, out: Path, **options):
    """The library's entry point for `command`: audit, repair (writing `out`) or evaluate."""
    if command == "scan":
        return auditor.audit(model, data, **options)
    if command == "repair":
        return auditor.repair(model, data, out, **options)
    return auditor.evaluate(model, data, **options)


def refuse(command: str, model: Path, data: Path, pattern: str, error: type[AuditorError] = AuditorError,
           folder: Path | None = None, **options) -> str:
    """Run `command`; assert it raises `error` with a message matching `pattern`, and writes nothing."""
    folder = folder or model.parent
    out = folder / "repaired.onnx"
    before = Guarded.take(folder)
    with pytest.raises(AuditorError) as raised:
        run(command, model, data, out, **options)
    assert isinstance(raised.value, error), f"{type(raised.value).__name__}, not {error.__name__}: {raised.value}"
    message = one_line(str(raised.value))
    assert re.search(pattern, message, re.IGNORECASE), f"{message!r} does not match {pattern!r}"
    assert not out.exists()
    before.unchanged()
    return message


# ---- the valid baseline -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_the_valid_small_model_and_data_are_read_and_run(command: str, tmp_path: Path) -> None:
    """The builders' model and data, unbroken, go through every stage: the refusals below are the breakage's."""
    model, data = mlp_case(tmp_path)
    hashes = {model: sha256(model), data: sha256(data)}
    result = run(command, model, data, tmp_path / "repaired.onnx")
    if command == "evaluate":
        assert result.samples == 20 and result.accuracy is not None
    else:
        assert result.data["samples"] == 20 and {layer.unit for layer in result.layers} == {"fc1", "fc2"}
    written = {"repaired.onnx"} if command == "repair" else set()
    assert tree(tmp_path) == {"model.onnx", "clean.npz", *written}
    assert {p: sha256(p) for p in hashes} == hashes


# ---- model files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", FILE_CASES, ids=str)
def test_bad_model_file(case: str, command: str, tmp_path: Path) -> None:
    model, data = file_case(case, tmp_path)
    refuse(command, model, data, FILE_CASES[case].pattern, FILE_CASES[case].error, folder=tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_model_file(command: str, tmp_path: Path) -> None:
    data = builders.data(tmp_path / "clean.npz")
    refuse(command, tmp_path / "absent.onnx", data, r"not found", ModelError)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", LYING_SHAPES, ids=str)
def test_model_whose_shapes_lie(case: str, command: str, tmp_path: Path) -> None:
    model, data = LYING_SHAPES[case].build(tmp_path)
    refuse(command, model, data, LYING_SHAPES[case].pattern, LYING_SHAPES[case].error)


def test_a_batch_dimension_fixed_above_one_is_refused(example, tmp_path: Path) -> None:
    """Fixed at 1 the model is audited one sample per run (tests/test_batch.py); fixed at 4 it cannot take other batches."""
    model = fixed_batch(example.model, 4, tmp_path / "model.onnx")
    data = Path(shutil.copy(example.clean, tmp_path / "clean.npz"))
    for command in COMMANDS:
        refuse(command, model, data, r"batch dimension is fixed at 4.*dynamic batch", ModelError)


# ---- graphs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["scan", "repair"])
@pytest.mark.parametrize("case", GRAPH_CASES, ids=str)
def test_graph_auditor_cannot_audit(case: str, command: str, tmp_path: Path) -> None:
    model, data = GRAPH_CASES[case].build(tmp_path)
    refuse(command, model, data, GRAPH_CASES[case].pattern, GRAPH_CASES[case].error)


def test_old_opset_is_converted_and_said(tmp_path: Path) -> None:
    """Opset 6 predates onnxruntime's kernels: converted to 13, and the report says so."""
    graph = builders.mlp_graph()
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in graph.initializer)  # IR 3 wants them
    model = builders.save(builders.make_model(graph, opset=6, ir_version=3), tmp_path / "model.onnx")
    data = builders.data(tmp_path / "clean.npz")
    digest = sha256(model)
    try:
        report = auditor.audit(model, data)
    except ModelError as refused:  # an onnx without the converter's path from 6 may refuse it, in words
        assert re.search(r"opset 6", one_line(str(refused)))
    else:
        assert "opset 6 converted to 13 for onnxruntime" in report.model["notes"]
        assert "opset 6 converted to 13" in report.to_json()
    assert sha256(model) == digest


def test_opset_newer_than_the_runtime_is_converted_and_said(tmp_path: Path) -> None:
    """onnx may know opsets onnxruntime does not run yet: converted down, and the report says so."""
    newest, runnable = onnx.defs.onnx_opset_version(), runtime.max_opset()
    if newest <= runnable:
        pytest.skip(f"onnxruntime runs every opset this onnx knows ({newest})")
    model = builders.opset(tmp_path / "model.onnx", newest)
    report = auditor.audit(model, builders.data(tmp_path / "clean.npz"))
    assert f"opset {newest} converted to {runnable} for onnxruntime" in report.model["notes"]


@pytest.mark.parametrize("command", ["scan", "repair"])
def test_probabilities_output_is_audited(command: str, tmp_path: Path) -> None:
    """A model that ends in Softmax (probabilities, not logits) is still a classifier to audit."""
    graph = builders.mlp_graph()
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", builders.CLASSES]))
    model = builders.save(builders.make_model(graph), tmp_path / "model.onnx")
    out = tmp_path / "repaired.onnx"
    report = run(command, model, builders.data(tmp_path / "clean.npz"), out)
    assert report.data["classes"] == builders.CLASSES and np.isfinite(report.verdict.score)
    if command == "repair":
        repaired = onnx.load(str(out))
        onnx.checker.check_model(repaired)
        assert [o.name for o in repaired.graph.output] == ["probabilities"]


def test_multiple_inputs_and_outputs_are_audited(tmp_path: Path) -> None:
    model = builders.two_inputs(tmp_path / "model.onnx")
    samples = x()
    np.savez(tmp_path / "clean.npz", a=samples[:, :3], b=samples[:, 3:])
    report = auditor.audit(model, tmp_path / "clean.npz")
    assert report.data["samples"] == 20 and np.isfinite(report.verdict.score)


# ---- data -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", DATA_CASES, ids=str)
def test_bad_data(case: str, command: str, tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "model.onnx")
    data = DATA_CASES[case].build(tmp_path)
    options = {"limit": 10} if case == "fewer-than-limit" else {}
    refuse(command, model, data, DATA_CASES[case].pattern, DATA_CASES[case].error, **options)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed, np.save])
def test_only_the_samples_within_the_limit_are_read(save, tmp_path: Path) -> None:
    """A file of many samples read with a limit reads only those (a 1000-sample file scanned with --limit 10
    costs what 10 samples do): a NaN past the limit is never seen, while the counts still come from the
    whole file."""
    from auditor.io import data as data_io

    model, data = mlp_case(tmp_path)
    with np.load(data) as archive:
        x = archive["x"].astype(np.float32)
    many = np.concatenate([x] * 10)
    many[len(x) + 1] = np.nan
    path = tmp_path / ("many.npy" if save is np.save else "many.npz")
    save(path, many) if save is np.save else save(path, x=many, y=np.arange(len(many)) % 3)
    specs = data_io.input_specs(onnx.load(str(model)))
    read = data_io.load(path, specs, limit=len(x))
    assert len(read) == len(x)
    np.testing.assert_array_equal(read.inputs[specs[0].name], x)
    if save is not np.save:
        np.testing.assert_array_equal(read.labels, np.arange(len(x)) % 3)
    with pytest.raises(DataError, match="contain NaN or Inf"):
        data_io.load(path, specs)
    with pytest.raises(DataError, match=rf"holds {len(many)} samples, fewer than the limit of {len(many) + 1}"):
        data_io.load(path, specs, limit=len(many) + 1)
    if save is not np.save:
        short = tmp_path / "short-labels.npz"
        save(short, x=many, y=np.zeros(len(many) - 1, np.int64))
        with pytest.raises(DataError, match=rf"{len(many) - 1} labels for {len(many)} samples"):
            data_io.load(short, specs, limit=len(x))


@pytest.mark.parametrize("limit", [0, -3])
def test_a_limit_below_one_is_refused(limit: int, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    for command in COMMANDS:
        refuse(command, model, data, rf"the sample limit must be at least 1, got {limit}", DataError, limit=limit)


@pytest.mark.parametrize("command", COMMANDS)
def test_pickles_are_never_unpickled(command: str, tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "model.onnx")
    marker = tmp_path / "detonated"
    for data, pattern in ((builders.pickled_npz(tmp_path / "clean.npz", marker), r"Python objects \(pickle\)"),
                          (builders.raw_pickle(tmp_path / "clean.pkl", marker), r"is a Python pickle")):
        refuse(command, model, data, pattern, DataError)
        assert not marker.exists(), "the loader unpickled the data"


def test_layout_nhwc_for_nchw_model(tmp_path: Path) -> None:
    model, _ = example_case(tmp_path)
    with np.load(tmp_path / "clean.npz") as archive:
        np.savez(tmp_path / "nhwc.npz", x=archive["x"].transpose(0, 2, 3, 1))
    for command in COMMANDS:
        refuse(command, model, tmp_path / "nhwc.npz", r"\(28, 28, 1\).*expects \(1, 28, 28\).*NCHW vs NHWC", DataError, limit=10)


def test_integer_input_refuses_float_data(tmp_path: Path) -> None:
    """A token-id input (int64) fed floats: refused by dtype, not silently truncated."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["x"], to=TensorProto.FLOAT), *builders.mlp_graph().node],
        "ids", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", builders.FEATURES])],
        list(builders.mlp_graph().output), list(builders.mlp_graph().initializer))
    model = builders.save(builders.make_model(graph), tmp_path / "model.onnx")
    refuse("scan", model, builders.data(tmp_path / "clean.npz"), r"model input 'ids' is int64, data is float32", DataError)


def test_missing_input_name(tmp_path: Path) -> None:
    model = builders.two_inputs(tmp_path / "model.onnx")
    np.savez(tmp_path / "clean.npz", a=x()[:, :3])
    for command in COMMANDS:
        refuse(command, model, tmp_path / "clean.npz", r"lacks arrays for model inputs \['b'\]", DataError)


def test_labels_out_of_range(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "model.onnx")
    data = builders.data(tmp_path / "clean.npz", y=np.full(20, 7, np.int64))
    refuse("evaluate", model, data, r"label 7 is out of range for a model with 3 classes", DataError)
    refuse("scan", model, data, r"clean.npz: label 7 is out of range for a model with 3 classes", DataError)
    refuse("repair", model, data, r"clean.npz: label 7 is out of range for a model with 3 classes", DataError)


@pytest.mark.parametrize("target, pattern", [
    (None, r"a triggered set needs a target"),
    (9, r"target 9 is not a class of the model \(0..2\)"),
])
def test_evaluate_target(target, pattern: str, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    attacked = builders.data(tmp_path / "triggered.npz", seed=4)
    refuse("evaluate", model, data, pattern, DataError, triggered=attacked, target=target)


# ---- outputs ----------------------------------------------------------------------------------------

def test_an_existing_output_is_replaced_only_when_allowed(tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    out = tmp_path / "repaired.onnx"
    out.write_text("keep me")
    before = Guarded.take(tmp_path)
    with pytest.raises(OutputError, match=r"already exists"):
        auditor.repair(model, data, out)
    before.unchanged()
    auditor.repair(model, data, out, force=True)
    onnx.checker.check_model(onnx.load(str(out)))
    assert tree(tmp_path) == {"model.onnx", "clean.npz", "repaired.onnx"}


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=str)
def test_bad_output_path(case: str, tmp_path: Path) -> None:
    model, data = mlp_case(tmp_path)
    out = OUTPUT_CASES[case].build(tmp_path)
    before = Guarded.take(tmp_path)
    with pytest.raises(OutputError) as raised:
        auditor.repair(model, data, out, force=True)
    assert re.search(OUTPUT_CASES[case].pattern, one_line(str(raised.value))), raised.value
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


# ---- size -------------------------------------------------------------------------------------------

def test_a_model_over_2_gib_with_external_data_is_audited_not_refused(tmp_path: Path) -> None:
    """A real 2.1 GiB embedding table in external data (sparse on disk). Protobuf cannot hold the
    whole model in one message, so every size check and the session take the large-model path.
    About a minute and 9 GB of memory on a 2-core machine."""
    model = builders.big_external(tmp_path)
    data = builders.big_data(tmp_path / "clean.npz")
    before = {p.name: sha256(p) for p in (model, tmp_path / "embedding.bin")}
    assert [p.name for p in model_io.external_data_files(model)] == ["embedding.bin"]  # what outputs may not replace
    report = auditor.audit(model, data)
    assert report.data["samples"] == 20
    assert not report.verdict.assessed and "token ids" in report.verdict.not_assessed  # no detector perturbs token ids
    assert {layer.unit for layer in report.layers} == {"fc1", "fc2"}
    assert {p.name: sha256(p) for p in (model, tmp_path / "embedding.bin")} == before
