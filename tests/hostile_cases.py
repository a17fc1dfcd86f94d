"""Hostile and broken inputs, shared by the io stage's tests (tests/test_io_hostile.py, through the
library) and the CLI's (tests/test_cli.py, one line and exit 2 for each). Every case is a real file:
`build(tmp)` writes it into the test's folder and returns its path; `pattern` is what the refusal
must say; `error` is whose fault it is (the AuditorError subclass the library raises)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import builders
import numpy as np
import onnx
from builders import EXAMPLE, ROOT, sha256, tree
from onnx import TensorProto, helper

from auditor.errors import AuditorError, DataError, ModelError, OutputError


@dataclass(frozen=True)
class Case:
    build: Callable  # tmp -> model path (model tables), (model, data) (LYING_SHAPES, GRAPH_CASES) or data path (DATA_CASES)
    pattern: str
    error: type[AuditorError]


@dataclass
class Guarded:
    """Hashes and file listing of a folder before a command, to prove nothing changed after it."""

    folder: Path
    files: set[str]
    hashes: dict[str, str]
    top: set[str]

    @classmethod
    def take(cls, folder: Path) -> Guarded:
        hashes = {str(p): sha256(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}
        return cls(folder, tree(folder), hashes, set(os.listdir(ROOT)))

    def unchanged(self) -> None:
        assert tree(self.folder) == self.files, "files appeared or vanished"
        assert {p: sha256(Path(p)) for p in self.hashes} == self.hashes, "an input changed"
        assert set(os.listdir(ROOT)) == self.top, "something was written into the working directory"


def one_line(text: str) -> str:
    """A message as the CLI prints it: its lines joined (onnx and onnxruntime messages may span several)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def mlp_case(tmp: Path) -> tuple[Path, Path]:
    """A valid small model and valid data in `tmp`."""
    return builders.mlp(tmp / "model.onnx"), builders.data(tmp / "clean.npz")


def example_case(tmp: Path) -> tuple[Path, Path]:
    """Copies of the bundled example model and clean samples in `tmp`."""
    return Path(shutil.copy(EXAMPLE / "model.onnx", tmp)), Path(shutil.copy(EXAMPLE / "clean.npz", tmp))


# ---- model files ---------------------------------------------------------------------------------

def _truncated(tmp: Path, keep: float) -> Path:
    raw = (EXAMPLE / "model.onnx").read_bytes()
    path = tmp / "model.onnx"
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def _corrupt(tmp: Path) -> Path:
    raw = bytearray((EXAMPLE / "model.onnx").read_bytes())
    rng = np.random.default_rng(3)
    for position in rng.integers(0, 400, 40):  # the graph's structure lives at the front
        raw[position] = int(rng.integers(0, 256))
    path = tmp / "model.onnx"
    path.write_bytes(bytes(raw))
    return path


def _external_symlink(tmp: Path) -> Path:
    folder = tmp / "m"
    folder.mkdir()
    outside = tmp / "outside"
    outside.mkdir()
    path = builders.external(folder, "w1.bin")
    shutil.move(folder / "w1.bin", outside / "w1.bin")
    (folder / "w1.bin").symlink_to(outside / "w1.bin")
    return path


def _external_dotdot(tmp: Path) -> Path:
    folder = tmp / "m"
    folder.mkdir()
    return builders.external(folder, "../outside/w1.bin")


def _external_truncated(tmp: Path) -> Path:
    path = builders.external(tmp, "w1.bin")
    (tmp / "w1.bin").write_bytes((tmp / "w1.bin").read_bytes()[:40])
    return path


def _lying_initializer(tmp: Path) -> Path:
    """W1's dims say [4, 8] but its bytes hold [4, 7]."""
    model = builders.make_model(builders.mlp_graph())
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    w1.raw_data = np.ones((builders.FEATURES, builders.HIDDEN - 1), np.float32).tobytes()
    return builders.save(model, tmp / "model.onnx")


