"""Knowing what the model is before judging it: input and output kinds from the graph, binary single-output models
read as two classes everywhere, sequences blurred in time only, and models that are not classifiers refused by what
they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import make_model, save
from onnx import TensorProto, helper, numpy_helper
from test_cli import invoke

import auditor
from auditor.detect import probe
from auditor.graph import kinds
from auditor.graph.index import GraphIndex
from auditor.io.data import Samples, input_specs
from auditor.settings import Settings

RNG = np.random.default_rng(0)


def _dense(x_shape: list, layers: list[tuple[str, np.ndarray]], tail: list[onnx.NodeProto], out: str, out_shape: list,
           x_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x -> (MatMul W_k -> Relu)* -> the `tail` nodes -> `out`."""
    nodes, inits, current = [], [], "x"
    for k, (name, weight) in enumerate(layers):
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"W{k}"))
        nodes.append(helper.make_node("MatMul", [current, f"W{k}"], [f"m{k}"], name=name))
        if k < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"m{k}"], [f"r{k}"], name=f"relu{k}"))
            current = f"r{k}"
        else:
            current = f"m{k}"
    nodes += tail
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], inits)
    return make_model(graph)


def _binary(tmp_path: Path) -> tuple[Path, Path]:
    """A logistic model over 6 features: Sigmoid(MatMul(Relu(MatMul(x)))) -> p [N, 1]; labels 0/1."""
    model = _dense(["N", 6], [("fc1", RNG.normal(size=(6, 8))), ("fc2", RNG.normal(size=(8, 1)))],
                   [helper.make_node("Sigmoid", ["m1"], ["p"], name="sigmoid")], "p", ["N", 1])
    x = RNG.normal(size=(40, 6)).astype(np.float32)
    session_p = _run(model, x)
    np.savez(tmp_path / "clean.npz", x=x, y=(session_p[:, 0] > 0.5).astype(np.int64))
    return save(model, tmp_path / "binary.onnx"), tmp_path / "clean.npz"


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_binary_sigmoid_model_is_two_classes_everywhere(tmp_path: Path) -> None:
    path, data = _binary(tmp_path)
    report = auditor.audit(path, data, device="cpu")
    assert report.model["kinds"]["output"] == "binary" and report.data["classes"] == 2
    assert not report.verdict.assessed and not report.verdict.suspicious  # two classes: behaviour cannot tell
    assert auditor.report.verdict_text(report.verdict).startswith("NOT ASSESSED: the model has 2 classes")
    assert invoke("scan", path, "--data", data).exit_code == 4
    result = auditor.evaluate(path, data, device="cpu")
    assert result.accuracy == 1.0  # the labels are its own decisions at p > 0.5; an argmax of one column would say 0/1
    repaired = auditor.repair(path, data, tmp_path / "repaired.onnx", device="cpu")
    assert repaired.repair.held_back.passed
    unlearned = repaired.repair.plan.unlearning
    assert unlearned is None or unlearned.applied is False


