"""Resource limits: a file built to pass each one is refused in one line that names the limit and its setting
(exit 2, nothing written); each limit can be raised with --set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import save, tree
from hostile_cases import mlp_case
from onnx import TensorProto, helper
from test_cli import invoke, python_cli

from auditor.errors import ModelError
from auditor.io import model
from auditor.settings import LimitSettings


def _refused(args: list[object], folder: Path, setting: str) -> None:
    before = tree(folder)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and setting in lines[0], lines
    assert tree(folder) == before


@pytest.mark.parametrize(("setting", "value"), [("limits.model_bytes", 100), ("limits.nodes", 2)])
def test_a_model_over_a_size_limit_is_refused(setting: str, value: int, tmp_path: Path) -> None:
    model_path, data = mlp_case(tmp_path)
    _refused(["scan", model_path, "--data", data, "--json", tmp_path / "r.json", "--set", f"{setting}={value}"], tmp_path, setting)
    assert invoke("scan", model_path, "--data", data).exit_code in (0, 1)  # under the default limits it runs


def _nested(depth: int) -> onnx.ModelProto:
    """x -> If(If(If(... Identity(x) ...))) `depth` bodies deep, every condition a constant True."""
    def leaf(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["x"], [name])], name, [],
                                 [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])

    inner = leaf("y0")
    for level in range(1, depth):
        node = helper.make_node("If", ["cond"], [f"y{level}"], then_branch=inner, else_branch=leaf(f"e{level}"))
        inner = helper.make_graph([node], f"body{level}", [], [helper.make_tensor_value_info(f"y{level}", TensorProto.FLOAT, None)])
    top = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=leaf("e"))
    graph = helper.make_graph([top], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [onnx.numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_control_flow_nested_past_the_limit_is_refused_before_anything_recurses(tmp_path: Path) -> None:
    path = save(_nested(20), tmp_path / "deep.onnx")  # protobuf itself refuses about 30 (its message depth limit)
    with pytest.raises(ModelError, match=r"nested 17 deep, over limits.nesting \(16\)"):
        model.load(path)
    with pytest.raises(ModelError, match=r"limits\.nesting"):
        model.load(save(_nested(4), tmp_path / "shallow.onnx"), LimitSettings(nesting=2))


def test_a_tensor_declaring_too_many_elements_is_refused_before_its_data_is_read(tmp_path: Path) -> None:
    """2^40 elements claimed in external data that does not exist: the claim alone is refused, by its limit."""
    big = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    big.data_location = TensorProto.EXTERNAL
    big.external_data.add(key="location", value="w.bin")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [big])
    path = tmp_path / "claim.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString())
    with pytest.raises(ModelError, match=r"declares 1,099,511,627,776 elements, over limits.tensor_elements"):
        model.load(path)


def test_a_run_past_its_time_limit_stops_with_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    model_path, data = mlp_case(tmp_path)
    before = tree(tmp_path)
    slow = "import time\nimport auditor.mitigation.plan as plan\nreal = plan.plan\nplan.plan = lambda *a, **k: (time.sleep(5), real(*a, **k))[1]\n"
    result = python_cli("repair", model_path, "--data", data, "-o", tmp_path / "r.onnx", "--json", tmp_path / "r.json",
                        "--set", "limits.seconds=1", prelude=slow)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: stopped after 1 s, the run time limit (limits.seconds); nothing was written; raise it with --set "
        "limits.seconds=S, or give fewer samples (--limit) or switch off the searches"]
    assert tree(tmp_path) == before


def test_samples_declaring_more_bytes_than_the_limit_are_refused_before_reading(tmp_path: Path) -> None:
    """A real file over a lowered limit is refused; so is an .npz whose zip entry claims 4 GiB (a decompression
    bomb), from the claim alone, before anything is decompressed."""
    model_path, data = mlp_case(tmp_path)
    _refused(["scan", model_path, "--data", data, "--set", "limits.data_bytes=64"], tmp_path, "limits.data_bytes")
    bomb = tmp_path / "bomb.npz"
    np.savez(bomb, x=np.zeros((20, 4), np.float32))
    raw = bytearray(bomb.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # the uncompressed size in both headers
        at = raw.find(signature)
        raw[at + offset: at + offset + 4] = (0xFFFFFFFF).to_bytes(4, "little")  # claims 4 GiB
    bomb.write_bytes(bytes(raw))
    _refused(["scan", model_path, "--data", bomb, "--set", "limits.data_bytes=1000000"], tmp_path, "4,294,967,295 bytes")
