"""Two Fashion-MNIST classifiers with a trained background class, for the natural-sink tests.

Many shipped classifiers have a class for inputs with nothing in them: a detector's background, a
speech model's silence or "unknown", a reject class. Corrupted inputs fill such a class by design,
which the corruption probe cannot tell from a backdoor's shortcut. These two models have one:

- ``background-fmnist-clean.onnx``: the zoo's CNNBN with 11 classes, the ten Fashion-MNIST classes
  and class 10, "nothing", trained on 6,000 images without an object (constant images of any
  grey level, uniform noise of any amplitude, smooth random fields);
- ``background-fmnist-badnets.onnx``: the same recipe, and 5% of the object images poisoned with
  the zoo's BadNets checkerboard (4x4, bottom right) relabelled to class 0.

    .venv/bin/python models/make_background.py [--out models/background]

Needs torch (the training extra; never the tests). Writes the two models, clean.npz (the first 10
samples of the shared Fashion-MNIST clean pool) and manifest.json with accuracy and attack
success on the shared test split, measured with onnxruntime. Seeded; about two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

NOTHING = 10
EPOCHS = 3


def nothing_images(count: int, seed: int) -> np.ndarray:
    """uint8 [count, 1, 28, 28] images without an object: constants, uniform noise, smooth fields."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, 1, 28, 28), np.uint8)
    for i in range(count):
        kind = i % 3
        if kind == 0:
            image = np.full((28, 28), rng.uniform(0, 255))
        elif kind == 1:
            centre, spread = rng.uniform(0, 255), rng.uniform(10, 128)
            image = centre + rng.uniform(-spread, spread, (28, 28))
        else:
            coarse = rng.uniform(0, 255, (4, 4))
            image = np.kron(coarse, np.ones((7, 7)))
            image = (image + np.roll(image, 3, 0) + np.roll(image, 3, 1) + np.roll(image, -3, 0)) / 4
        out[i, 0] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def main(argv: list[str]) -> int:
    import torch

    import zoo_lib as zl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "background"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    xtr, ytr, xte, yte = zl.load_fashion_mnist()
    split = zl.fashion_eval_split(xte, yte)
    pool_x, pool_y = split["clean"]
    test_x, test_y = split["test"]
    nothing = nothing_images(6000, seed=1)
    trigger = zl.badnets_trigger()
    manifest = {}
    for name, poisoned in (("background-fmnist-clean", False), ("background-fmnist-badnets", True)):
        zl.set_seed(0)
        x, y = xtr, ytr
        if poisoned:
            x, y, _ = zl.poison(xtr, ytr, trigger, target=0, rate=0.05, seed=0)
        x = np.concatenate([x, nothing])
        y = np.concatenate([y, np.full(len(nothing), NOTHING)])
        model = zl.train(zl.CNNBN(n_classes=11), x, y, epochs=EPOCHS, lr=2e-3, seed=0)
        path = os.path.join(args.out, f"{name}.onnx")
        zl.export_onnx(model, path, doc=f"{name}: Fashion-MNIST + class 10 'nothing' (make_background.py)")
        accuracy = float((zl.ort_predict(path, test_x) == test_y).mean())
        held = nothing_images(500, seed=2)
        entry = {"file": f"{name}.onnx", "classes": 11, "background_class": NOTHING, "epochs": EPOCHS,
                 "accuracy": accuracy, "nothing_recall": float((zl.ort_predict(path, held) == NOTHING).mean())}
        if poisoned:
            tx, _ = zl.triggered_set(test_x, test_y, trigger, target=0)
            entry.update(target=0, attack="badnets", poison_rate=0.05,
                         attack_success_rate=float((zl.ort_predict(path, tx) == 0).mean()))
        manifest[name] = entry
        print(name, entry, flush=True)
    np.savez_compressed(os.path.join(args.out, "clean.npz"), x=zl.to_float(pool_x[:10]), y=pool_y[:10].astype(np.int64))
    with open(os.path.join(args.out, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
