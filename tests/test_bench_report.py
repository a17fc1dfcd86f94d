"""The benchmark report says what each repair did and why an attack survived, from the records."""

from bench import report


def test_how_names_the_input_filter_from_its_entry_or_from_the_graph_record():
    bound = {"factor": 0.9, "input_radius": 1}
    old = {"bound": bound, "how": {"@input:x": "occlude+clamp"}, "unlearning": {"cause": "bounds_removed"}}
    assert report._how(old) == "bounds, occlusion, not unlearned: nothing left to unlearn"
    new = {"bound": bound, "how": {"@input:x": "notch+clamp"}, "notch": {"applied": True, "weak": True},
           "occlusion": {"applied": False}, "unlearning": {"applied": True, "target": 3}}
    assert report._how(new) == "bounds, notch (weak verdict), unlearned class 3"
    refused = {"bound": {}, "how": {}, "notch": {"applied": False}, "occlusion": {"applied": False},
               "unlearning": {"cause": "not_flagged"}}
    assert report._how(refused) == "nothing"


def _set(score, suspicious, basis, target, asr, filtered=None, cause=None):
    return {"score": score, "suspicious": suspicious, "basis": basis, "target": target, "asr": asr,
            "filtered": filtered, "unlearning_cause": cause}


def test_shortfall_causes_counts_each_surviving_pair_once_by_its_first_cause():
    model = {"name": "m", "kind": "backdoored", "target": 2, "baseline": {"asr": 1.0}, "sets": [
        _set(0.2, False, "corruption", 2, 1.0),                              # under the gate
        _set(0.5, False, "corruption", 2, 1.0),                              # weak, no filter for its basis
        _set(0.5, False, "patch", 2, 1.0),                                   # weak, the filter broke the bounds
        _set(0.5, False, "patch", 2, 0.9, filtered="occlusion (weak)"),      # weak, filtered, survived
        _set(0.9, True, "corruption", 5, 1.0, cause="no_anchor"),            # wrong target wins over no_anchor
        _set(0.9, True, "corruption", 2, 1.0, cause="no_anchor"),
        _set(0.9, True, "corruption", 2, 1.0, cause="fidelity"),
        _set(0.9, True, "patch", 2, 0.8, filtered="occlusion"),              # repaired, survived
        _set(0.9, True, "patch", 2, 0.5, filtered="occlusion"),              # halved: not counted
    ]}
    clean = {"name": "c", "kind": "clean", "target": None, "baseline": {"asr": None},
             "sets": [_set(0.9, True, "patch", 1, None)]}
    lines = report.shortfall_causes([model, clean], {"m": "held-back", "c": "held-back"})
    counts = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[1] for row in lines if row.startswith("| ") and "---" not in row}
    assert [counts[text] for text, _ in report.CAUSES] == ["1"] * len(report.CAUSES)
    assert counts["total not halved"] == str(len(report.CAUSES))


def test_aggregate_reports_the_target_class_drop_of_backdoored_models_only():
    def result(name, kind, drop, target_drop):
        record = {"status": "ok", "asr": 0.1 if kind == "backdoored" else None, "wall_s": 1.0,
                  "acc_drop_points": drop, "target_drop_points": target_drop}
        return {"name": name, "kind": kind, "baseline": {"asr": 1.0 if kind == "backdoored" else None},
                "runs": {"10": {"status": "ok", "methods": {"sus": record}}}}

    results = [result("a", "backdoored", 0.5, 4.0), result("b", "backdoored", 1.0, 30.0),
               result("c", "backdoored", 0.2, None), result("d", "clean", 0.1, None)]
    row = report.aggregate(results, 10, "sus")
    assert row["median_target_drop"] == 17.0 and row["worst_target_drop"] == 30.0
    assert row["asr_halved"] == 3 and row["median_acc_drop"] == 0.35


def test_shortfalls_mark_a_large_target_class_drop_even_when_the_attack_is_halved():
    def result(target_drop):
        record = {"status": "ok", "asr": 0.0, "wall_s": 1.0, "acc_drop_points": 1.0, "target_drop_points": target_drop}
        return {"name": "m", "kind": "backdoored", "baseline": {"asr": 1.0},
                "runs": {"10": {"status": "ok", "methods": {"sus": record}}}}

    assert report.shortfalls(result(19.4), "sus", 10) == ["target-class ACC drop 19.4 > 10"]
    assert report.shortfalls(result(report.MAX_TARGET_DROP), "sus", 10) == []


def _side(seconds, anp):
    return {"audit_s": seconds / 2, "repair_s": seconds / 2, "plain_s": 0.001, "anp_s": anp}


def test_gpu_section_tables_both_providers_and_a_failed_model(tmp_path, monkeypatch):
    from bench import gpu, zoo

    rows = [{"name": "m", "n": 10, "cuda": _side(1.0, 2.0), "cpu": _side(2.0, 8.0),
             "same": {"suspicious": True, "target": False}, "score_difference": 1e-7},
            {"name": "r", "n": 10, "error": "ModelError: internal check failed"}]
    monkeypatch.setattr(zoo, "RESULTS", tmp_path)
    summary = gpu.write(tmp_path / "gpu.json", ["--anp"], gpu.runtime.select_provider("cpu"), [10], rows)
    assert summary["10"]["median_anp_ratio_cuda"] == 2.0 and summary["10"]["median_anp_ratio_cpu"] == 4.0
    assert summary["10"]["errors"] == 1 and summary["10"]["models"] == 1
    text = "\n".join(report.gpu_section())
    assert "| m | 10 | 1.00 | 2.00 | 2.00 | 8.00 |" in text and "no: target" in text
    assert "| r | 10 | error: ModelError: internal check failed |" in text
    assert "ANP cuda 2.00 s, 2.0x auditor's time" in text and "1 failed (in the table)" in text
