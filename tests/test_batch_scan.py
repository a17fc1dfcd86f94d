"""Many models at once: `auditor scan` over files, folders and globs, one table and one JSON, the worst outcome as the
exit code, the same results whether the models run one after another or in parallel processes; and the exit-code
matrix of a single scan (clean, suspicious, not assessed, bad input)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli, save, tree
from test_kinds import _binary

from auditor import batch

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
# NCHW Fashion-MNIST models: the bundled example's clean samples fit them all
CLEAN, BACKDOORED = "cnn_bn-fmnist-clean-s0.onnx", "cnn_bn-fmnist-blended-s0.onnx"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A folder of models as a registry holds them: a clean one, a backdoored one, and a file that is not a model."""
    folder = tmp_path / "registry"
    (folder / "team").mkdir(parents=True)
    shutil.copy(ZOO / CLEAN, folder / CLEAN)
    shutil.copy(ZOO / BACKDOORED, folder / "team" / BACKDOORED)
    (folder / "broken.onnx").write_bytes(b"not a model")
    return folder


def test_the_exit_code_of_one_scan_says_clean_suspicious_not_assessed_or_bad_input(example, tmp_path: Path) -> None:
    binary, binary_data = _binary(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 64)
    cases = {"clean": (ZOO / CLEAN, example.clean, 0, []), "suspicious": (example.model, example.clean, 1, []),
             "not assessed": (binary, binary_data, 4, []), "bad input": (junk, example.clean, 2, []),
             # the budget stops the probe at once: not "clean", and not the channel scores' verdict either
             "out of time": (example.model, example.clean, 4, ["--budget", "1e-9"])}
    for name, (model, data, code, extra) in cases.items():
        result = run_cli("scan", model, "--data", data, "--limit", "10", *extra)
        assert result.returncode == code, (name, result.stdout, result.stderr)
        if code == 2:
            assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
        if code == 4:
            assert "NOT ASSESSED" in result.stdout
        if extra:
            assert "time budget of 1e-09 s ran out during the corruption probe" in result.stdout


def test_a_folder_scan_gives_one_table_one_json_and_the_worst_outcome(example, registry: Path, tmp_path: Path) -> None:
    report = tmp_path / "all.json"
    before = {p: p.read_bytes() for p in registry.rglob("*") if p.is_file()}
    result = run_cli("scan", registry, "--data", example.clean, "--limit", "10", "--json", report)
    assert result.returncode == 2, result.stderr  # an unreadable file outranks a finding: the gate could not judge it
    assert "summary: 1 clean, 1 suspicious, 1 error; exit code 2 (error)" in result.stdout
    assert "error: " in result.stdout and "broken.onnx" in result.stdout
    combined = json.loads(report.read_text())
    assert combined["schema"] == batch.SCHEMA
    outcomes = {Path(m["model"]).name: m["outcome"] for m in combined["models"]}
    assert outcomes == {"broken.onnx": "error", CLEAN: "clean", BACKDOORED: "suspicious"}
    assert combined["summary"]["outcomes"]["suspicious"] == 1 and combined["summary"]["exit_code"] == 2
    # each model's report is the one a scan of that model alone writes (timings aside)
    alone = tmp_path / "alone.json"
    single = run_cli("scan", registry / "team" / BACKDOORED, "--data", example.clean, "--limit", "10", "--json", alone)
    assert single.returncode == 1
    entry = next(m for m in combined["models"] if m["outcome"] == "suspicious")
    expected = json.loads(alone.read_text())
    for key in ("verdict", "layers", "data", "settings"):
        assert entry["report"][key] == expected[key], key
    assert {p: p.read_bytes() for p in registry.rglob("*") if p.is_file()} == before  # inputs never modified