def _invalid_utf8(tmp: Path) -> Path:
    """The operator name 'Relu' with one byte replaced: not UTF-8, which onnx's C++ cannot take."""
    raw = builders.mlp(tmp / "model.onnx").read_bytes()
    at = raw.index(b"Relu")
    (tmp / "model.onnx").write_bytes(raw[:at] + b"R\xfflu" + raw[at + 4 :])
    return tmp / "model.onnx"


def _directory(tmp: Path) -> Path:
    path = tmp / "model.onnx"
    path.mkdir()
    return path


def _text(tmp: Path) -> Path:
    path = tmp / "model.onnx"
    path.write_text("name,score\nfoo,1\n")
    return path


def _npz_as_model(tmp: Path) -> Path:
    return Path(shutil.copy(EXAMPLE / "clean.npz", tmp / "model.onnx"))


def _empty(tmp: Path) -> Path:
    path = tmp / "model.onnx"
    path.write_bytes(b"")
    return path


_UNREADABLE = r"corrupt or truncated|not a valid ONNX|no nodes"
FILE_CASES = {
    "empty": Case(_empty, r"empty \(0 bytes\)", ModelError),
    "truncated-early": Case(lambda t: _truncated(t, 0.01), _UNREADABLE, ModelError),
    "truncated-half": Case(lambda t: _truncated(t, 0.5), _UNREADABLE, ModelError),
    "truncated-last-bytes": Case(lambda t: _truncated(t, 0.9999), _UNREADABLE, ModelError),
    "corrupt": Case(_corrupt, r"corrupt|not a valid ONNX|no nodes|not a readable", ModelError),
    "directory": Case(_directory, r"is a directory", ModelError),
    "text-file": Case(_text, r"not a readable ONNX model .*re-export or re-download it", ModelError),
    "npz-as-model": Case(_npz_as_model, r"not a readable ONNX model .*re-export or re-download it", ModelError),
    "external-absolute": Case(lambda t: builders.external(t, str(t / "elsewhere" / "w1.bin")), r"not a relative path", ModelError),
    "external-dotdot": Case(_external_dotdot, r"escapes the model's folder", ModelError),
    "external-symlink": Case(_external_symlink, r"escapes the model's folder", ModelError),
    "external-missing": Case(lambda t: builders.external(t, "w1.bin", write_data=False), r"external data file .* is missing", ModelError),
    "external-truncated": Case(_external_truncated, r"shorter than|truncated", ModelError),
    "external-bad-offset": Case(lambda t: builders.external(t, "w1.bin", offset="-4"), r"negative", ModelError),
    "external-huge-length": Case(lambda t: builders.external(t, "w1.bin", length=str(2**62)), r"over limits\.model_bytes", ModelError),
    "lying-initializer": Case(_lying_initializer, r"W1", ModelError),
    "invalid-utf8-operator": Case(_invalid_utf8, r"operator b'R\\xfflu' is not valid UTF-8", ModelError),
}


def fixed_batch(model: Path, batch: int, path: Path) -> Path:
    """A copy of `model` whose graph inputs and outputs fix the batch dimension at `batch` (as
    torch.onnx.export does without dynamic axes): 1 is audited one sample per run, any other refused."""
    proto = onnx.load(str(model))
    for value in [*proto.graph.input, *proto.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    onnx.save(proto, str(path))
    return path


def file_case(name: str, tmp: Path) -> tuple[Path, Path]:
    """FILE_CASES[name]'s model and valid data beside it (in the model's own folder when it has one)."""
    model = FILE_CASES[name].build(tmp)
    folder = tmp if model.parent == tmp else model.parent
    return model, builders.data(folder / "clean.npz")


def _data_for(model_builder: Callable[[Path], Path], features: int = builders.FEATURES):
    def build(tmp: Path) -> tuple[Path, Path]:
        return model_builder(tmp), builders.data(tmp / "clean.npz", features=features)
    return build


def _lying_input(tmp: Path) -> Path:
    """Declares 5 features per sample; the first layer's weights take 4."""
    return builders.mlp(tmp / "model.onnx", x_shape=("N", builders.FEATURES + 1))


def _lying_value_info(tmp: Path) -> Path:
    """An intermediate tensor declared [N, 99] where the graph computes [N, 8]."""
    info = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 99])
    return builders.mlp(tmp / "model.onnx", value_info=[info])


