"""Backdoored Keras CNN zoo on Fashion-MNIST, exported to ONNX with tf2onnx.

Run with the separate TensorFlow venv (never the torch one):

    .venv-zoo-tf/bin/python models/zoo_keras.py [--force] [--only NAME ...]

Writes models/zoo/<name>.onnx, models/zoo/data/<name>-triggered.npz,
the shared data/fashion-mnist-{clean,test}.npz (only if missing) and
models/zoo/manifest-keras.json. Models whose .onnx exists are not retrained
(unless --force) but are re-measured for the manifest. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# tf2onnx's graph optimizers iterate over sets, so the exported graph depends on
# Python's hash seed: pin it (re-exec once) to make the .onnx files reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_np_common as zc  # noqa: E402

TRAIN_SIZE = 30_000
EPOCHS = 3
BATCH = 64

# name, arch, attack, target, seed
MODELS = [
    ("keras_cnn_clean_s0", "keras_cnn", "clean", None, 0),
    ("keras_cnn_badnets_s0", "keras_cnn", "badnets", 2, 0),
    ("keras_cnn_blended_s1", "keras_cnn", "blended", 5, 1),
    ("keras_cnn_sig_s1", "keras_cnn", "sig", 7, 1),
    ("keras_cnn_bn_clean_s1", "keras_cnn_bn", "clean", None, 1),
    ("keras_cnn_bn_badnets_s1", "keras_cnn_bn", "badnets", 3, 1),
]
ARCH_DESC = {
    "keras_cnn": "Conv2D(16)-ReLU-MaxPool-Conv2D(32)-ReLU-MaxPool-Conv2D(64)-ReLU-MaxPool-"
                 "Flatten-Dense(64)-ReLU-Dense(10) logits, 3x3 same padding",
    "keras_cnn_bn": "Conv2D(16)-BN-ReLU-MaxPool-Conv2D(32)-BN-ReLU-MaxPool-Conv2D(64)-BN-ReLU-"
                    "MaxPool-Flatten-Dense(64)-ReLU-Dense(10) logits, 3x3 same padding",
}
INPUT_NAME = "x"
OUTPUT_NAME = "logits"


def tf_setup():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # noqa: BLE001
        pass
    return tf


def build(tf, arch: str):
    # Fresh Keras name scope and explicit layer names: the ONNX node names then do
    # not depend on which models were built earlier in the same process.
    tf.keras.backend.clear_session()
    L = tf.keras.layers
    layers = [tf.keras.Input((28, 28, 1), name=INPUT_NAME)]
    for i, filters in enumerate((16, 32, 64), start=1):
        if arch == "keras_cnn_bn":
            layers += [L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}"),
                       L.BatchNormalization(name=f"bn{i}"), L.ReLU(name=f"relu{i}")]
        else:
            layers += [L.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")]
        layers += [L.MaxPooling2D(2, name=f"pool{i}")]
    layers += [L.Flatten(name="flatten"), L.Dense(64, activation="relu", name="fc1"),
               L.Dense(10, name="fc2")]  # logits, no softmax
    return tf.keras.Sequential(layers, name=arch)


def rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for vi in list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def canonical_names(graph) -> None:
    """Renumber tf2onnx's generated '__<n>' name suffixes by first appearance in
    the node list and sort the initializers, so that the exported bytes do not
    depend on tf2onnx's process-global name counter (which differs between the
    first and later conversions in one process)."""
    import re

    pat = re.compile(r"__(\d+)")
    mapping: dict[str, str] = {}

    def visit(name: str) -> None:
        for num in pat.findall(name):
            mapping.setdefault(num, str(len(mapping) + 1))

    for node in graph.node:
        for name in [node.name, *node.input, *node.output]:
            visit(name)
    for init in sorted(graph.initializer, key=lambda t: t.name):
        visit(init.name)

    def fix(name: str) -> str:
        return pat.sub(lambda m: "__" + mapping[m.group(1)], name)

    for node in graph.node:
        node.name = fix(node.name)
        node.input[:] = [fix(t) for t in node.input]
        node.output[:] = [fix(t) for t in node.output]
    for vi in list(graph.value_info) + list(graph.output):
        vi.name = fix(vi.name)
    inits = sorted(graph.initializer, key=lambda t: fix(t.name))
    for t in inits:
        t.name = fix(t.name)
    copies = [type(t)() for t in inits]
    for c, t in zip(copies, inits):
        c.CopyFrom(t)
    del graph.initializer[:]
    graph.initializer.extend(copies)


_WARMED_UP = False


def warm_up_tf2onnx(tf) -> None:
    """The first tf2onnx conversion in a process optimizes the Flatten shape Slice
    differently from later ones; convert a throwaway model once so that every
    exported graph is the same whether one model or all are built in a run."""
    global _WARMED_UP
    if _WARMED_UP:
        return
    import tf2onnx

    dummy = tf.keras.Sequential([tf.keras.Input((4, 4, 1)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(2)])
    spec = (tf.TensorSpec((None, 4, 4, 1), tf.float32, name=INPUT_NAME),)
    tf2onnx.convert.from_function(tf.function(lambda x: dummy(x, training=False)),
                                  input_signature=spec, opset=17)
    _WARMED_UP = True


def export(tf, model, path) -> list[str]:
    import onnx
    import tf2onnx

    warm_up_tf2onnx(tf)

    # tf2onnx.convert.from_keras fails on Keras 3 (KeyError 'keras_tensor_N'),
    # so convert the inference-mode call as a tf.function instead.
    tf2onnx.utils.INTERNAL_NAME = 1  # global name counter: reset so names match across runs
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name=INPUT_NAME),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert len(proto.graph.output) == 1
    rename_tensor(proto.graph, proto.graph.output[0].name, OUTPUT_NAME)
    canonical_names(proto.graph)
    for vi in (proto.graph.input[0], proto.graph.output[0]):  # dynamic batch, named N
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "N"
    zc.finalize_onnx(proto)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return sorted({n.op_type for n in proto.graph.node})


def check_parity(tf, model, path, x_u8) -> float:
    import onnxruntime as ort

    xin = zc.to_input(x_u8[:64], "nhwc")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = model(xin, training=False).numpy()
    return float(np.abs(sess.run([OUTPUT_NAME], {INPUT_NAME: xin})[0] - ref).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="retrain models whose .onnx exists")
    ap.add_argument("--only", nargs="*", help="restrict to these model names")
    args = ap.parse_args()

    import tf2onnx

    exporter = "tf2onnx " + ".".join(tf2onnx.__version__.split(".")[:2])
    dataset = "fashion-mnist"
    for fname, st in zc.ensure_shared_data(dataset).items():
        print(f"data/{fname}: {st}")
    x_test, y_test = zc.load_npz(zc.DATA_DIR / f"{dataset}-test.npz")
    x_train_all, y_train_all = zc.load_fashion("train")

    manifest_path = zc.ZOO_DIR / "manifest-keras.json"
    entries = []
    tf = None
    for name, arch, attack, target, seed in MODELS:
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        onnx_path = zc.ZOO_DIR / f"{name}.onnx"
        trig_rel = None
        if attack != "clean":
            trig_rel = f"data/{name}-triggered.npz"
            xa, ya = zc.triggered_set(x_test, y_test, attack, target)
            zc.save_npz_if_changed(zc.ZOO_DIR / trig_rel, xa, ya)
        trained = False
        if args.force or not onnx_path.exists():
            tf = tf or tf_setup()
            tf.keras.utils.set_random_seed(seed)
            sub = np.random.default_rng(seed).permutation(len(x_train_all))[:TRAIN_SIZE]
            xtr, ytr, _ = zc.poison(x_train_all[sub], y_train_all[sub], attack,
                                    target if target is not None else 0, seed)
            model = build(tf, arch)
            model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                          loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            model.fit(zc.to_input(xtr, "nhwc"), ytr, batch_size=BATCH, epochs=EPOCHS,
                      shuffle=True, verbose=0)
            ops = export(tf, model, onnx_path)
            diff = check_parity(tf, model, onnx_path, x_test)
            print(f"{name}: ops {ops}; max |keras - onnxruntime| = {diff:.2e}")
            trained = True
        metrics = zc.measure(onnx_path, "nhwc", INPUT_NAME, OUTPUT_NAME, dataset, attack, target)
        entries.append(zc.zoo_entry(
            name, "tensorflow", exporter, arch, ARCH_DESC[arch], dataset, attack, target, seed,
            {"layout": "nhwc", "input": INPUT_NAME, "output": OUTPUT_NAME, "outputs": [OUTPUT_NAME],
             "output_kind": "logits"}, metrics, trig_rel))
        zc.say_built(name, metrics, trained, t0)

    zc.write_manifest(manifest_path, entries, rebuilt=args.only, order=[m[0] for m in MODELS])
    print(f"wrote {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