def test_parallel_jobs_give_the_same_results_in_the_same_order(example, registry: Path) -> None:
    models = batch.expand([registry])
    one = batch.scan_many(models, example.clean, jobs=1, limit=10)
    two = batch.scan_many(models, example.clean, jobs=2, limit=10)
    assert [e.model for e in one] == [str(m) for m in models]
    assert next(e for e in two if e.report).report.provider["threads"] == batch.threads_per_job(2)  # the cores shared out between the processes
    texts = []
    for entries in (one, two):
        combined = batch.combined(entries, timings=False)
        for entry in combined["models"]:  # the one difference allowed: the threads each process was given
            if entry["report"] is not None:
                entry["report"]["provider"].pop("threads")
        texts.append(json.dumps(combined, sort_keys=True))
    assert texts[0] == texts[1]


def test_paths_folders_and_globs_expand_to_each_model_once(registry: Path) -> None:
    found = batch.expand([registry / CLEAN, str(registry / "**" / "*.onnx"), registry])
    assert [p.name for p in found] == [CLEAN, "broken.onnx", BACKDOORED]
    with pytest.raises(batch.DataError, match="matches no file"):
        batch.expand([str(registry / "*.tflite")])
    empty = registry / "empty"
    empty.mkdir()
    with pytest.raises(batch.DataError, match=r"holding no \.onnx"):
        batch.expand([empty])


def test_bad_batch_input_is_one_line_and_writes_nothing(example, registry: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for args in (["--html", out / "r.html"], ["--json", out / "r.json", "--data-missing"]):
        data = tmp_path / "nothing.npz" if "--data-missing" in args else example.clean
        args = [a for a in args if a != "--data-missing"]
        result = run_cli("scan", registry, "--data", data, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert tree(out) == set()


def test_threads_are_shared_out_between_jobs() -> None:
    assert batch.threads_per_job(2, cores=2) == 1
    assert batch.threads_per_job(4, cores=16) == 4
    assert batch.threads_per_job(32, cores=16) == 1


def test_worst_outcome_ranks_errors_over_findings_over_not_assessed() -> None:
    def entries(*outcomes: str) -> list[batch.Entry]:
        return [batch.Entry(f"m{i}", o, None, "") for i, o in enumerate(outcomes)]
    assert batch.worst(entries()) == "clean"
    assert batch.worst(entries("clean", "not assessed")) == "not assessed"
    assert batch.worst(entries("not assessed", "suspicious", "clean")) == "suspicious"
    assert batch.worst(entries("suspicious", "error")) == "error"
    assert batch.worst(entries("error", "bug")) == "bug"


def test_a_model_that_fails_in_a_worker_is_a_row_not_the_end_of_the_run(example, tmp_path: Path) -> None:
    wrong_input = tmp_path / "wrong_input.onnx"
    from builders import make_model, mlp_graph

    save(make_model(mlp_graph()), wrong_input)  # a tabular model: the image samples do not fit it
    entries = batch.scan_many([wrong_input, ZOO / CLEAN], example.clean, jobs=2, limit=10)
    assert [e.outcome for e in entries] == ["error", "clean"]
    assert entries[0].report is None and entries[0].message
    assert np.isfinite(entries[1].report.verdict.score)


def _stderr_on_a_terminal(args: list, env: dict) -> str:
    """Run the CLI with its stderr on a pseudo-terminal; what it drew there."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    from builders import ROOT

    master, slave = pty.openpty()
    drawn: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            drawn.append(chunk)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                             env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    os.close(slave)
    reader.join(10)
    os.close(master)
    assert process.returncode == 1
    return b"".join(drawn).decode(errors="replace")


def test_progress_bars_are_drawn_on_a_terminal_and_never_in_ci(example) -> None:
    import os

    args = ["scan", example.model, "--data", example.clean, "--limit", "10"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    drawn = _stderr_on_a_terminal(args, env)
    for stage in ("capture", "corruption probe", "Fourier probe", "patch search"):
        assert stage in drawn, stage
    assert "corruption probe" not in _stderr_on_a_terminal(args, {**env, "CI": "true"})
