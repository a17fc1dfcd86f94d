"""examples/ray_scan.py on a real local Ray cluster started by the test (`ray start --head`, no network needed):
three models (a clean zoo model, a backdoored one, a file that is no model) give one summary JSON with each
model's outcome, the worst outcome as exit code, and the same summary as `auditor.batch.combined` of a plain loop.
Without --address the example starts its own Ray instance and leaves no process behind. Each cluster's processes
are found by its own temp folder and ended by process id in teardown (`ray stop` would end every Ray process of the
user on the machine, other people's too)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from zoo_samples import MANIFEST, ZOO, clean

from auditor.batch import EXIT_CODES, combined, scan_one

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ray_scan.py"
RAY = Path(sys.executable).with_name("ray")
CLEAN, BACKDOORED = "cnn_bn-fmnist-clean-s0", "cnn_bn-fmnist-badnets-s1"
# The cluster and its drivers share a token of the test's own, whatever ~/.ray/auth_token holds (Ray reads that file
# by default, and a local `ray.init` writes one): token authentication on, and independent of the user's Ray state.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "CI": "true"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_of(folder: str) -> set[int]:
    """Process ids whose command line names `folder` (the cluster's temp folder), and their descendants."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            table[int(entry.name)] = (parent, command)
    ours = {pid for pid, (_, command) in table.items() if folder in command}
    while True:
        more = {pid for pid, (parent, _) in table.items() if parent in ours} - ours
        if not more:
            return ours - {os.getpid()}
        ours |= more


def _end(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and "(Z)" not in _state(pid) for pid in pids):
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] + ")"
    except (OSError, IndexError):
        return "(Z)"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray head with 2 CPUs on free ports, in its own short temp folder (Ray's socket paths must stay short)."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = _free_port()
    env = {**os.environ, **RAY_ENV}
    ports = {flag: str(_free_port()) for flag in ("--dashboard-port", "--dashboard-agent-listen-port",
                                                  "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")}
    command = [str(RAY), "start", "--head", "--num-cpus", "2", "--disable-usage-stats", "--include-dashboard=false",
               "--port", str(port), "--node-ip-address", "127.0.0.1", "--temp-dir", folder,
               *(part for flag, value in ports.items() for part in (flag, value))]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, f"ray start failed: {started.stderr[-2000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        _end(_processes_of(folder))
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[list[Path], Path]:
    folder = tmp_path_factory.mktemp("ray-models")
    bad = folder / "not-a-model.onnx"
    bad.write_bytes(b"this file is no ONNX model\n")
    # Both zoo models read Fashion-MNIST: one clean set serves the two.
    return [ZOO / f"{CLEAN}.onnx", ZOO / f"{BACKDOORED}.onnx", bad], clean(MANIFEST[CLEAN], folder)


def _without_timings(summary: dict) -> dict:
    for entry in summary["models"]:
        if entry["report"] is not None:
            entry["report"].pop("timings")
    return summary


def test_the_ray_example_gives_each_outcome_and_the_plain_loops_summary(cluster, models, tmp_path: Path) -> None:
    paths, data = models
    out = tmp_path / "summary.json"
    env = {**os.environ, **RAY_ENV}
    run = subprocess.run([sys.executable, str(EXAMPLE), *map(str, paths), "--data", str(data), "--out", str(out),
                          "--address", cluster, "--limit", "10", "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    summary = json.loads(out.read_text())
    assert [entry["outcome"] for entry in summary["models"]] == ["clean", "suspicious", "error"], run.stderr[-3000:]
    assert [entry["model"] for entry in summary["models"]] == [str(p) for p in paths]
    assert summary["models"][1]["report"]["verdict"]["target"] == MANIFEST[BACKDOORED]["target"]
    assert summary["models"][2]["report"] is None and summary["models"][2]["message"]
    assert summary["models"][0]["report"]["provider"]["threads"] == 1  # one onnxruntime thread per task
    assert summary["summary"]["worst"] == "error" and run.returncode == EXIT_CODES["error"] == 2
    assert "3 models: 1 clean, 1 suspicious, 1 error" in run.stdout

    plain = [scan_one(str(p), str(data), limit=10, device="cpu", threads=1) for p in paths]
    assert _without_timings(summary) == combined(plain, timings=False)


def test_the_exit_code_is_the_worst_outcome_without_a_bad_file(cluster, models, tmp_path: Path) -> None:
    paths, data = models
    env = {**os.environ, **RAY_ENV}
    run = subprocess.run([sys.executable, str(EXAMPLE), *map(str, paths[:2]), "--data", str(data), "--out",
                          str(tmp_path / "s.json"), "--address", cluster, "--limit", "10", "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == EXIT_CODES["suspicious"] == 1, run.stderr[-3000:]
    missing = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "nowhere.onnx"), "--data", str(data), "--out",
                              str(tmp_path / "never.json"), "--address", cluster], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nowhere.onnx" in missing.stderr and not (tmp_path / "never.json").exists()


def test_without_an_address_the_example_runs_its_own_ray_instance_and_stops_it(models, tmp_path: Path) -> None:
    paths, data = models
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # RAY_TMPDIR: this run's Ray files, and how its processes are found
    try:
        run = subprocess.run([sys.executable, str(EXAMPLE), str(paths[0]), "--data", str(data), "--out", str(tmp_path / "s.json"),
                              "--limit", "10", "--device", "cpu"], env={**os.environ, **RAY_ENV, "RAY_TMPDIR": folder},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert [m["outcome"] for m in json.loads((tmp_path / "s.json").read_text())["models"]] == ["clean"]
        deadline = time.monotonic() + 10  # ray.shutdown() ends them; give the last ones a moment to exit
        while (left := {pid for pid in _processes_of(folder) if "(Z)" not in _state(pid)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"Ray processes left running after the example ended: {sorted(left)}"
    finally:
        _end(_processes_of(folder))
        shutil.rmtree(folder, ignore_errors=True)
