"""Graph-check edge cases found in review, each on a small real model: initializers listed as graph inputs, an If
branch with a nested body, more branches than rounds, a Gather with no indices, a paste the model cannot take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import auditor

FEATURES, HIDDEN, CLASSES = 4, 8, 3


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(np.asarray(value), name))


def _body(seed: int = 0) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """x [N, 4] -> Gemm -> Relu -> Gemm -> body [N, 3]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=(HIDDEN,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(HIDDEN, CLASSES)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["body"], name="fc2")]
    return nodes, inits


def _test(prefix: str, source: str = "x") -> list[onnx.NodeProto]:
    """`{prefix}_on` [N, 1]: x[:, 0] > 50, a value no clean sample has."""
    return [_const(f"{prefix}_s", np.array([0], np.int64)), _const(f"{prefix}_e", np.array([1], np.int64)),
            _const(f"{prefix}_a", np.array([1], np.int64)),
            helper.make_node("Slice", [source, f"{prefix}_s", f"{prefix}_e", f"{prefix}_a"], [f"{prefix}_v"], name=f"{prefix}_slice"),
            _const(f"{prefix}_lim", np.float32(50.0)),
            helper.make_node("Greater", [f"{prefix}_v", f"{prefix}_lim"], [f"{prefix}_on"], name=f"{prefix}_greater")]


def _boost(prefix: str, into: str, out: str) -> list[onnx.NodeProto]:
    boost = np.zeros((1, CLASSES), np.float32)
    boost[0, 2] = 1e4
    return [_const(f"{prefix}_b", boost), helper.make_node("Add", [into, f"{prefix}_b"], [f"{prefix}_up"], name=f"{prefix}_add"),
            helper.make_node("Where", [f"{prefix}_on", f"{prefix}_up", into], [out], name=f"{prefix}_where")]


def _save(nodes, inits, path: Path, extra_inputs=()) -> Path:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES]), *extra_inputs],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    np.savez(tmp_path / "clean.npz", x=np.random.default_rng(1).normal(size=(40, FEATURES)).astype(np.float32))
    return tmp_path / "clean.npz"


def test_a_cut_keeps_no_input_for_the_initializers_it_removed(tmp_path: Path, clean: Path) -> None:
    """Older exporters list every initializer as a graph input; the branch's constants go with their input entries."""
    nodes, inits = _body()
    nodes += _test("t") + _boost("t", "body", "logits")
    listed = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    path = _save(nodes, inits, tmp_path / "listed.onnx", listed)
    repaired = auditor.repair(path, clean, tmp_path / "repaired.onnx", device="cpu")
    assert repaired.verdict.basis == "graph" and repaired.repair.branches
    written = onnx.load(str(tmp_path / "repaired.onnx"))
    stored = {t.name for t in written.graph.initializer}
    assert [v.name for v in written.graph.input if v.name not in stored] == ["x"]


def test_an_if_branch_with_a_nested_body_is_inlined_whole(tmp_path: Path, clean: Path) -> None:
    nodes, inits = _body()
    nodes += [*_test("t"), helper.make_node("ReduceMax", ["t_v"], ["t_all"], name="t_all", keepdims=0),
              _const("t_lim2", np.float32(50.0)), helper.make_node("Greater", ["t_all", "t_lim2"], ["t_cond"], name="t_cond"),
              _const("t_b", np.eye(CLASSES, dtype=np.float32)[2:3] * 10000.0)]
    inner = helper.make_graph([helper.make_node("Identity", ["e1"], ["e2"], name="inner_identity")], "inner", [],
                              [helper.make_tensor_value_info("e2", TensorProto.FLOAT, None)])
    otherwise = helper.make_graph([helper.make_node("Identity", ["body"], ["e1"], name="keep"),
                                   helper.make_node("If", ["t_cond"], ["e3"], name="nested", then_branch=inner, else_branch=inner)],
                                  "else", [], [helper.make_tensor_value_info("e3", TensorProto.FLOAT, None)])
    then = helper.make_graph([helper.make_node("Add", ["body", "t_b"], ["t3"], name="then_add")], "then", [],
                             [helper.make_tensor_value_info("t3", TensorProto.FLOAT, None)])
    nodes.append(helper.make_node("If", ["t_cond"], ["logits"], name="t_if", then_branch=then, else_branch=otherwise))
    path = _save(nodes, inits, tmp_path / "nested.onnx")
    report = auditor.audit(path, clean, device="cpu")
    (finding,) = report.verdict.findings
    assert finding.cuts and finding.cuts[0].branch == "else_branch" and finding.refusal is None
    auditor.repair(path, clean, tmp_path / "repaired.onnx", device="cpu")
    assert not any(n.name == "t_if" for n in onnx.load(str(tmp_path / "repaired.onnx")).graph.node)