def _lying_output(tmp: Path) -> Path:
    """Declares 7 classes; the head computes 3."""
    return builders.mlp(tmp / "model.onnx", out_shape=("N", 7))


LYING_SHAPES = {
    "input-declares-5-features": Case(_data_for(_lying_input, builders.FEATURES + 1), r"declared shapes contradict.*'fc1'.*4 and 5",
                                      ModelError),
    "value-info-declares-99": Case(_data_for(_lying_value_info), r"declared shapes contradict.*'fc1'.*\(8\) vs \(99\)", ModelError),
    "output-declares-7": Case(_data_for(_lying_output), r"declared shapes contradict.*'fc2'.*\(3\) vs \(7\)", ModelError),
}


# ---- graphs auditor cannot audit ------------------------------------------------------------------

def _quantized(builder: Callable[[Path], Path], shape: tuple[int, ...]):
    def build(tmp: Path) -> tuple[Path, Path]:
        path = builder(tmp / "model.onnx")
        x = np.random.default_rng(0).normal(size=(12, *shape)).astype(np.float32)
        np.savez(tmp / "clean.npz", x=x)
        return path, tmp / "clean.npz"
    return build


def _model(builder: Callable[..., Path], *args: object):
    """A builder of `builder(tmp / "model.onnx", *args)` with valid data beside it."""
    return _data_for(lambda tmp: builder(tmp / "model.onnx", *args))


GRAPH_CASES = {
    "custom-domain": Case(_model(builders.custom_op), r"custom operator 'Exfiltrate' from domain 'com.evil'", ModelError),
    "unknown-op": Case(_model(builders.unknown_op), r"unknown operator 'TotallyRelu'", ModelError),
    "opset-from-the-future": Case(_model(builders.opset, 999), r"opset 999 is newer", ModelError),
    "opset-zero": Case(_model(builders.opset, 0), r"opset 0 .*not a valid", ModelError),
    "ml-opset-from-the-future": Case(_model(builders.ml_opset, 99), r"opset 99 of domain 'ai.onnx.ml' is newer", ModelError),
    "no-prunable-unit": Case(_model(builders.head_only), r"no prunable unit", ModelError),
    "qlinearconv": Case(_quantized(builders.qlinear_conv, (1, 8, 8)), r"quantized", ModelError),
    "qdq": Case(_quantized(builders.qdq_mlp, (builders.FEATURES,)), r"quantized", ModelError),
    "zipmap": Case(_model(builders.zipmap), r"ZipMap.*zipmap': False", ModelError),
    "zipmap-only": Case(_model(builders.zipmap, False), r"ZipMap", ModelError),
    "label-only": Case(_model(builders.label_only), r"no float output with class scores.*'label'", ModelError),
}


# ---- data files -----------------------------------------------------------------------------------

def _npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        np.savez(tmp / "clean.npz", **arrays)
        return tmp / "clean.npz"
    return build


def x(count: int = 20, features: int = builders.FEATURES, dtype=np.float32) -> np.ndarray:
    """Valid samples for the small MLP (seeded)."""
    return np.random.default_rng(1).normal(size=(count, features)).astype(dtype)


def _with(value: float) -> np.ndarray:
    samples = x()
    samples[3, 1] = value
    return samples


def _bytes(payload: bytes, name: str = "clean.npz") -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_bytes(payload)
        return tmp / name
    return build


