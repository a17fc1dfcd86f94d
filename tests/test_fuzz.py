"""Mutated models and data files through the real CLI: whatever the bytes, the exit code is 0, 1
or 2, nothing escapes as a traceback, nothing is written but the output, and the inputs keep
their hash. Derandomized so that CI sees the same cases every run; AUDITOR_FUZZ_EXAMPLES raises
the count (and explores new cases) for a longer local run."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

import builders
import onnx
from builders import EXAMPLE, sha256, tree
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import app

RUNNER = CliRunner()
_EXTRA = int(os.environ.get("AUDITOR_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXTRA or 60, deadline=None, derandomize=not _EXTRA, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _bases() -> dict[str, tuple[bytes, bytes]]:
    """(model bytes, clean data bytes) of the small MLP and of the bundled example."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        mlp = builders.mlp(folder / "model.onnx").read_bytes(), builders.data(folder / "clean.npz").read_bytes()
    return {"mlp": mlp, "example": ((EXAMPLE / "model.onnx").read_bytes(), (EXAMPLE / "clean.npz").read_bytes())}


BASES = _bases()


@st.composite
def mutated(draw, raw: bytes, hot: int) -> bytes:
    """`raw` after 1-4 edits: byte flips, overwrites, truncation, insertion, deletion, duplication.
    Positions favour the first `hot` bytes, where headers and graph structure live."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        limit = len(data) - 1 if draw(st.booleans()) else min(hot, len(data) - 1)
        at = draw(st.integers(0, limit))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x12, 0x1A]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
    return bytes(data)


def _check_run(command: str, model_bytes: bytes, data_bytes: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, data = folder / "model.onnx", folder / "clean.npz"
        model.write_bytes(model_bytes)
        data.write_bytes(data_bytes)
        hashes = {model: sha256(model), data: sha256(data)}
        out = folder / ("repaired.onnx" if command == "repair" else "out.json")
        flag = "-o" if command == "repair" else "--json"
        result = RUNNER.invoke(app, [command, str(model), "--data", str(data), flag, str(out), "--limit", "10"],
                               env={"COLUMNS": "200", "AUDITOR_DEBUG": None})
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        assert result.exit_code in (0, 1, 2), result.output
        event(f"{command} exit {result.exit_code}")
        event(re.sub(r"/\S+", "PATH", result.stderr.strip())[:90])  # which refusals the fuzz reached
        assert {p: sha256(p) for p in hashes} == hashes, "an input changed"
        if result.exit_code == 2:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), lines
            assert "unexpected failure" not in lines[0], lines[0]
            assert tree(folder) == {"model.onnx", "clean.npz"}
        else:
            assert tree(folder) == {"model.onnx", "clean.npz", out.name}
            if command == "repair":
                onnx.checker.check_model(onnx.load(str(out)))
            else:
                json.loads(out.read_text())


@FUZZ
@given(data=st.data())
def test_mutated_models(data) -> None:
    base = data.draw(st.sampled_from(["mlp", "example"]))
    model_bytes, data_bytes = BASES[base]
    command = data.draw(st.sampled_from(["scan", "evaluate", "repair"] if base == "mlp" else ["scan", "evaluate"]))
    _check_run(command, data.draw(mutated(model_bytes, hot=2048)), data_bytes)


def _members(npz: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(npz)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


@FUZZ
@given(data=st.data())
def test_mutated_data(data) -> None:
    """Three ways in: the .npz bytes (mostly caught by the zip checksums), a valid zip around a
    mutated .npy member (reaches the array header and values), and a bare mutated .npy."""
    base = data.draw(st.sampled_from(["mlp", "example"]))
    model_bytes, data_bytes = BASES[base]
    command = data.draw(st.sampled_from(["scan", "evaluate"]))
    way = data.draw(st.sampled_from(["npz", "member", "npy"]))
    if way == "npz":
        hostile = data.draw(mutated(data_bytes, hot=512))
    else:
        members = _members(data_bytes)
        name = "x.npy" if way == "npy" else data.draw(st.sampled_from(sorted(members)))
        members[name] = data.draw(mutated(members[name], hot=160))
        hostile = members[name] if way == "npy" else _zipped(members)
    event(f"data via {way}")
    _check_run(command, model_bytes, hostile)