def _sequence() -> onnx.ModelProto:
    """[N, 30, 16] frames -> MatMul over features -> Relu -> ReduceMean over time -> MatMul -> 3 logits."""
    tail = [helper.make_node("ReduceMean", ["r0"], ["pooled"], name="pool", axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W_head"], ["logits"], name="head")]
    model = _dense(["N", 30, 16], [("frames", RNG.normal(size=(16, 12)))], [], "logits", ["N", 3])
    model.graph.node[-1].output[0] = "r0"  # the one MatMul feeds the pooling through a Relu
    model.graph.node.append(helper.make_node("Relu", ["r0"], ["r0_relu"], name="relu"))
    tail[0].input[0] = "r0_relu"
    model.graph.node.extend(tail)
    model.graph.initializer.append(numpy_helper.from_array(RNG.normal(size=(12, 3)).astype(np.float32), "W_head"))
    return model


def test_a_sequence_is_read_as_one_and_blurred_in_time_only(tmp_path: Path) -> None:
    model = _sequence()
    found = kinds.find(GraphIndex(model), input_specs(model)[0], "logits")
    assert found.input == "sequence" and found.output == "scores"
    axes = kinds.blur_axes(found, "x", 3)
    assert axes == {"x": (1,)}
    frames = RNG.uniform(0, 1, (4, 30, 16)).astype(np.float32)
    for name, corrupted, _ in probe.corruptions(Samples({"x": frames}, None, "t"), Settings().probe, axes):
        if name.startswith("blur"):  # each feature blurred along time: per-feature means over time are kept
            np.testing.assert_allclose(corrupted.inputs["x"].mean(axis=1), frames.mean(axis=1), atol=0.03)
    np.savez(tmp_path / "clean.npz", x=frames)
    report = auditor.audit(save(model, tmp_path / "sequence.onnx"), tmp_path / "clean.npz", device="cpu")
    assert report.model["kinds"]["input"] == "sequence"
    assert report.timings["patch"] == 0.0 and report.timings["fourier"] == 0.0  # image searches do not apply


@pytest.mark.parametrize(("case", "named"), [("positions", "one score vector per position"), ("embedding", "an embedding")])
def test_a_model_that_is_not_a_classifier_is_refused_by_what_it_is(case: str, named: str, tmp_path: Path) -> None:
    if case == "positions":  # per-anchor scores [N, 6, 10], as a detector writes them
        tail = [helper.make_node("Reshape", ["m1", "shape"], ["boxes"], name="anchors")]
        model = _dense(["N", 6], [("fc1", RNG.normal(size=(6, 8))), ("fc2", RNG.normal(size=(8, 60)))], tail, "boxes", ["N", 6, 10])
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 6, 10], np.int64), "shape"))
        out = "boxes"
    else:  # a feature vector out of a Relu
        tail = [helper.make_node("Relu", ["m1"], ["vector"], name="features")]
        model = _dense(["N", 6], [("fc1", RNG.normal(size=(6, 8))), ("fc2", RNG.normal(size=(8, 16)))], tail, "vector", ["N", 16])
        out = "vector"
    path = save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "clean.npz", x=RNG.normal(size=(20, 6)).astype(np.float32))
    result = invoke("scan", path, "--data", tmp_path / "clean.npz")
    assert result.exit_code == 2
    line = next(line for line in result.stderr.splitlines() if line.strip())
    assert f"output {out!r} is {named}" in line and "--output-kind" in line
    if case == "embedding":  # the user knows better: it is scored as classes when told so
        told = invoke("scan", path, "--data", tmp_path / "clean.npz", "--output-kind", "scores")
        assert told.exit_code in (0, 1), told.output
    assert invoke("scan", path, "--data", tmp_path / "clean.npz", "--output-kind", "nonsense").exit_code == 2


def test_a_batch_written_as_minus_one_is_dynamic(tmp_path: Path) -> None:
    model = _dense([-1, 6], [("fc1", RNG.normal(size=(6, 8))), ("fc2", RNG.normal(size=(8, 3)))], [], "m1", [-1, 3])
    np.savez(tmp_path / "clean.npz", x=RNG.normal(size=(20, 6)).astype(np.float32))
    report = auditor.audit(save(model, tmp_path / "model.onnx"), tmp_path / "clean.npz", device="cpu")
    assert report.data["samples"] == 20


def test_a_recurrent_model_is_refused_as_recurrent(tmp_path: Path) -> None:
    hidden = 5
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], name="lstm", hidden_size=hidden)
    squeeze = helper.make_node("Squeeze", ["h", "axes"], ["logits"], name="last")
    graph = helper.make_graph([lstm, squeeze], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, "N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", hidden])],
                              [numpy_helper.from_array(RNG.normal(size=(1, 4 * hidden, 4)).astype(np.float32), "W"),
                               numpy_helper.from_array(RNG.normal(size=(1, 4 * hidden, hidden)).astype(np.float32), "R"),
                               numpy_helper.from_array(np.array([0], np.int64), "axes")])
    path = save(make_model(graph), tmp_path / "lstm.onnx")
    np.savez(tmp_path / "clean.npz", x=RNG.normal(size=(7, 20, 4)).astype(np.float32))
    with pytest.raises(auditor.ModelError, match=r"recurrent \(LSTM\)"):
        auditor.audit(path, tmp_path / "clean.npz", device="cpu")


def _conv_model(x_shape: list, kernel: np.ndarray, tail: list[onnx.NodeProto], out: str, out_shape: list,
                extra_outputs: tuple[onnx.ValueInfoProto, ...] = ()) -> onnx.ModelProto:
    """x -> Conv(kernel) -> the `tail` nodes -> `out` (and `extra_outputs`)."""
    inits = [numpy_helper.from_array(kernel.astype(np.float32), "K")]
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"], name="conv"), *tail]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape), *extra_outputs], inits)
    return make_model(graph)


