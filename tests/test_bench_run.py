"""bench.run times every method's repeats in rounds, on real repairs of a zoo model."""

from __future__ import annotations

import zoo_samples

from bench import run, zoo


def test_repeats_go_round_the_methods(tmp_path, monkeypatch):
    entry = next(e for e in zoo.load_entries(include_example=False) if e["name"] == "sk_mlp_badnets_s0")
    calls = []
    real = run.timed_run

    def recorded(entry, method, clean, out_path):  # the real repair, with its order noted
        calls.append(method)
        return real(entry, method, clean, out_path)

    monkeypatch.setattr(run, "timed_run", recorded)
    clean = zoo_samples.clean(zoo_samples.MANIFEST[entry["name"]], tmp_path)
    test = zoo_samples.dataset(zoo_samples.MANIFEST[entry["name"]], "test", tmp_path)
    triggered = zoo_samples.dataset(zoo_samples.MANIFEST[entry["name"]], "triggered", tmp_path)
    baseline = run._evaluate(entry["file"], entry, test, triggered)
    records = run.run_methods(entry, ["sus", "fp"], clean, tmp_path, 10, baseline, test, triggered, repeat=2)

    assert calls == ["sus", "fp", "sus", "fp"]
    for method in ("sus", "fp"):
        record = records[method]
        assert record["status"] == "ok", record
        assert len(record["wall_runs"]) == 2 and record["wall_s"] > 0
        assert (tmp_path / f"repaired-{method}-n10.onnx").exists()
        assert 0.0 <= record["accuracy"] <= 1.0 and record["asr"] is not None


def test_a_failing_method_is_recorded_not_raised(tmp_path):
    entry = next(e for e in zoo.load_entries(include_example=False) if e["name"] == "sk_mlp_badnets_s0")
    missing = tmp_path / "missing.npz"
    records = run.run_methods(entry, ["sus"], missing, tmp_path, 10, {"accuracy": 1.0, "asr": 1.0}, missing, None)
    assert records["sus"]["status"] == "error"
    assert "missing.npz" in records["sus"]["reason"]


def test_files_of_one_name_from_two_zoos_keep_their_own_cache(tmp_path, monkeypatch):
    """The RGB and the families zoo each hold a data/emoji-test.npz; each model must be evaluated on its own."""
    import numpy as np

    monkeypatch.setattr(zoo, "WORK", tmp_path / "work")
    made = []
    for k, folder in enumerate(("zoo_a", "zoo_b")):
        (tmp_path / folder / "data").mkdir(parents=True)
        np.savez(source := tmp_path / folder / "data" / "emoji-test.npz", x=np.full((2, 3, 4, 4), k, np.uint8), y=[k, k])
        made.append(zoo.materialise(str(source), "nhwc"))
    assert made[0] != made[1]
    for k, path in enumerate(made):
        with np.load(path) as archive:
            assert archive["x"].shape == (2, 4, 4, 3) and (archive["x"] == k).all() and list(archive["y"]) == [k, k]