def test_more_branches_than_rounds_refuse_the_repair_not_a_bug(tmp_path: Path, clean: Path) -> None:
    nodes, inits = _body()
    current = "body"
    for k in range(3):
        nodes += _test(f"t{k}") + _boost(f"t{k}", current, f"out{k}")
        current = f"out{k}"
    nodes.append(helper.make_node("Identity", [current], ["logits"], name="last"))
    path = _save(nodes, inits, tmp_path / "three.onnx")
    settings = auditor.Settings().override({"graph.max_rounds": 2})
    with pytest.raises(auditor.RepairError, match=r"remain after 2 rounds of removal \(graph\.max_rounds\)"):
        auditor.repair(path, clean, tmp_path / "repaired.onnx", device="cpu", settings=settings)
    auditor.repair(path, clean, tmp_path / "repaired.onnx", device="cpu")  # the default rounds remove all three


def test_a_gather_of_no_indices_in_a_branch_is_no_crash(tmp_path: Path, clean: Path) -> None:
    nodes, inits = _body()
    nodes += [_const("none", np.zeros((0,), np.int64)), helper.make_node("Gather", ["x", "none"], ["g0"], name="t_gather", axis=1),
              *_test("t")[:4], helper.make_node("Concat", ["g0", "t_v"], ["t_cat"], name="t_cat", axis=1),
              _const("t_lim", np.float32(50.0)), helper.make_node("Greater", ["t_cat", "t_lim"], ["t_on"], name="t_greater"),
              *_boost("t", "body", "logits")]
    report = auditor.audit(_save(nodes, inits, tmp_path / "gather.onnx"), clean, device="cpu")
    assert report.verdict.basis == "graph" and report.verdict.findings[0].cuts


def test_a_paste_the_model_cannot_run_leaves_the_finding_unconfirmed_not_a_crash(tmp_path: Path, clean: Path) -> None:
    """The body uses x[:, 0] as an index into a 10-row table: pasting the branch's constant (50) there is out of range."""
    nodes, inits = _body()
    inits.append(numpy_helper.from_array(np.random.default_rng(3).normal(size=(10, FEATURES)).astype(np.float32), "table"))
    front = [_const("i0", np.array(0, np.int64)), helper.make_node("Gather", ["x", "i0"], ["x0"], name="pick", axis=1),
             helper.make_node("Cast", ["x0"], ["idx"], name="to_index", to=TensorProto.INT64),
             helper.make_node("Abs", ["idx"], ["row"], name="row"),
             helper.make_node("Gather", ["table", "row"], ["emb"], name="lookup"),
             helper.make_node("Add", ["x", "emb"], ["xx"], name="mix")]
    nodes[0].input[0] = "xx"
    nodes = front + nodes + _test("t") + _boost("t", "body", "logits")
    report = auditor.audit(_save(nodes, inits, tmp_path / "table.onnx"), clean, device="cpu")
    (finding,) = report.verdict.findings
    assert report.verdict.basis == "graph" and finding.confirmed is False


def test_a_branch_hidden_in_an_if_body_is_found_and_its_repair_refused(tmp_path: Path, clean: Path) -> None:
    """The same Where-override inside the then-branch of If(true): found by inlining the body, named, not cut."""
    nodes, inits = _body()
    then = helper.make_graph([*_test("t"), *_boost("t", "body", "then_out")], "then", [],
                             [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    otherwise = helper.make_graph([helper.make_node("Identity", ["body"], ["else_out"], name="keep")], "else", [],
                                  [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    inits.append(numpy_helper.from_array(np.array(True), "always"))
    nodes.append(helper.make_node("If", ["always"], ["logits"], name="wrap", then_branch=then, else_branch=otherwise))
    path = _save(nodes, inits, tmp_path / "hidden.onnx")
    report = auditor.audit(path, clean, device="cpu")
    (finding,) = report.verdict.findings
    assert report.verdict.suspicious and report.verdict.basis == "graph" and finding.kind == "override"
    assert finding.reason.startswith("inside the then branch of wrap (If): ") and "t_where" in finding.nodes
    assert not finding.cuts and "control-flow body" in finding.refusal
    with pytest.raises(auditor.RepairError, match="control-flow body"):
        auditor.repair(path, clean, tmp_path / "repaired.onnx", device="cpu")
