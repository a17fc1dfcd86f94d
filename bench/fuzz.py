"""Mutation fuzzing of auditor's readers of untrusted files (issue 27): ONNX models, their external data, .npz/.npy samples.

    python -m bench.fuzz --long --out bench/results/fuzz.json      # the long campaign, 50,000 cases per kind
    python -m bench.fuzz [--cases N] [--kinds onnx,external,npz,npz-member,npz-deflate,npy] [--seed S] [--out FILE]
    python -m bench.fuzz --replay KIND:SEED

The contract under test: whatever the bytes, a reader returns or raises an `AuditorError` (one line naming the
problem); any other exception is a bug the CLI would report as an "unexpected failure". Every case mutates a real
base file in process and calls the library directly (no CLI, no subprocess), so a kind runs thousands of cases a
minute. A case depends only on its kind and its own seed (`--replay` rebuilds it exactly); a run's case seeds are
`seed * 1_000_000 + index`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import platform
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import auditor
from auditor.errors import AuditorError
from auditor.io import data as data_io
from auditor.io import model as model_io

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "models" / "example"
OUTPUT = ROOT / "bench" / "results" / "fuzz.json"
KINDS = ("onnx", "external", "npz", "npz-member", "npz-deflate", "npy")
SEED_STRIDE = 1_000_000
CASE_SECONDS = 30  # a case still running after this is recorded as a hang (a failure)
MAX_LISTED_FAILURES = 50  # per kind in the summary; the classes count them all
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)
BIG_VALUES = (0, 1, 127, 128, 255, 2**15, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1)

Range = tuple[int, int]


class Hang(Exception):
    """A case ran past CASE_SECONDS."""


@dataclass
class Outcome:
    """One case: ok, refused (an AuditorError's message) or failure (any other exception)."""

    kind: str
    seed: int
    status: str
    message: str = ""
    error: str = ""  # exception type, for failures
    where: str = ""  # innermost auditor frame, for failures: the class of the crash
    multi_line: bool = False  # a refusal whose message spans lines


@dataclass
class KindSummary:
    """What `run_kind` reports for one kind (the JSON summary's entry)."""

    cases: int = 0
    ok: int = 0
    refused: int = 0
    failures: list[dict] = field(default_factory=list)
    failure_classes: dict[str, int] = field(default_factory=dict)
    refusals: list[tuple[str, int]] = field(default_factory=list)  # top 20 distinct messages, with counts
    distinct_refusals: int = 0
    multi_line: int = 0  # refusals whose message spans lines (the CLI joins them; worth a look, not a failure)
    seconds: float = 0.0


# ---- byte mutation ------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _position(size: int, rng: random.Random, hot: list[Range]) -> int:
    """Mostly inside one of the `hot` ranges (headers, the first KB), else anywhere."""
    if size == 0:
        return 0
    if hot and rng.random() < 0.75:
        start, end = rng.choice(hot)
        start, end = max(0, min(start, size - 1)), max(1, min(end, size))
        if end > start:
            return rng.randrange(start, end)
    return rng.randrange(size)


# bit flip, interesting byte, varint, truncation, deletion, insertion, duplication, random run, random byte: edits that
# keep the length dominate, since a shifted protobuf or zip mostly stops at the parser
OP_WEIGHTS = (6, 5, 3, 1, 1, 1, 1, 2, 3)


def mutate(data: bytes, rng: random.Random, hot: list[Range] | None = None, max_ops: int = 4) -> bytes:
    """Apply 1..max_ops (mostly one) random edits: bit flips, interesting bytes, varints, cuts, inserts, copies."""
    buf = bytearray(data)
    hot = [(0, 4096)] if hot is None else hot
    for _ in range(1 + min(int(rng.expovariate(1.2)), max_ops - 1)):
        op = rng.choices(range(9), OP_WEIGHTS)[0]
        at = _position(len(buf), rng, hot)
        if not buf:
            op = 5
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.choice(INTERESTING)
        elif op == 2:
            value = rng.choice(BIG_VALUES) if rng.random() < 0.7 else rng.getrandbits(rng.choice((8, 16, 35, 64)))
            span = rng.randint(0, 5)
            buf[at : at + span] = _varint(value)
        elif op == 3:
            del buf[rng.randrange(len(buf)) if rng.random() < 0.5 else at :]
        elif op == 4:
            del buf[at : at + rng.randint(1, 64)]
        elif op == 5:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 6:
            start = _position(len(buf), rng, hot)
            buf[at:at] = buf[start : start + rng.randint(1, 64)]
        elif op == 7:
            span = rng.randint(1, 8)
            buf[at : at + span] = rng.randbytes(span)
        else:
            buf[at] = rng.randrange(256)
    return bytes(buf)


# ---- zip by hand (so a corrupt deflate stream can sit behind consistent headers) ---------------

@dataclass
class Member:
    name: str
    method: int  # 0 stored, 8 deflate
    payload: bytes  # as stored in the archive (compressed for deflate)
    crc: int
    size: int  # uncompressed


def read_members(blob: bytes) -> list[Member]:
    """The members of a well-formed zip, with their raw (still compressed) bytes."""
    import io

    members = []
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        for info in archive.infolist():
            offset = info.header_offset
            name_len, extra_len = struct.unpack("<HH", blob[offset + 26 : offset + 30])
            start = offset + 30 + name_len + extra_len
            members.append(Member(info.filename, info.compress_type, blob[start : start + info.compress_size], info.CRC, info.file_size))
    return members


def write_zip(members: list[Member]) -> bytes:
    """A minimal zip (no extras, no zip64) whose headers agree with each member's payload, crc and size."""
    out, central = bytearray(), bytearray()
    for m in members:
        name = m.name.encode()
        offset = len(out)
        fields = (20, 0, m.method, 0, 0x21, m.crc & 0xFFFFFFFF, len(m.payload), m.size & 0xFFFFFFFF, len(name))
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", *fields, 0) + name + m.payload
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


def _inflate(payload: bytes) -> bytes | None:
    """The raw deflate stream's output, or None when it is corrupt or incomplete."""
    decoder = zlib.decompressobj(-15)
    try:
        out = decoder.decompress(payload, 1 << 26) + decoder.flush()
    except zlib.error:
        return None
    return out if decoder.eof else None


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _stored_zip(members: dict[str, bytes]) -> bytes:
    return write_zip([Member(name, 0, payload, zlib.crc32(payload), len(payload)) for name, payload in members.items()])


def _deflated_zip(members: dict[str, bytes]) -> bytes:
    def deflate(payload: bytes) -> bytes:
        encoder = zlib.compressobj(6, zlib.DEFLATED, -15)
        return encoder.compress(payload) + encoder.flush()

    return write_zip([Member(name, 8, deflate(payload), zlib.crc32(payload), len(payload)) for name, payload in members.items()])


# ---- base files -----------------------------------------------------------------------------------

def _builders():
    """tests/builders.py (not a package): the tiny MLP the hostile-input tests use."""
    spec = importlib.util.spec_from_file_location("_fuzz_builders", ROOT / "tests" / "builders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class DataBase:
    """Arrays of one real sample file, and the specs of the model they feed."""

    name: str
    arrays: dict[str, np.ndarray]
    specs: list[data_io.InputSpec]
    limit: int


class Bases:
    """The real files every mutation starts from, built once into `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        builders = _builders()
        self.mlp_path = builders.mlp(folder / "mlp.onnx")
        self.clean = builders.data(folder / "clean.npz")
        self.models = {"mlp": self.mlp_path.read_bytes(), "example": (EXAMPLE / "model.onnx").read_bytes()}
        proto = onnx.load_model(str(self.mlp_path))
        external = folder / "external"
        external.mkdir(exist_ok=True)
        onnx.save_model(proto, str(external / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.data", size_threshold=0)
        self.external_onnx = (external / "model.onnx").read_bytes()
        self.external_data = (external / "weights.data").read_bytes()
        model_io.load(external / "model.onnx")  # the unmutated base must load
        self.data = []
        for name, model, samples, limit in (("mlp", self.mlp_path, self.clean, 10), ("example", EXAMPLE / "model.onnx", EXAMPLE / "clean.npz", 10)):
            with np.load(samples, allow_pickle=False) as loaded:
                arrays = {k: loaded[k] for k in loaded.files}
            self.data.append(DataBase(name, arrays, data_io.input_specs(model_io.load(model).proto), limit))


# ---- the kinds ------------------------------------------------------------------------------------

class Fuzzer:
    """Runs cases of each kind inside `workdir` (a folder per kind, files rewritten by every case)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bases = Bases(workdir / "bases")
        self.kinds: dict[str, Callable[[random.Random, Path], Callable[[], object]]] = {
            "onnx": self._onnx, "external": self._external, "npz": self._npz,
            "npz-member": self._npz_member, "npz-deflate": self._npz_deflate, "npy": self._npy,
        }

    def folder(self, kind: str) -> Path:
        path = self.workdir / kind / "case"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def case(self, kind: str, seed: int, reraise: bool = False) -> Outcome:
        """Run one case; an AuditorError is a refusal, anything else a failure (re-raised when asked, for a traceback).
        Writing the mutated files happens outside the guard: an error there is the harness's, and stops the run."""
        read = self.kinds[kind](random.Random(seed), self.folder(kind))
        try:
            with _deadline(CASE_SECONDS), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read()
        except AuditorError as exc:
            return Outcome(kind, seed, "refused", _strip(str(exc), self.workdir)[:80], multi_line="\n" in str(exc).strip())
        except Exception as exc:
            if reraise:
                raise
            return Outcome(kind, seed, "failure", _strip(" ".join(str(exc).split()), self.workdir)[:300],
                           f"{type(exc).__module__}.{type(exc).__qualname__}", _where(exc))
        return Outcome(kind, seed, "ok")

    def _onnx(self, rng: random.Random, folder: Path) -> Callable[[], object]:
        base = rng.choice(("mlp", "example"))
        path = folder / "model.onnx"
        blob = self.bases.models[base]
        path.write_bytes(mutate(blob, rng, [(0, 4096)] if rng.random() < 0.8 else []))

        def read() -> None:
            model_io.load(path)
            if base == "mlp":  # cheap: the later stages see the mutated graphs too
                auditor.audit(path, self.bases.clean, limit=10, device="cpu", patch_search=False, fourier_probe=False)

        return read

    def _external(self, rng: random.Random, folder: Path) -> Callable[[], object]:
        model, weights = self.bases.external_onnx, self.bases.external_data
        (folder.parent / "outside.data").write_bytes(weights)  # a real file a location may try to escape to
        mode = rng.random()
        if mode < 0.45:
            weights = mutate(weights, rng, [])
        elif mode < 0.6:
            cut = rng.randrange(len(weights) + 1)
            weights = weights[:cut] if rng.random() < 0.5 else weights + rng.randbytes(rng.randint(1, 64))
        elif mode < 0.9:
            model = _mutate_entries(model, rng, len(weights))
        else:
            model = mutate(model, rng, [])
        if rng.random() < 0.15:
            weights = mutate(weights, rng, [])
        (folder / "weights.data").write_bytes(weights)
        (folder / "model.onnx").write_bytes(model)
        return lambda: model_io.load(folder / "model.onnx")

    def _data_base(self, rng: random.Random) -> DataBase:
        return rng.choice(self.bases.data)

    def _load_data(self, path: Path, base: DataBase, rng: random.Random) -> Callable[[], object]:
        limit = rng.choice((None, base.limit))
        return lambda: data_io.load(path, base.specs, limit)

    def _npz(self, rng: random.Random, folder: Path) -> Callable[[], object]:
        base = self._data_base(rng)
        members = {f"{k}.npy": _npy(v) for k, v in base.arrays.items()}
        blob = _stored_zip(members) if rng.random() < 0.5 else _deflated_zip(members)
        hot = [(0, 128), (max(0, len(blob) - 256), len(blob))]  # first local header; central directory and end record
        path = folder / "samples.npz"
        path.write_bytes(mutate(blob, rng, hot))
        return self._load_data(path, base, rng)

    def _npz_member(self, rng: random.Random, folder: Path) -> Callable[[], object]:
        base = self._data_base(rng)
        members = {f"{k}.npy": _npy(v) for k, v in base.arrays.items()}
        name = rng.choice(sorted(members))
        members[name] = mutate(members[name], rng, [(0, 128)])
        path = folder / "samples.npz"
        path.write_bytes(_stored_zip(members))
        return self._load_data(path, base, rng)

    def _npz_deflate(self, rng: random.Random, folder: Path) -> Callable[[], object]:
        base = self._data_base(rng)
        members = read_members(_deflated_zip({f"{k}.npy": _npy(v) for k, v in base.arrays.items()}))
        member = rng.choice(members)
        payload = mutate(member.payload, rng, [(0, 64)])
        inflated = _inflate(payload)
        if inflated is not None and rng.random() < 0.8:  # a stream that still decodes: let the CRC check pass too
            member.crc, member.size = zlib.crc32(inflated), len(inflated)
        member.payload = payload
        if rng.random() < 0.1:  # the same bytes declared as another method: bzip2 and lzma decoders, unsupported ones
            member.method = rng.choice((9, 12, 14, 93, 99))
        path = folder / "samples.npz"
        path.write_bytes(write_zip(members))
        return self._load_data(path, base, rng)

    def _npy(self, rng: random.Random, folder: Path) -> Callable[[], object]:
        base = self._data_base(rng)
        path = folder / "samples.npy"
        path.write_bytes(mutate(_npy(base.arrays["x"]), rng, [(0, 128)]))
        return self._load_data(path, base, rng)


_LOCATIONS = ("", "weights.data", "./weights.data", "sub/../weights.data", "../case/weights.data", "../outside.data",
              "../../outside.data", "weights.data/..", ".", "..", "missing.data", "weights.data\0.txt", "model.onnx",
              "weights.data ", "wéights.data", "~/weights.data", "C:\\weights.data", "\\\\server\\share\\w.data",
              "/dev/zero", "/proc/self/mem", "a" * 300, "a/" * 3000 + "w", "weights.data/x", "\n", "%s%n")
_NUMBERS = ("-1", "0", "1", "4", "7", "8", "", " 8", "0x10", "1e3", "+4", "٣", "1_0", "²", "9" * 30, "9" * 5000, "abc",
            "-0", "nan", "4294967296", "18446744073709551616")


def _mutate_entries(blob: bytes, rng: random.Random, data_size: int) -> bytes:
    """Edit a tensor's external-data entries (location, offset, length, unknown keys) or its type and shape."""
    proto = onnx.load_model_from_string(blob)
    tensors = [t for t in proto.graph.initializer if t.external_data]
    for _ in range(rng.randint(1, 3)):
        tensor = rng.choice(tensors)
        entries = {e.key: e for e in tensor.external_data}
        action = rng.randrange(8)
        if action <= 1:
            key = rng.choice(("location", "offset", "length"))
            value = rng.choice(_LOCATIONS) if key == "location" else rng.choice((*_NUMBERS, str(data_size), str(data_size + 1)))
            if key in entries:
                entries[key].value = value
            else:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        elif action == 2 and tensor.external_data:
            del tensor.external_data[rng.randrange(len(tensor.external_data))]
        elif action == 3:
            entry = tensor.external_data.add()
            entry.key = rng.choice(("location", "offset", "length", "checksum", "basepath", "bogus", ""))
            entry.value = rng.choice((*_LOCATIONS[:4], *_NUMBERS[:6]))
        elif action == 4:
            tensor.data_location = rng.choice((onnx.TensorProto.DEFAULT, onnx.TensorProto.EXTERNAL))
        elif action == 5:
            if tensor.dims and rng.random() < 0.7:
                tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice((0, 1, 2, 3, 1000, 2**31, 2**40, 2**62))
            else:
                tensor.dims.append(rng.choice((0, 1, 2)))
        elif action == 6:
            tensor.data_type = rng.choice((0, 2, 3, 6, 7, 8, 10, 11, 16, 17, 21, 22, 23, 40))
        else:
            tensor.raw_data = rng.randbytes(rng.choice((0, 4, 32)))
    return proto.SerializeToString()


# ---- running --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Raise Hang in the main thread after `seconds` (native code finishes its call first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise Hang(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _strip(text: str, workdir: Path) -> str:
    """One line with the fuzz folder and other absolute paths taken out (messages group by what they say)."""
    text = " ".join(text.split()).replace(str(workdir), "")
    return re.sub(r"(?<![\w.])/[^\s:;,'\")]+", "<path>", text)


def _where(exc: BaseException) -> str:
    """The innermost frame in auditor (or else the innermost of all): names the failure's class."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/auditor/" in f.filename] or frames
    if not ours:
        return ""
    frame = ours[-1]
    return f"{Path(frame.filename).relative_to(ROOT) if frame.filename.startswith(str(ROOT)) else Path(frame.filename).name}:{frame.name}"


def run_kind(fuzzer: Fuzzer, kind: str, cases: int, seed: int, progress: Callable[[str], None] | None = None) -> KindSummary:
    """`cases` cases of `kind`, seeds seed * SEED_STRIDE + 0.. ."""
    summary = KindSummary()
    refusals: collections.Counter[str] = collections.Counter()
    classes: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    for index in range(cases):
        outcome = fuzzer.case(kind, seed * SEED_STRIDE + index)
        summary.cases += 1
        if outcome.status == "ok":
            summary.ok += 1
        elif outcome.status == "refused":
            summary.refused += 1
            summary.multi_line += outcome.multi_line
            refusals[outcome.message] += 1
        else:
            label = f"{outcome.error} at {outcome.where}"
            classes[label] += 1
            if len(summary.failures) < MAX_LISTED_FAILURES:
                summary.failures.append({**asdict(outcome), "replay": f"python -m bench.fuzz --replay {kind}:{outcome.seed}"})
            if progress:
                progress(f"{kind}:{outcome.seed} FAILURE {label}: {outcome.message[:160]}")
        if progress and (index + 1) % 1000 == 0:
            progress(f"{kind}: {index + 1}/{cases} ({time.perf_counter() - start:.0f} s)")
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.failure_classes = dict(classes.most_common())
    summary.refusals = refusals.most_common(20)
    summary.distinct_refusals = len(refusals)
    return summary


def fuzz(kinds: tuple[str, ...] = KINDS, cases: int = 2000, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Run the kinds in sequence in a throwaway folder; the summary `--out` writes."""
    ort.set_default_logger_severity(3)
    workdir = Path(tempfile.mkdtemp(prefix="auditor-fuzz-"))
    try:
        fuzzer = Fuzzer(workdir)
        started = time.perf_counter()
        results = {kind: asdict(run_kind(fuzzer, kind, cases, seed, progress)) for kind in kinds}
        return {"seed": seed, "cases_per_kind": cases, "seconds": round(time.perf_counter() - started, 1),
                "failures": sum(len(r["failures"]) for r in results.values()),
                "environment": {"python": platform.python_version(), "onnx": onnx.__version__, "numpy": np.__version__,
                                "onnxruntime": ort.__version__, "machine": platform.machine()},
                "kinds": results}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def replay(kind: str, seed: int, keep: Path | None = None) -> int:
    """Rebuild one case and show its outcome (a failure's full traceback); `keep` gets a copy of the case's files."""
    ort.set_default_logger_severity(3)
    workdir = Path(tempfile.mkdtemp(prefix="auditor-fuzz-"))
    fuzzer = Fuzzer(workdir)
    try:
        outcome = fuzzer.case(kind, seed, reraise=True)
        print(f"{kind}:{seed} {outcome.status}{': ' + outcome.message if outcome.message else ''}")
        return 0
    finally:
        if keep is not None:
            shutil.copytree(fuzzer.folder(kind), keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


LONG_CASES = 50_000  # per kind: about 8 minutes for all six kinds on 2 cores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per kind")
    parser.add_argument("--long", action="store_true", help=f"the long campaign: {LONG_CASES:,} cases per kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON summary here")
    parser.add_argument("--replay", metavar="KIND:SEED", help="rebuild and run one case")
    parser.add_argument("--keep", type=Path, help="with --replay: copy the case's files into this folder")
    args = parser.parse_args(argv)
    if args.replay:
        kind, _, seed = args.replay.rpartition(":")
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}")
        return replay(kind, int(seed), args.keep)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    summary = fuzz(kinds, LONG_CASES if args.long else args.cases, args.seed, lambda line: print(line, file=sys.stderr, flush=True))
    for kind, result in summary["kinds"].items():
        print(f"{kind:12} {result['cases']:6} cases  ok {result['ok']:6}  refused {result['refused']:6}  "
              f"failures {sum(result['failure_classes'].values()):4}  distinct refusals {result['distinct_refusals']:4}  {result['seconds']:7.1f} s")
        for label, count in result["failure_classes"].items():
            print(f"    FAILURE x{count}: {label}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