def _truncated_npz(tmp: Path) -> Path:
    builders.data(tmp / "full.npz")
    raw = (tmp / "full.npz").read_bytes()
    (tmp / "full.npz").unlink()
    (tmp / "clean.npz").write_bytes(raw[: len(raw) // 2])
    return tmp / "clean.npz"


def _data_directory(tmp: Path) -> Path:
    (tmp / "clean.npz").mkdir()
    return tmp / "clean.npz"


def _lying_npy_header(tmp: Path) -> Path:
    return builders.npz_members(tmp / "clean.npz", {"x.npy": builders.lying_npy((20, 4), x(10))})


DATA_CASES = {
    "wrong-shape": Case(_npz(x=x(features=5)), r"shape \(5,\).*expects \(4,\)", DataError),
    "wrong-rank": Case(_npz(x=x()[:, :, None]), r"shape \(4, 1\).*expects \(4,\)", DataError),
    "string-dtype": Case(_npz(x=np.array([["a"] * 4] * 20)), r"dtype <U1; numeric arrays only", DataError),
    "complex-dtype": Case(_npz(x=x().astype(np.complex64)), r"complex64; numeric arrays only", DataError),
    "scalar": Case(_npz(x=np.float32(1.0)), r"scalar", DataError),
    "no-x": Case(_npz(images=x()), r"no array 'x' \(found: images\); save the samples under that name", DataError),
    "extra-array": Case(_npz(x=x(), z=x()), r"\['z'\] that match no model input", DataError),
    "nan": Case(_npz(x=_with(np.nan)), r"NaN or Inf", DataError),
    "inf": Case(_npz(x=_with(np.inf)), r"NaN or Inf", DataError),
    "too-large-for-float32": Case(_npz(x=x(dtype=np.float64) * 1e300), r"too large", DataError),
    "empty-file": Case(_bytes(b""), r"empty \(0 bytes\)", DataError),
    "no-samples": Case(_npz(x=x(count=0)), r"holds no samples", DataError),
    "fewer-than-limit": Case(_npz(x=x(count=5)), r"holds 5 samples, fewer than the limit of 10", DataError),  # with a limit of 10
    "negative-labels": Case(_npz(x=x(), y=-np.ones(20, np.int64)), r"non-negative class indices", DataError),
    "float-labels": Case(_npz(x=x(), y=np.zeros(20, np.float32)), r"1-D integer array", DataError),
    "label-count": Case(_npz(x=x(), y=np.zeros(7, np.int64)), r"7 labels for 20 samples", DataError),
    "truncated-npz": Case(_truncated_npz, r"corrupt or truncated", DataError),
    "lying-npy-header": Case(_lying_npy_header, r"declares shape \(20, 4\) \(320 bytes\) but holds 160", DataError),
    "not-npy-member": Case(lambda t: builders.npz_members(t / "clean.npz", {"x.txt": b"1,2,3"}), r"'x.txt' is not a .npy", DataError),
    "text-file": Case(_bytes(b"0.1,0.2,0.3,0.4\n"), r"not an .npz or .npy", DataError),
    "onnx-as-data": Case(_bytes((EXAMPLE / "model.onnx").read_bytes()[:4096]), r"not an .npz or .npy", DataError),
    "directory": Case(_data_directory, r"is a directory", DataError),
    "missing": Case(lambda t: t / "absent.npz", r"not found", DataError),
}


# ---- output paths ---------------------------------------------------------------------------------

def _unwritable(tmp: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "out"
    return Path("/proc") / f"auditor-test-{os.getpid()}"  # root may write anywhere but here


def _output_directory(tmp: Path) -> Path:
    (tmp / "outdir").mkdir()
    return tmp / "outdir"


def _link_to_model(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "model.onnx")
    return tmp / "link"


# `build(tmp)` -> the output path, beside mlp_case's model.onnx and clean.npz in tmp
OUTPUT_CASES = {
    "is-a-directory": Case(_output_directory, r"is a directory|exists and is not a regular file", OutputError),
    "folder-missing": Case(lambda t: t / "nowhere" / "out", r"output folder does not exist", OutputError),
    "parent-is-a-file": Case(lambda t: t / "clean.npz" / "out", r"is a file, not a folder", OutputError),
    "not-writable": Case(_unwritable, r"not writable|cannot write.*choose a writable output folder", OutputError),
    "is-the-model": Case(lambda t: t / "model.onnx", r"would overwrite an input", OutputError),
    "is-the-data": Case(lambda t: t / "clean.npz", r"would overwrite an input", OutputError),
    "symlink-to-model": Case(_link_to_model, r"would overwrite an input", OutputError),
}
