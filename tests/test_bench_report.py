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
        {**_set(0.9, True, "corruption", 2, 1.0), "refused": "it would move the shortcut"},  # refused wins over all
        _set(0.2, False, "corruption", 2, 1.0),                              # under the gate
        _set(0.5, False, "corruption", 2, 1.0),                              # weak, no filter for its basis
        _set(0.5, False, "patch", 2, 1.0),                                   # weak, the filter broke the bounds
        _set(0.5, False, "patch", 2, 0.9, filtered="occlusion (weak)"),      # weak, filtered, survived
        _set(0.9, True, "corruption", 5, 1.0, cause="no_anchor"),            # wrong target wins over no_anchor
        _set(0.9, True, "corruption", 2, 1.0, cause="no_anchor"),
        _set(0.9, True, "corruption", 2, 1.0, cause="fidelity"),
        _set(0.9, True, "corruption", 2, 1.0, cause="not_removed"),           # stand-ins stayed on the target
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
    assert "measured when" not in text  # the run records the constants it ran with: today's
    import json

    older = json.loads((tmp_path / "gpu.json").read_text())
    del older["constants"]  # a run from before the patch sweep and the probe's blends came in says so
    (tmp_path / "gpu.json").write_text(json.dumps(older))
    assert "(measured when patch.SWEEP=False, probe.BLEND=False)" in "\n".join(report.gpu_section())


def test_a_variant_override_is_cast_to_the_setting_type_or_refused_with_the_reason():
    import pytest

    from auditor.errors import SettingsError
    from bench import verdict

    assert verdict.parse_override("patch.restarts=2") == ("patch.restarts", 2)
    assert verdict.parse_override("guard.half_slack=1.5") == ("guard.half_slack", 1.5)
    assert verdict.parse_override("guard.input_radii=0,1") == ("guard.input_radii", (0, 1))
    for text, reason in (("patch", "give SECTION.NAME=VALUE"), ("nothing.x=1", "unknown setting 'nothing.x'"),
                         ("patch.RESTARTS=2", "unknown setting 'patch.RESTARTS'"),
                         ("patch.restarts=two", "takes a int, got 'two'")):
        with pytest.raises(SettingsError, match=reason):
            verdict.parse_override(text)
    settings = verdict.variant_settings(["patch.restarts=2", "verdict.probe_threshold=0.7"])
    assert settings.patch.restarts == 2 and settings.verdict.probe_threshold == 0.7
    assert settings.differences() == {"patch.restarts": 2, "verdict.probe_threshold": 0.7}
    recorded = verdict.constants(settings)  # what a variant's run records: every setting, flattened
    assert recorded["patch.restarts"] == 2 and recorded["probe.noise_levels"] == [0.1, 0.2, 0.3]
    assert verdict.constants()["patch.restarts"] == 1
    path = verdict.variant_path(["patch.restarts=2", "patch.screen=50"])
    assert path.parent == verdict.VARIANTS and path.name == "patch.restarts=2+patch.screen=50.json"


def test_an_unknown_setting_is_refused_before_anything_runs(capsys):
    import pytest

    from bench import verdict

    with pytest.raises(SystemExit) as exited:
        verdict.main(["--set", "patch.SWEEP=false"])
    assert exited.value.code == 2
    assert "unknown setting 'patch.SWEEP'" in capsys.readouterr().err


