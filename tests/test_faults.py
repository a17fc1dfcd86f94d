"""Faults at every write: the disk filling up or the process being killed part-way through each file a command
writes (repaired model, its external data, each report), and two runs writing the same outputs at once.

Each fault is real and lands inside the write: the CLI runs in a fresh interpreter whose atomic-file primitive
(auditor.io.model._atomic_file, through which every output goes) is wrapped so that the k-th file it opens gets
half its bytes, then an ENOSPC from the write or a SIGKILL. The outcome must be: every output complete or absent,
never a partial file under an output's name; after a failure reported as such (exit 2), no output of the run left.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from builders import sha256, tree
from hostile_cases import example_case, mlp_case
from test_cli import python_cli

ROOT = Path(__file__).resolve().parent.parent

_FAULT = """
import contextlib, errno, os, signal
import auditor.io.model as written_by
if {external}:
    written_by._CHECKER_LIMIT = 100_000  # a 250 KB model takes the >2 GiB path: initializers to an external data file
original, opened = written_by._atomic_file, [0]


class Faulty:
    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        half = len(data) // 2
        self.handle.write(data[:half])
        self.handle.flush()
        if "{fault}" == "full":
            raise OSError(errno.ENOSPC, "No space left on device")
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self.handle, name)


@contextlib.contextmanager
def faulty(folder, target, shown):
    opened[0] += 1
    with original(folder, target, shown) as handle:
        yield Faulty(handle) if opened[0] == {at} else handle


written_by._atomic_file = faulty
"""

# command -> (its output options, the outputs in the order they are written)
COMMANDS = {
    "repair": (["-o", "repaired.onnx", "--json", "r.json", "--sarif", "r.sarif", "--html", "r.html"],
               ["repaired.onnx", "r.json", "r.sarif", "r.html"]),
    "scan": (["--json", "r.json", "--sarif", "r.sarif", "--html", "r.html"], ["r.json", "r.sarif", "r.html"]),
    "evaluate": (["--json", "r.json"], ["r.json"]),
}
CASES = [(command, k, fault) for command, (_, order) in COMMANDS.items() for k in range(1, len(order) + 1)
         for fault in ("full", "kill")]


def _complete(path: Path) -> None:
    """The output reads back whole: a model passes the checker with its data, a report parses."""
    if path.suffix == ".onnx":
        onnx.checker.check_model(onnx.load(str(path)))
    elif path.suffix in (".json", ".sarif"):
        json.loads(path.read_text())
    else:
        assert path.read_text().rstrip().endswith("</html>")


def _run(folder: Path, command: str, fault: str, at: int, external: bool = False) -> subprocess.CompletedProcess:
    model, data = folder / "model.onnx", folder / "clean.npz"
    options, _ = COMMANDS[command]
    args = [command, model, "--data", data, *[folder / o if not o.startswith("-") else o for o in options]]
    return python_cli(*args, prelude=_FAULT.format(fault=fault, at=at, external=external))


@pytest.mark.parametrize(("command", "at", "fault"), CASES, ids=[f"{c}-write{k}-{f}" for c, k, f in CASES])
def test_a_fault_inside_any_write_leaves_complete_outputs_or_none(command: str, at: int, fault: str, tmp_path: Path) -> None:
    mlp_case(tmp_path)
    inputs = {p.name: sha256(p) for p in tmp_path.iterdir()}
    result = _run(tmp_path, command, fault, at)
    order = COMMANDS[command][1]
    assert {p.name: sha256(p) for p in tmp_path.iterdir() if p.name in inputs} == inputs
    left = tree(tmp_path) - set(inputs)
    if fault == "full":
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0] and order[at - 1] in lines[0], lines
        assert left == set(), f"a failed run left {left}"
    else:
        assert result.returncode == -signal.SIGKILL
        assert left == set(order[:at - 1]), f"killed in write {at}: expected the {at - 1} finished outputs, found {left}"
        for name in left:
            _complete(tmp_path / name)


@pytest.mark.parametrize("fault", ["full", "kill"])
@pytest.mark.parametrize("at", [1, 2])
def test_a_fault_inside_the_external_data_or_the_model_that_names_it(at: int, fault: str, tmp_path: Path) -> None:
    """Above 2 GiB the repaired model's initializers go to `<name>.<hash16>.data` (write 1), before the .onnx that
    names it (write 2). The size threshold is lowered here so that the real path runs on a small model."""
    example_case(tmp_path)
    result = python_cli("repair", tmp_path / "model.onnx", "--data", tmp_path / "clean.npz", "--limit", "10", "-o", tmp_path / "repaired.onnx",
                        prelude=_FAULT.format(fault=fault, at=at, external=True))
    left = tree(tmp_path) - {"model.onnx", "clean.npz"}
    if fault == "full":
        assert result.returncode == 2 and "No space left on device" in result.stderr, result.stderr
        assert left == set()
    else:
        assert result.returncode == -signal.SIGKILL
        assert "repaired.onnx" not in left  # never a model without its data, nor a partial one
        assert all(name.endswith(".data") for name in left)  # at most the finished data file, whole
        for name in left:
            assert len((tmp_path / name).read_bytes()) > 0


def test_without_a_fault_the_external_data_path_writes_a_complete_model(tmp_path: Path) -> None:
    example_case(tmp_path)
    result = python_cli("repair", tmp_path / "model.onnx", "--data", tmp_path / "clean.npz", "--limit", "10", "-o", tmp_path / "repaired.onnx",
                        prelude=_FAULT.format(fault="none", at=0, external=True))
    assert result.returncode == 0, result.stderr
    data_files = [p for p in tmp_path.iterdir() if p.name.startswith("repaired.onnx.") and p.suffix == ".data"]
    assert len(data_files) == 1
    _complete(tmp_path / "repaired.onnx")


def test_two_runs_writing_the_same_outputs_at_once_leave_one_complete_output(tmp_path: Path) -> None:
    """Two repairs from different sample counts (so different bytes) into the same paths, started together."""
    mlp_case(tmp_path)
    outputs = {"repaired.onnx": {}, "r.json": {}}
    for count in ("10", "20"):  # each alone first: the two complete outputs either may leave
        solo = tmp_path / f"solo-{count}"
        solo.mkdir()
        done = python_cli("repair", tmp_path / "model.onnx", "--data", tmp_path / "clean.npz", "-o", solo / "repaired.onnx",
                          "--json", solo / "r.json", "--limit", count)
        assert done.returncode == 0, done.stderr
        outputs["repaired.onnx"][count] = sha256(solo / "repaired.onnx")
    assert len(set(outputs["repaired.onnx"].values())) == 2
    code = ("import sys, cli\nsys.argv = ['auditor', *sys.argv[1:]]\nsys.exit(cli.main())\n")
    runs = [subprocess.Popen([sys.executable, "-c", code, "repair", str(tmp_path / "model.onnx"), "--data",
                              str(tmp_path / "clean.npz"), "-o", str(tmp_path / "repaired.onnx"), "--json", str(tmp_path / "r.json"),
                              "--limit", count, "--force"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}) for count in ("10", "20")]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, (stderr, run.args)
    assert sha256(tmp_path / "repaired.onnx") in outputs["repaired.onnx"].values()
    _complete(tmp_path / "repaired.onnx")
    _complete(tmp_path / "r.json")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".auditor-")]
