"""Provider selection and session options (auditor/io/runtime.py)."""

from __future__ import annotations

import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from auditor.errors import DeviceError, ModelError
from auditor.graph.index import GraphIndex, weightless
from auditor.io import runtime
from auditor.io.model import load


def test_cuda_sessions_keep_float32_and_skip_the_cudnn_benchmarks() -> None:
    # TF32 made the repair's own rewrite check fail on an H200 (bench/results/gpu.json was
    # measured with it off); the exhaustive cuDNN search made audits 15x slower there.
    cuda = runtime.providers_for(runtime.Provider("CUDAExecutionProvider", "CUDA available"))
    name, options = cuda[0]
    assert name == "CUDAExecutionProvider"
    assert options["use_tf32"] == "0"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda[1:] == ["CPUExecutionProvider"]
    assert runtime.providers_for(runtime.select_provider("cpu")) == ["CPUExecutionProvider"]


def test_unknown_device_is_refused_in_one_line() -> None:
    with pytest.raises(DeviceError) as raised:
        runtime.select_provider("tpu")
    assert "\n" not in str(raised.value) and "auto, cpu or cuda" in str(raised.value)


@pytest.mark.skipif(runtime.select_provider("auto").name == "CUDAExecutionProvider", reason="CUDA works here")
def test_without_cuda_auto_falls_back_and_cuda_is_refused() -> None:
    chosen = runtime.select_provider("auto")
    assert (chosen.name, chosen.reason) == ("CPUExecutionProvider", "CUDA unavailable")
    with pytest.raises(DeviceError, match="use device cpu or auto"):
        runtime.select_provider("cuda")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_a_whole_number_of_at_least_one(threads) -> None:
    with pytest.raises(DeviceError, match=rf"^threads {threads}: give a whole number of at least 1"):
        runtime.select_provider("cpu", threads)


def test_threads_reach_the_session(example) -> None:
    provider = runtime.select_provider("cpu", 1)
    assert provider.threads == 1
    session = runtime.session(load(example.model).proto, provider)
    assert session.get_session_options().intra_op_num_threads == 1


def test_sizes_and_shapes_come_without_serialising_the_weights(example) -> None:
    """proto_size counts a model without serialising its weights (upb's ByteSize() serialises the message), at least
    its true size and within a few bytes per tensor; shape inference on the weightless model infers what it infers
    on the model itself."""
    model = load(example.model).proto
    counted, true = runtime.proto_size(model), model.ByteSize()
    assert true <= counted <= true + 64 * len(model.graph.initializer)
    light = weightless(model)
    assert light.ByteSize() < true / 10 and len(light.graph.initializer) < len(model.graph.initializer)
    full = onnx.shape_inference.infer_shapes(model)  # on the model itself, weights and all
    inferred = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim] for v in full.graph.value_info}
    index = GraphIndex(model)  # infers on the weightless model
    assert inferred and all(index.shape(name) == dims for name, dims in inferred.items())


def test_a_weight_that_is_also_a_declared_input_keeps_its_declaration_checked(tmp_path) -> None:
    """A weight listed as a graph input too (every weight of an IR 3 model) stays in the checked model: a declared
    shape that contradicts the stored one is refused, as the checker refuses it on the model itself."""
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")  # 16 KiB: a weight weightless would move
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [weight])
    path = tmp_path / "lying.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)
    with pytest.raises(ModelError) as refused:
        load(path)
    assert "\n" not in str(refused.value)


def test_extra_outputs_run_without_copying_the_model_and_leave_it_as_it_was(example) -> None:
    model = load(example.model).proto
    before = model.SerializeToString()
    hidden = model.graph.node[0].output[0]
    extra = onnx.GraphProto()
    extra.output.append(helper.make_empty_tensor_value_info(hidden))
    session = runtime.session(model, runtime.select_provider("cpu"), extra)
    assert model.SerializeToString() == before
    spec = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in spec.shape]
    (value,) = session.run([hidden], {spec.name: np.zeros(shape, dtype=np.float32)})
    assert value.shape[0] == 1
    broken = onnx.GraphProto()
    broken.node.append(helper.make_node("NoSuchOp", [hidden], ["nowhere"]))
    broken.output.append(helper.make_empty_tensor_value_info("nowhere"))
    with pytest.raises(ModelError):
        runtime.session(model, runtime.select_provider("cpu"), broken)
    assert model.SerializeToString() == before  # restored when onnxruntime refused the extended graph


def test_a_large_model_runs_from_a_temporary_weights_file_that_is_gone_once_the_session_exists(example, tmp_path,
                                                                                                   monkeypatch) -> None:
    model = load(example.model).proto
    assert any(len(t.raw_data) > runtime._FILE_TENSOR for t in model.graph.initializer)  # some go to the file
    spec = runtime.session(model, runtime.select_provider("cpu")).get_inputs()[0]
    feed = {spec.name: np.random.default_rng(0).random([3, *[d if isinstance(d, int) else 1 for d in spec.shape[1:]]],
                                                       dtype=np.float32)}
    through_bytes = runtime.session(model, runtime.select_provider("cpu")).run(None, feed)
    monkeypatch.setattr(runtime, "_FILE_THRESHOLD", 0)  # the example (a few MB) takes the large-model path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = model.SerializeToString()
    through_file = runtime.session(model, runtime.select_provider("cpu")).run(None, feed)
    assert model.SerializeToString() == before
    assert list(tmp_path.iterdir()) == []
    for ours, theirs in zip(through_file, through_bytes, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # no temporary folder to be had: below 2 GiB the serialized bytes serve, as for a small model
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    for ours, theirs in zip(runtime.session(model, runtime.select_provider("cpu")).run(None, feed), through_bytes, strict=True):
        np.testing.assert_array_equal(ours, theirs)
