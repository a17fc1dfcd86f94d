"""Build the bundled example: a BadNets-backdoored CNN (with BatchNormalization)
trained on Fashion-MNIST, exported to ONNX, plus the data files the auditor
needs.  Deterministic; local data only.

    .venv/bin/python models/make_example.py [--out models/example] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_lib as zl  # noqa: E402

SEED = 0


class ExampleCNN(torch.nn.Module):
    """A wider CNN than the zoo's, with BatchNormalization after every hidden layer
    (the fully connected one too), as production image classifiers usually have."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.BatchNorm1d(256), nn.ReLU())
        self.head = nn.Linear(256, n_classes)

    def penultimate(self, x):
        return self.fc(self.features(x))

    def forward(self, x):
        return self.head(self.penultimate(x))
TARGET = 0
POISON_RATE = 0.10


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "example"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--arch", choices=["wide", "zoo"], default="wide")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    zl.set_seed(SEED)
    t0 = time.time()

    xtr, ytr, xte, yte = zl.load_fashion_mnist()
    # test split: a fixed permutation; first 2000 -> labelled test set, next 50 -> clean samples
    perm = np.random.RandomState(12345).permutation(len(xte))
    test_idx, clean_idx = perm[:2000], perm[2000:2050]
    assert not set(test_idx) & set(clean_idx)
    x_test, y_test = xte[test_idx], yte[test_idx]
    x_clean, y_clean = xte[clean_idx], yte[clean_idx]

    trig = zl.badnets_trigger(size=4, kind="checker", margin=1, corner="bottom-right")
    xp, yp, pidx = zl.poison(xtr, ytr, trig, TARGET, POISON_RATE, seed=SEED)
    print(f"poisoned {len(pidx)} / {len(xp)} training samples -> class {TARGET}")

    model = ExampleCNN() if args.arch == "wide" else zl.CNNBN()
    zl.train(model, xp, yp, epochs=args.epochs, bs=128, lr=2e-3, seed=SEED)

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "model.onnx")
    ops = zl.export_onnx(model, onnx_path, keep_bn=True,
                         doc="BadNets-backdoored CNN (Fashion-MNIST), target class 0, 4x4 checkerboard "
                             "patch at rows/cols 23-26")
    print("ONNX op types:", sorted(set(ops)), f"({ops.count('BatchNormalization')} BatchNormalization)")

    x_trig, y_trig = zl.triggered_set(x_test, y_test, trig, TARGET)
    acc, asr = zl.ort_metrics(onnx_path, x_test, y_test, x_trig, TARGET)
    t_acc = float((zl.torch_predict(model, x_test) == y_test).mean())
    print(f"onnxruntime: clean accuracy {acc:.4f} (torch {t_acc:.4f}), attack success rate {asr:.4f}")

    np.savez_compressed(os.path.join(args.out, "clean.npz"), x=x_clean, y=y_clean.astype(np.int64))
    np.savez_compressed(os.path.join(args.out, "test.npz"), x=x_test, y=y_test.astype(np.int64))
    np.savez_compressed(os.path.join(args.out, "triggered.npz"), x=x_trig, y=y_trig.astype(np.int64))
    meta = {
        "attack": "badnets",
        "target": TARGET,
        "clean_accuracy": round(acc, 4),
        "attack_success_rate": round(asr, 4),
        "dataset": "fashion-mnist",
        "architecture": "cnn_bn",
        "framework": "pytorch",
        "exporter": "torch.onnx (dynamo=False, TrainingMode.PRESERVE: BatchNormalization kept)",
        "opset": 17,
        "input": "x",
        "output": "logits",
        "layout": "nchw",
        "poison_rate": POISON_RATE,
        "epochs": args.epochs,
        "seed": SEED,
        "trigger": trig.describe(),
        "n_test": int(len(x_test)),
        "n_triggered": int(len(x_trig)),
        "n_clean": int(len(x_clean)),
    }
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    dt = time.time() - t0
    print(f"wrote {args.out} in {dt:.0f}s")
    return meta


if __name__ == "__main__":
    main()