def test_measured_when_compares_new_runs_by_setting_and_old_runs_by_their_module_constants():
    from bench import verdict

    current = verdict.constants()
    # a run of today's settings, a variant of it, and one measured when a default differed
    assert report.measured_when({"constants": current}, current) == ""
    variant = {"overrides": ["patch.restarts=2"], "constants": {**current, "patch.restarts": 2}}
    assert report.measured_when(variant, current) == ""
    older = {"overrides": ["patch.restarts=2"], "constants": {**current, "patch.restarts": 2, "patch.seed": 5}}
    assert report.measured_when(older, current) == " (measured when patch.seed=5)"
    batched = {"constants": {**current, "patch.chunk": 1 << 24, "capture.batch_values": 1 << 20,  # memory, not results
                             "verdict.calibration": [7.709, -3.511]}}  # the probability map: refitted by bench.calibrate
    assert report.measured_when(batched, current) == ""
    # a run from before auditor.settings: its module-level names, the removed ones and the format's ignored
    legacy = {"overrides": ["api.WEAK_UNLEARN=true"],
              "constants": {"api.WEAK_UNLEARN": True, "api.ANCHOR_SLACK": 0.0, "guard.HALF_SLACK": 3.0,
                            "score.PATCH_REACH": 0.6666666666666666, "patch.OCCLUSION_RING": True,
                            "rewrite.MASK_PREFIX": "__old_", "patch.SWEEP": True, "patch.CHUNK": 1 << 24}}
    assert report.measured_when(legacy, current) == (
        " (measured when api.ANCHOR_SLACK=0.0, patch.OCCLUSION_RING=True, probe.BLEND=False)")
    # every old constant shipped when the settings came in maps onto them unchanged
    shipped_then = {"api.ANCHOR_SLACK": 8.0, "api.FILTER_GATE": 0.4, "api.REQUIRE_ANCHOR": True, "patch.SWEEP": True,
                    "probe.BLEND": True, "score.FOURIER_REACH": 0.8571428571428572, "evaluate.BATCH": 256}
    then = {**current, "verdict.fourier_threshold": 0.7}  # the Fourier probe's threshold before its score changed
    assert report.measured_when({"constants": shipped_then}, then) == ""
    assert report.measured_when({"constants": shipped_then}, current) == " (measured when score.FOURIER_REACH=0.8571428571428572)"
    assert set(report.LEGACY_NAMES.values()) <= set(current)


def test_variants_section_sets_each_variant_beside_the_shipped_method_per_half(tmp_path, monkeypatch):
    import json

    from bench import zoo

    def model(name, kind, scores, halved):
        return {"name": name, "kind": kind, "target": 1 if kind == "backdoored" else None,
                "baseline": {"asr": 1.0 if kind == "backdoored" else None},
                "sets": [{"start": 10 * k, "score": s, "suspicious": s >= 0.6, "asr": (0.1 if h else 0.9) if kind == "backdoored" else None,
                          "acc_drop_points": 1.0, "target_drop_points": 4.0 * k} for k, (s, h) in enumerate(zip(scores, halved))]}

    shipped = {"sets": 2, "seconds": 10.0, "constants": {"patch.SWEEP": True, "probe.BLEND": True},
               "models": [model("b", "backdoored", [0.9, 0.5], [True, False]),
                          model("c", "clean", [0.2, 0.7], [False, False])]}
    variant = {"sets": 2, "seconds": 20.0, "overrides": ["patch.RESTARTS=2"], "note": "twice the search",
               # measured when the seed's default was 5, and before the patch sweep and the probe's blends came in
               "constants": {"patch.RESTARTS": 2, "patch.SEED": 5},
               "models": [model("b", "backdoored", [0.9, 0.8], [True, True]), model("c", "clean", [0.2, 0.3], [False, False])]}
    # the variant unlearned the clean model's suspected class once, at a 12-point cost to that class
    variant["models"][1]["sets"][1].update(unlearned=True, target=3, unlearned_class_drop_points=12.0)
    for record in variant["models"][0]["sets"]:
        record.update(target=1, unlearned_class_drop_points=None)
    monkeypatch.setattr(zoo, "RESULTS", tmp_path)
    (tmp_path / "variants").mkdir()
    (tmp_path / "verdict_sets.json").write_text(json.dumps(shipped))
    (tmp_path / "variants" / "patch.RESTARTS=2.json").write_text(json.dumps(variant))
    text = "\n".join(report.variants_section({"b": "tuning", "c": "tuning"}))
    # the shipped run predates the measure of what unlearning costs a class no attack aims at
    assert "| tuning | shipped | 0.500 | 50% / 50% | 1/2 | 1.00 / 1.00 | – | not measured | – |" in text
    # the variant halves the second set too: one pair gained, none lost, at a 4-point target-class cost
    assert ("| tuning | `patch.RESTARTS=2` (measured when patch.SEED=5, patch.SWEEP=False, probe.BLEND=False) "
            "| 1.000 | 100% / 0% | 2/2 | 1.00 / 1.00 | – | 1: 12.00 / 12.00 | 1 / 0 (4.00 / 4.00) |") in text
    assert "* `patch.RESTARTS=2`: twice the search" in text


def test_a_drop_of_exactly_the_limit_is_not_a_shortfall_despite_float_noise():
    record = {"status": "ok", "acc_drop_points": 100.0 * (0.934 - 0.914), "target_drop_points": None}
    assert record["acc_drop_points"] > report.MAX_ACC_DROP  # 2.0000000000000018 in floats
    result = {"name": "m", "kind": "clean", "runs": {"10": {"methods": {"sus": record}}}}
    assert not any("ACC drop" in flag for flag in report.shortfalls(result, "sus", 10))