def test_a_feature_map_out_of_a_convolution_is_an_embedding_not_scores() -> None:
    """openwakeword's embedding model ends in a Conv and a Reshape to [N, 1, 1, 96]: a feature map, not 96 classes."""
    shape = numpy_helper.from_array(np.array([-1, 1, 1, 8], np.int64), "shape")
    model = _conv_model(["N", 3, 5, 5], RNG.normal(size=(8, 3, 5, 5)), [helper.make_node("Reshape", ["c", "shape"], ["e"])],
                        "e", ["N", 1, 1, 8])
    model.graph.initializer.append(shape)
    index = GraphIndex(model)
    found = kinds.find(index, input_specs(model)[0], "e")
    assert found.output == "embedding" and "straight out of a convolution" in found.output_reason
    with pytest.raises(auditor.ModelError, match="is an embedding"):
        kinds.judged(found, "e")
    flat = _conv_model(["N", 3, 5, 5], RNG.normal(size=(8, 3, 5, 5)), [helper.make_node("Flatten", ["c"], ["logits"])],
                       "logits", ["N", 8])  # a fully convolutional classifier flattens its scores: still scores
    assert kinds.find(GraphIndex(flat), input_specs(flat)[0], "logits").output == "scores"


def test_a_flat_input_a_1d_convolution_reads_is_a_waveform_not_a_flat_image() -> None:
    """576 audio samples are 24 x 24 by count alone; a 1-D convolution reading them says they are a signal over time."""
    unsqueeze = numpy_helper.from_array(np.array([1], np.int64), "axis")
    nodes = [helper.make_node("Unsqueeze", ["x", "axis"], ["x3"]),
             helper.make_node("Conv", ["x3", "K"], ["c"], name="conv1d"),
             helper.make_node("Flatten", ["c"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 576])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", None])],
                              [numpy_helper.from_array(RNG.normal(size=(2, 1, 576)).astype(np.float32), "K"), unsqueeze])
    model = make_model(graph)
    found = kinds.find(GraphIndex(model), input_specs(model)[0], "logits")
    assert found.input == "sequence" and "1-D convolution" in found.input_reason
    assert kinds.blur_axes(found, "x", 2) == {"x": (1,)}  # blurred along time
    dense = _dense(["N", 576], [("fc1", RNG.normal(size=(576, 3)))], [], "m0", ["N", 3])
    assert kinds.find(GraphIndex(dense), input_specs(dense)[0], "m0").input == "flat-image"  # the zoo's MLPs stay images


def test_of_several_outputs_the_softmax_one_is_judged_and_the_others_named(tmp_path: Path) -> None:
    """mtcnn's output network gives a box regression [N, 4] first and its face probability [N, 2] last."""
    tail = [helper.make_node("Flatten", ["c"], ["flat"]),
            helper.make_node("MatMul", ["flat", "Wbox"], ["box"], name="box_head"),
            helper.make_node("MatMul", ["flat", "Wcls"], ["z"], name="class_head"),
            helper.make_node("Softmax", ["z"], ["prob"], axis=1)]
    model = _conv_model(["N", 3, 5, 5], RNG.normal(size=(8, 3, 5, 5)), tail, "box", ["N", 4],
                        (helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3]),))
    model.graph.initializer.extend([numpy_helper.from_array(RNG.normal(size=(8, 4)).astype(np.float32), "Wbox"),
                                    numpy_helper.from_array(RNG.normal(size=(8, 3)).astype(np.float32), "Wcls")])
    from auditor.capture import scores_output

    index = GraphIndex(model)
    assert scores_output(index) == "prob"
    found = kinds.find(index, input_specs(model)[0], "prob")
    assert found.output == "probabilities" and "not 'box'" in found.output_reason
    np.savez(tmp_path / "clean.npz", x=RNG.normal(size=(20, 3, 5, 5)).astype(np.float32))
    report = auditor.audit(save(model, tmp_path / "model.onnx"), tmp_path / "clean.npz", device="cpu", patch_search=False,
                           fourier_probe=False)
    assert report.data["classes"] == 3  # the probabilities' three classes, not the box's four numbers
