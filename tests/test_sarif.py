"""SARIF that code scanning accepts: every report auditor writes (clean, backdoored, repaired, graph-tampered, not
assessed, a batch of several) validates against the official SARIF 2.1.0 schema (tests/schemas, committed from
oasis-tcs/sarif-spec), every rule has help text, every result one location with a region and stable fingerprints,
and the same reports give the same bytes. Real scans of real models under onnxruntime; nothing is mocked."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from builders import make_model, save
from onnx import TensorProto, helper, numpy_helper
from zoo_samples import MANIFEST, clean

import auditor
from auditor.report.sarif import NOTED_CHANNELS, RULES, render, render_many
from bench import tampering

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "models" / "example"
SCHEMA = json.loads((ROOT / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())
CLEAN_ZOO = "cnn_bn-fmnist-clean-s0"


def validate(text: str) -> dict:
    """Parse and validate against the official schema: under the draft it declares (4) and under Draft 7."""
    document = json.loads(text)
    for validator in (jsonschema.validators.validator_for(SCHEMA), jsonschema.Draft7Validator):
        errors = sorted(validator(SCHEMA).iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, f"{validator.__name__}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    return document


def _binary(folder: Path) -> tuple[Path, Path]:
    """A logistic model over 6 features (one sigmoid output): auditor reads it as two classes and cannot assess it."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(8, 1)).astype(np.float32)]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"], name="fc1"), helper.make_node("Relu", ["m0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "W1"], ["m1"], name="fc2"), helper.make_node("Sigmoid", ["m1"], ["p"], name="sigmoid")]
    graph = helper.make_graph(nodes, "binary", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(w, f"W{k}") for k, w in enumerate(weights)])
    np.savez(folder / "binary-clean.npz", x=rng.normal(size=(40, 6)).astype(np.float32))
    return save(make_model(graph), folder / "binary.onnx"), folder / "binary-clean.npz"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, auditor.Report]:
    """One report of each kind: a clean zoo model, the backdoored example, its repair, a graph-tampered model, a binary model."""
    folder = tmp_path_factory.mktemp("sarif")
    zoo_clean = clean(MANIFEST[CLEAN_ZOO], folder)
    tampered = save(tampering.build("where", onnx.load(str(tampering.ZOO / f"{tampering.BASE}.onnx"))), folder / "where.onnx")
    binary, binary_data = _binary(folder)
    return {
        "clean": auditor.audit(tampering.ZOO / f"{CLEAN_ZOO}.onnx", zoo_clean, limit=10, device="cpu"),
        "backdoored": auditor.audit(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu"),
        "repair": auditor.repair(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", folder / "repaired.onnx", limit=10, device="cpu"),
        "tampered": auditor.audit(tampered, zoo_clean, limit=10, device="cpu"),
        "not_assessed": auditor.audit(binary, binary_data, device="cpu"),
    }


@pytest.fixture(autouse=True)
def _at_root(monkeypatch) -> None:
    """URIs are relative to the current folder: run every test from the repository's root, as a CI job does."""
    monkeypatch.chdir(ROOT)


def results(document: dict) -> list[dict]:
    (run,) = document["runs"]
    return run["results"]


@pytest.mark.parametrize("kind", ["clean", "backdoored", "repair", "tampered", "not_assessed"])
def test_each_report_validates_and_every_result_is_located_and_fingerprinted(kind: str, reports) -> None:
    report = reports[kind]
    document = validate(render(report))
    (run,) = document["runs"]
    assert run["invocations"] == [{"executionSuccessful": True}]
    (artifact,) = run["artifacts"]
    assert artifact["hashes"] == {"sha-256": report.model["sha256"]} and artifact["roles"] == ["analysisTarget"]
    assert artifact["properties"]["outcome"] == {"clean": "clean", "not_assessed": "not assessed"}.get(kind, "suspicious")
    rules = run["tool"]["driver"]["rules"]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] == rules[result["ruleIndex"]]["defaultConfiguration"]["level"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["region"] == {"startLine": 1}
        assert physical["artifactLocation"]["index"] == 0
        assert physical["artifactLocation"]["uri"] == artifact["location"]["uri"]
        assert set(result["partialFingerprints"]) == {"auditorFinding/v1", "primaryLocationLineHash"}
    prints = [r["partialFingerprints"]["auditorFinding/v1"] for r in run["results"]]
    assert len(set(prints)) == len(prints)  # one alert per finding: none merged with another


def test_a_clean_verdict_gives_no_result_but_the_model_is_on_record(reports) -> None:
    document = validate(render(reports["clean"]))
    assert results(document) == []
    (artifact,) = document["runs"][0]["artifacts"]
    assert artifact["properties"]["verdict"].startswith("clean: score")
    assert artifact["location"] == {"uri": f"models/zoo/{CLEAN_ZOO}.onnx", "uriBaseId": "%SRCROOT%"}


def test_a_backdoored_model_gives_the_verdict_and_its_top_channels_as_notes(reports) -> None:
    found = results(validate(render(reports["backdoored"])))
    assert [r["ruleId"] for r in found] == ["AUD001"] + ["AUD002"] * NOTED_CHANNELS
    verdict = found[0]
    assert verdict["level"] == "error" and verdict["message"]["text"].startswith("SUSPICIOUS")
    assert verdict["properties"]["basis"] == "patch" and verdict["properties"]["target"] == 0  # the example's attack target
    assert verdict["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/example/model.onnx"
    assert {r["level"] for r in found[1:]} == {"note"}
    assert all(len(r["locations"][0]["logicalLocations"]) == 1 for r in found[1:])


def test_a_repair_says_where_the_repaired_model_went(reports) -> None:
    document = validate(render(reports["repair"]))
    verdict = results(document)[0]
    assert verdict["ruleId"] == "AUD001"
    assert verdict["message"]["text"].endswith(f"Repaired model written to {reports['repair'].repair.output}")
    assert document["runs"][0]["artifacts"][0]["properties"]["command"] == "repair"


def test_a_graph_finding_names_its_nodes(reports) -> None:
    found = results(validate(render(reports["tampered"])))
    graph = [r for r in found if r["ruleId"] == "AUD003"]
    assert len(graph) == 1 and graph[0]["level"] == "error"
    names = [loc["name"] for loc in graph[0]["locations"][0]["logicalLocations"]]
    assert "t_where" in names and "t_slice" in names
    assert graph[0]["properties"] == {"kind": "override", "confirmed": True, "removable": True}
    uri = graph[0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri["uri"].startswith("file:///") and "uriBaseId" not in uri  # outside the current folder: an absolute URI


def test_a_model_not_assessed_is_its_own_warning_never_clean(reports) -> None:
    found = results(validate(render(reports["not_assessed"])))
    assert [(r["ruleId"], r["level"]) for r in found] == [("AUD004", "warning")]
    assert found[0]["message"]["text"].startswith("NOT ASSESSED: the model has 2 classes")
    assert found[0]["message"]["text"].endswith("Not scanned is not clean.")


def test_every_rule_has_what_code_scanning_shows() -> None:
    assert [rule["id"] for rule in RULES] == ["AUD001", "AUD002", "AUD003", "AUD004"]
    assert [rule["defaultConfiguration"]["level"] for rule in RULES] == ["error", "note", "error", "warning"]
    for rule in RULES:
        assert rule["name"] and rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert "What it means" in rule["help"]["text"] and "What to do" in rule["help"]["text"]
        assert "**What it means.**" in rule["help"]["markdown"] and "**What to do.**" in rule["help"]["markdown"]
        assert rule["properties"]["tags"]
        assert ("security" in rule["properties"]["tags"]) == ("security-severity" in rule["properties"])


def test_render_many_holds_every_model_in_one_run(reports) -> None:
    batch = [reports[kind] for kind in ("clean", "backdoored", "tampered", "not_assessed")]
    document = validate(render_many(batch, failures=[("models/zoo/missing.onnx", "the file does not exist")]))
    (run,) = document["runs"]
    assert [a["properties"]["outcome"] for a in run["artifacts"]] == ["clean", "suspicious", "suspicious", "not assessed"]
    singles = [result for report in batch for result in results(json.loads(render(report)))]
    assert [r["partialFingerprints"] for r in run["results"]] == [r["partialFingerprints"] for r in singles]
    for result in run["results"]:
        artifact = run["artifacts"][result["locations"][0]["physicalLocation"]["artifactLocation"]["index"]]
        assert artifact["location"]["uri"] == result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert {r["ruleId"] for r in run["results"]} == {"AUD001", "AUD002", "AUD003", "AUD004"}
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    (failed,) = invocation["toolExecutionNotifications"]
    assert failed["level"] == "error" and "models/zoo/missing.onnx: not scanned" in failed["message"]["text"]
    assert validate(render_many([]))["runs"][0]["results"] == []


def test_same_inputs_same_bytes_and_fingerprints_across_two_scans(reports, tmp_path: Path) -> None:
    again = auditor.audit(EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu")
    assert render(again) == render(reports["backdoored"])
    many = [reports["clean"], reports["backdoored"]]
    assert render_many(many) == render_many(many)
    # A different model (other bytes) is a different alert: the fingerprints follow the model's sha256.
    first = {r["ruleId"]: r["partialFingerprints"] for r in results(json.loads(render(reports["backdoored"])))}
    tampered = {r["ruleId"]: r["partialFingerprints"] for r in results(json.loads(render(reports["tampered"])))}
    assert first["AUD001"] != tampered["AUD001"]


def test_uris_are_relative_to_the_current_folder_and_escaped(reports, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT / "models")
    document = validate(render(reports["backdoored"]))
    assert document["runs"][0]["artifacts"][0]["location"] == {"uri": "example/model.onnx", "uriBaseId": "%SRCROOT%"}
    spaced = tmp_path / "my models" / "model v1.onnx"
    spaced.parent.mkdir()
    spaced.write_bytes((EXAMPLE / "model.onnx").read_bytes())
    monkeypatch.chdir(tmp_path)
    report = auditor.audit(Path("my models") / "model v1.onnx", EXAMPLE / "clean.npz", limit=10, device="cpu")
    location = validate(render(report))["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"] == "my%20models/model%20v1.onnx"


def test_the_schema_check_is_not_vacuous(reports) -> None:
    document = json.loads(render(reports["backdoored"]))
    document["runs"][0]["results"][0]["level"] = "fatal"
    del document["runs"][0]["results"][1]["message"]
    with pytest.raises(AssertionError, match=r"level|message"):
        validate(json.dumps(document))
