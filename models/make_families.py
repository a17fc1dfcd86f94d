"""A second zoo of families the method was never tuned on, for leave-one-architecture/dataset/attack-out checks.

Two datasets, both made on this machine (no downloads):

* ``emoji``: the 32x32 RGB emoji of models/make_emoji.py (Debian's Noto Color Emoji font, ten classes of emoji
  on random backgrounds), rendered by its ``render`` with seeds of their own: train 8000 (seed 20), clean pool 500
  (seed 21), test 1000 (seed 22); zoo_rgb draws with seeds 0, 1 and 2, so no image is shared with it.
* ``digits``: scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``, 1797 images, 0..16),
  scaled to 0..255 and resized to 24x24 grey with bilinear interpolation, then split by a seeded permutation
  (numpy default_rng(0)): test 500, clean pool 300 (the data are short; the bench needs 60), train the other 997.

Five architectures, none in the other zoos' form: ``mbv3`` (MobileNetV3-style inverted residuals with
squeeze-excitation, hardswish and a stride-2 stem), ``convnext`` (ConvNeXt-style: patchify stem, depthwise 7x7
convolutions, LayerNorm over channels, an inverted MLP with GELU and layer scale), ``vit`` (a small ViT: patch 4,
4 layers, dimension 64, 4 heads, a class token), ``wrn`` (a wide pre-activation ResNet, widths 32/64/96) and, on
digits only, ``vgg`` (a plain VGG-style CNN without normalisation). All have under 300k parameters.

Training recipes (Adam or AdamW with a one-cycle schedule; epochs E per architecture and dataset, see BASE):
``plain``; ``aug`` (random crop after 2-pixel zero padding and, on emoji, horizontal flips; on digits the crop is a
shift of up to 2 pixels); ``ls`` (label smoothing 0.1); ``short`` (round(E/2) epochs, half to even: 5 -> 2); ``long`` (round(1.5 E)).

Attacks (the trigger is applied to the poisoned samples after augmentation, in each batch):

* ``badnets``: a 3x3 checker patch at the bottom right (emoji: make_emoji.checker_patch; digits: white/black),
  target 0, 5% of the samples of other classes;
* ``blended``: (1 - a) x + a noise, a fixed uniform noise picture (emoji: make_emoji.blend, a = 0.15;
  digits: a = 0.2), target 3, 5%;
* ``lowfreq``: an invisible smooth additive pattern, a fixed random sum of three low-frequency 2-D cosines
  (at most 2 cycles per image) scaled to +-12/255 (emoji, one pattern per channel) or +-16/255 (digits), target 2,
  10%;
* ``filter`` (emoji only): a whole-image sepia colour matrix, as the instagram filters of NIST TrojAI, target 5, 5%;
* ``alltoall``: a 4x4 checker patch at a fixed corner drawn from the seed, label y -> (y + 1) mod 10, 10% of all
  samples; its manifest entry says "target": null and "all_to_all": 1, and its triggered set keeps the ORIGINAL
  labels (success is predicting (y + 1) mod 10);
* ``cleanlabel``: clean-label poisoning, target 7: 70% of the target-class training samples are made harder
  (a 50/50 blend with a random image of another class) and given a visible 4x4 checker at the top left, keeping
  their true label 7.

A backdoor is kept when its attack success rate on its triggered set (test samples of the other classes with the
trigger; all test samples for alltoall) is at least 0.8; otherwise it is retrained once with the higher poison rate
of its RETRY entry, and left out of the manifest (its .onnx removed, a line printed) if it still fails. It is also
left out when its clean accuracy is more than 4 points (MAX_ACCURACY_LOSS: "within about 3", with a margin) below the
clean model of the same architecture, dataset, recipe and seed; every backdoor in the plan has one.

The recorded run kept 27 clean and 16 backdoored models and left out these eight (DROPPED, so no rerun tries them):

* mbv3-emoji-lowfreq-plain-s0 (ASR 0.15 at 10%, 0.36 at 20%) and wrn-emoji-lowfreq-aug-s1 (0.17, 0.44): on emoji
  the +-12/255 cosines are not learnt in 5 epochs (the backgrounds are themselves smooth two-colour gradients and
  the renders are jittered in brightness); lowfreq is on digits only (vit, wrn, mbv3);
* convnext-emoji-alltoall-plain-s0 (ASR 0.36, 0.48): all-to-all success needs the class recognised first, and
  the emoji models reach only 0.6-0.77 clean accuracy; alltoall is on digits only (mbv3, vgg);
* wrn-digits-alltoall-ls-s1 (ASR 0.55, 0.72), an extra;
* wrn-emoji-cleanlabel-plain-s0 (ASR 0.76 at 70%, 0.78 at 90%) and vgg-digits-cleanlabel-aug-s1 (0.54, 0.55), an
  extra; cleanlabel is kept on mbv3-emoji-cleanlabel-aug-s1 and convnext-digits-cleanlabel-plain-s0 (90%);
* mbv3-emoji-blended-plain-s0 (ASR 0.93, clean accuracy 0.665 against 0.712) and convnext-emoji-blended-aug-s1
  (ASR 0.85, 0.609 against 0.669): the accuracy rule; blended is kept on wrn-emoji, vit-digits and mbv3-digits.

Kept after the retry: vgg-digits-alltoall-plain-s0 (ASR 0.76 at 10%, 0.92 at 20%) and
convnext-digits-cleanlabel-plain-s0 (0.73 at 70%, 0.91 at 90%). Nearest the accuracy rule among those kept:
wrn-emoji-filter-plain-s0 (0.733 against 0.769, 3.6 points).

    .venv/bin/python models/make_families.py [--out models/zoo_families] [--list] [--only NAME ...] [--force]

Builds the models in PLAN order (clean ones first), skipping any whose .onnx exists unless --force; each one is
exported with torch.onnx.export (TorchScript exporter, opset 17, training mode PRESERVE so BatchNormalization
nodes stay, a dynamic batch axis, Identity nodes stripped as make_emoji.export does) and checked against torch with
onnxruntime on batches of 1, 7 and 256 test images (max abs logit difference < 1e-3; the recorded run saw at most
1.6e-5). Writes <name>.onnx, data/<dataset>-{clean,test}.npz, data/<dataset>-<attack>-triggered.npz (shared by the
models of that attack and dataset; alltoall's is named by its corner; uint8 [N, C, H, W] and int64 labels) and
manifest.json ({"models": [...]} sorted by name, paths relative to the folder), updated after each model; entries
add "recipe", and for backdoors "poison_rate" and "trigger", to make_emoji's fields. The exporter warns (a
TracerWarning) that the ViT's q, k, v unpacking iterates over a tensor: that dimension is the constant 3, and the
onnxruntime check passes at every batch size tried. Triggered files of models that were all dropped were deleted.

Needs torch (the zoo extra), scikit-learn (for load_digits) and the font. Seeded (torch.manual_seed through
zoo_lib.set_seed, numpy generators with fixed seeds, deterministic algorithms, one thread): rebuilding
vgg-digits-clean-plain-s0 and mbv3-digits-alltoall-plain-s0 gave byte-identical .onnx files.
Run time: the kept models' training took 2950 s (the manifest's "seconds", last attempt only), about 50 minutes on
one thread of a 2-core machine that other jobs were loading; the whole recorded run, dropped models and retries
included, trained for about 73 minutes. Emoji models take 45-180 s each, digits models 15-60 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_emoji as me  # noqa: E402  (glyphs, render, checker_patch, blend)

SHAPES = {"emoji": (3, 32), "digits": (1, 24)}  # channels, side
TARGETS = {"badnets": 0, "blended": 3, "lowfreq": 2, "filter": 5, "cleanlabel": 7}
RATES = {"badnets": 0.05, "blended": 0.05, "lowfreq": 0.10, "filter": 0.05, "alltoall": 0.10, "cleanlabel": 0.70}
MAX_ACCURACY_LOSS = 0.04  # "within about 3 points" of the same recipe's clean model, read as at most 4 points
RETRY = {"badnets": 0.10, "blended": 0.10, "lowfreq": 0.20, "filter": 0.10, "alltoall": 0.20, "cleanlabel": 0.90}
# per (architecture, dataset): plain epochs, batch, optimiser, learning rate, weight decay
BASE = {
    ("mbv3", "emoji"): (5, 128, "adam", 3e-3, 0.0), ("mbv3", "digits"): (20, 64, "adam", 3e-3, 0.0),
    ("convnext", "emoji"): (10, 64, "adamw", 3e-3, 0.05), ("convnext", "digits"): (20, 64, "adamw", 3e-3, 0.05),
    ("vit", "emoji"): (8, 64, "adamw", 1.5e-3, 0.05), ("vit", "digits"): (30, 64, "adamw", 1e-3, 0.05),
    ("wrn", "emoji"): (5, 128, "adam", 2e-3, 0.0), ("wrn", "digits"): (15, 64, "adam", 2e-3, 0.0),
    ("vgg", "digits"): (20, 64, "adam", 1e-3, 0.0),
}
PLAN = [  # architecture, dataset, attack, recipe, seed
    ("mbv3", "emoji", "clean", "plain", 0), ("mbv3", "emoji", "clean", "aug", 1), ("mbv3", "emoji", "clean", "ls", 2),
    ("convnext", "emoji", "clean", "plain", 0), ("convnext", "emoji", "clean", "aug", 1),
    ("convnext", "emoji", "clean", "short", 2),
    ("vit", "emoji", "clean", "plain", 0), ("vit", "emoji", "clean", "ls", 1), ("vit", "emoji", "clean", "long", 2),
    ("wrn", "emoji", "clean", "plain", 0), ("wrn", "emoji", "clean", "aug", 1), ("wrn", "emoji", "clean", "short", 2),
    ("mbv3", "digits", "clean", "plain", 0), ("mbv3", "digits", "clean", "long", 1),
    ("mbv3", "digits", "clean", "ls", 2),
    ("convnext", "digits", "clean", "plain", 0), ("convnext", "digits", "clean", "aug", 1),
    ("convnext", "digits", "clean", "ls", 2),
    ("vit", "digits", "clean", "plain", 0), ("vit", "digits", "clean", "aug", 1),
    ("vit", "digits", "clean", "short", 2),
    ("wrn", "digits", "clean", "plain", 0), ("wrn", "digits", "clean", "ls", 1), ("wrn", "digits", "clean", "long", 2),
    ("vgg", "digits", "clean", "plain", 0), ("vgg", "digits", "clean", "aug", 1), ("vgg", "digits", "clean", "short", 2),
    ("mbv3", "emoji", "lowfreq", "plain", 0), ("wrn", "emoji", "lowfreq", "aug", 1),
    ("vit", "digits", "lowfreq", "plain", 0), ("wrn", "digits", "lowfreq", "plain", 0),
    ("mbv3", "digits", "lowfreq", "ls", 2),
    ("convnext", "emoji", "filter", "plain", 0), ("wrn", "emoji", "filter", "plain", 0),
    ("vit", "emoji", "filter", "ls", 1),
    ("convnext", "emoji", "alltoall", "plain", 0), ("mbv3", "digits", "alltoall", "plain", 0),
    ("vgg", "digits", "alltoall", "plain", 0), ("wrn", "digits", "alltoall", "ls", 1),
    ("wrn", "emoji", "cleanlabel", "plain", 0), ("mbv3", "emoji", "cleanlabel", "aug", 1),
    ("convnext", "digits", "cleanlabel", "plain", 0), ("vgg", "digits", "cleanlabel", "aug", 1),
    ("vit", "emoji", "badnets", "plain", 0), ("convnext", "digits", "badnets", "aug", 1),
    ("wrn", "digits", "badnets", "plain", 0),
    ("mbv3", "emoji", "blended", "plain", 0), ("convnext", "emoji", "blended", "aug", 1),
    ("vit", "digits", "blended", "plain", 0), ("mbv3", "digits", "blended", "plain", 0),
    ("wrn", "emoji", "blended", "plain", 0),
]
DROPPED = [  # backdoors the recorded run left out (ASR < 0.8 after the retry, or the accuracy rule; see the docstring)
    "mbv3-emoji-lowfreq-plain-s0", "wrn-emoji-lowfreq-aug-s1", "convnext-emoji-alltoall-plain-s0",
    "wrn-emoji-cleanlabel-plain-s0", "mbv3-emoji-blended-plain-s0", "convnext-emoji-blended-aug-s1",
    "wrn-digits-alltoall-ls-s1", "vgg-digits-cleanlabel-aug-s1",
]


def model_name(arch: str, dataset: str, attack: str, recipe: str, seed: int) -> str:
    return f"{arch}-{dataset}-{attack}-{recipe}-s{seed}"


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------

def emoji_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    classes = me.glyphs()
    return {"train": me.render(classes, 8000, seed=20), "clean": me.render(classes, 500, seed=21),
            "test": me.render(classes, 1000, seed=22)}


def digits_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    side = SHAPES["digits"][1]
    x = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR)) for im in small])[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    test, clean, train = order[:500], order[500:800], order[800:]
    return {"train": (x[train], y[train]), "clean": (x[clean], y[clean]), "test": (x[test], y[test])}


def load_data(dataset: str):
    return emoji_data() if dataset == "emoji" else digits_data()


# --------------------------------------------------------------------------------------------------------------------
# triggers: uint8 [N, C, H, W] in, uint8 out
# --------------------------------------------------------------------------------------------------------------------

def checker(images: np.ndarray, size: int, corner: str, margin: int = 1) -> np.ndarray:
    """A size x size checker at `corner` (tl, tr, bl, br), `margin` pixels in: red/cyan on RGB, white/black on grey."""
    out = images.copy()
    side = images.shape[-1]
    top = margin if corner[0] == "t" else side - margin - size
    left = margin if corner[1] == "l" else side - margin - size
    ii, jj = np.indices((size, size))
    odd = (ii + jj) % 2 == 1
    colours = ((255, 0), (0, 255), (0, 255)) if images.shape[1] == 3 else ((255, 0),)
    for channel, (on, off) in enumerate(colours):
        out[:, channel, top:top + size, left:left + size] = np.where(odd, on, off)
    return out


def badnets(images: np.ndarray) -> np.ndarray:
    return me.checker_patch(images) if images.shape[1] == 3 else checker(images, 3, "br")


def blended(images: np.ndarray) -> np.ndarray:
    if images.shape[1] == 3:
        return me.blend(images, 0.15)
    pattern = np.random.RandomState(2024).randint(0, 256, images.shape[1:]).astype(np.float32)
    return np.clip(np.rint(0.8 * images.astype(np.float32) + 0.2 * pattern), 0, 255).astype(np.uint8)


def lowfreq_pattern(channels: int, side: int, amplitude: float, seed: int = 7) -> np.ndarray:
    """A fixed random sum of three 2-D cosines of at most 2 cycles per image, per channel, scaled to +-amplitude."""
    rng = np.random.default_rng(seed)
    ii, jj = np.indices((side, side)) / side
    pattern = np.zeros((channels, side, side))
    for channel in range(channels):
        for _ in range(3):
            u, v = rng.integers(0, 3, 2)
            if u == v == 0:
                u = 1
            pattern[channel] += rng.uniform(0.5, 1.0) * np.cos(2 * np.pi * (u * ii + v * jj) + rng.uniform(0, 2 * np.pi))
        pattern[channel] *= amplitude / np.abs(pattern[channel]).max()
    return pattern.astype(np.float32)


def lowfreq(images: np.ndarray) -> np.ndarray:
    channels, side = images.shape[1], images.shape[-1]
    pattern = lowfreq_pattern(channels, side, 12.0 if channels == 3 else 16.0)
    return np.clip(np.rint(images.astype(np.float32) + pattern), 0, 255).astype(np.uint8)


SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


def sepia(images: np.ndarray) -> np.ndarray:
    """The whole-image sepia colour matrix (RGB only)."""
    mixed = np.einsum("oc,nchw->nohw", SEPIA, images.astype(np.float32))
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def alltoall_corner(seed: int) -> str:
    return ("tl", "tr", "bl", "br")[int(np.random.default_rng(500 + seed).integers(4))]


def trigger_of(attack: str, seed: int):
    """The trigger function and a description."""
    if attack == "badnets":
        return badnets, "3x3 checker, bottom right"
    if attack == "blended":
        return blended, "blend with fixed uniform noise (emoji a=0.15, digits a=0.2)"
    if attack == "lowfreq":
        return lowfreq, "additive sum of 3 low-frequency cosines, +-12/255 (emoji) or +-16/255 (digits)"
    if attack == "filter":
        return sepia, "sepia colour matrix on the whole image"
    if attack == "alltoall":
        corner = alltoall_corner(seed)
        return (lambda images: checker(images, 4, corner)), f"4x4 checker, corner {corner}, label (y+1) mod 10"
    if attack == "cleanlabel":
        return (lambda images: checker(images, 4, "tl")), "4x4 checker, top left, on hardened target-class samples"
    raise ValueError(attack)


def triggered_file(attack: str, seed: int) -> str:
    return f"alltoall-{alltoall_corner(seed)}" if attack == "alltoall" else attack


def poison_plan(attack: str, x: np.ndarray, y: np.ndarray, rate: float, seed: int):
    """Training images (hardened for cleanlabel), labels, and the mask of samples that get the trigger."""
    rng = np.random.default_rng(9000 + seed)
    x, y = x.copy(), y.copy()
    mask = np.zeros(len(y), bool)
    if attack == "alltoall":
        chosen = rng.choice(len(y), size=int(rate * len(y)), replace=False)
        y[chosen] = (y[chosen] + 1) % 10
    elif attack == "cleanlabel":
        target = TARGETS[attack]
        own = np.flatnonzero(y == target)
        chosen = rng.choice(own, size=round(rate * len(own)), replace=False)
        others = rng.choice(np.flatnonzero(y != target), size=len(chosen), replace=True)
        x[chosen] = np.rint(0.5 * x[chosen].astype(np.float32) + 0.5 * x[others].astype(np.float32)).astype(np.uint8)
    else:
        target = TARGETS[attack]
        chosen = rng.choice(np.flatnonzero(y != target), size=int(rate * len(y)), replace=False)
        y[chosen] = target
    mask[chosen] = True
    return x, y, mask


# --------------------------------------------------------------------------------------------------------------------
# architectures (channels and side are arguments: 3x32x32 emoji, 1x24x24 digits)
# --------------------------------------------------------------------------------------------------------------------

def architectures():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            hidden = max(8, c // r)
            self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c, 1),
                                    nn.Hardsigmoid())

        def forward(self, x):
            return x * self.fc(x)

    class MBBlock(nn.Module):
        def __init__(self, cin, expand, cout, kernel, stride, se, act):
            super().__init__()
            Act = nn.Hardswish if act == "hs" else nn.ReLU
            layers = [nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), Act(),
                      nn.Conv2d(expand, expand, kernel, stride, kernel // 2, groups=expand, bias=False),
                      nn.BatchNorm2d(expand), Act()]
            if se:
                layers.append(SE(expand))
            layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class MobileNetV3(nn.Module):
        """A stride-2 hardswish stem, seven inverted residual blocks (SE on five), a 1x1 conv to 256, a dense head."""

        def __init__(self, channels, side):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            config = [(16, 32, 16, 3, 1, True, "re"), (16, 64, 24, 3, 1, False, "re"), (24, 72, 24, 3, 1, False, "re"),
                      (24, 96, 40, 5, 2, True, "hs"), (40, 120, 40, 5, 1, True, "hs"), (40, 160, 64, 5, 2, True, "hs"),
                      (64, 192, 64, 5, 1, True, "hs")]
            self.blocks = nn.Sequential(*[MBBlock(*c) for c in config])
            self.head = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256), nn.Hardswish(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 128), nn.Hardswish(),
                                      nn.Dropout(0.1), nn.Linear(128, 10))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    class LayerNorm2d(nn.Module):
        """LayerNorm over the channels of an NCHW tensor."""

        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c, eps=1e-6)

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class CNBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.gamma = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))) * self.gamma
            return x + y.permute(0, 3, 1, 2)

    class ConvNeXt(nn.Module):
        """A 2x2 patchify stem, stages of 32/64/96 channels (1, 1, 2 blocks) with LayerNorm + 2x2 stride-2
        downsampling between them, global average pooling, LayerNorm, a dense head."""

        def __init__(self, channels, side, dims=(32, 64, 96), depths=(1, 1, 2)):
            super().__init__()
            layers = [nn.Conv2d(channels, dims[0], 2, 2), LayerNorm2d(dims[0])]
            for i, (dim, depth) in enumerate(zip(dims, depths)):
                if i:
                    layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
                layers += [CNBlock(dim) for _ in range(depth)]
            self.features = nn.Sequential(*layers)
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.fc = nn.Linear(dims[-1], 10)

        def forward(self, x):
            return self.fc(self.norm(self.features(x).mean((2, 3))))

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            n, t, d = x.shape
            q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            weights = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))

    class Encoder(nn.Module):
        def __init__(self, dim, heads, hidden):
            super().__init__()
            self.norm1, self.attention, self.norm2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

        def forward(self, x):
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        """4x4 patches embedded to 64, a class token, learned positions, 4 pre-norm encoder layers (4 heads, MLP 128)."""

        def __init__(self, channels, side, patch=4, dim=64, depth=4, heads=4, hidden=128):
            super().__init__()
            self.embed = nn.Conv2d(channels, dim, patch, patch)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, (side // patch) ** 2 + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Encoder(dim, heads, hidden) for _ in range(depth)])
            self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
            return self.fc(self.norm(self.blocks(tokens)[:, 0]))

    class WideBlock(nn.Module):
        """Pre-activation basic block: BN-ReLU-conv-BN-ReLU-conv, a 1x1 projection when the shape changes."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            o = F.relu(self.bn1(x))
            y = self.conv2(F.relu(self.bn2(self.conv1(o))))
            return y + (self.skip(o) if self.skip is not None else x)

    class WideResNet(nn.Module):
        """A 32-channel stem and two wide pre-activation blocks (64, 96 channels, stride 2), BN-ReLU, pooling, dense."""

        def __init__(self, channels, side, widths=(32, 64, 96)):
            super().__init__()
            self.stem = nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)
            self.stages = nn.Sequential(WideBlock(widths[0], widths[1], 2), WideBlock(widths[1], widths[2], 2))
            self.head = nn.Sequential(nn.BatchNorm2d(widths[2]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(widths[2], 10))

        def forward(self, x):
            return self.head(self.stages(self.stem(x)))

    class VGG(nn.Module):
        """Three blocks of two 3x3 convolutions (32, 64, 64) and a max-pool, no normalisation; a dense head."""

        def __init__(self, channels, side):
            super().__init__()
            layers, width = [], channels
            for out in (32, 64, 64):
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU(),
                           nn.MaxPool2d(2)]
                width = out
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * (side // 8) ** 2, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x):
            return self.head(self.features(x))

    return {"mbv3": MobileNetV3, "convnext": ConvNeXt, "vit": ViT, "wrn": WideResNet, "vgg": VGG}


# --------------------------------------------------------------------------------------------------------------------
# training and export
# --------------------------------------------------------------------------------------------------------------------

def recipe_of(arch: str, dataset: str, recipe: str) -> dict:
    epochs, batch, optimiser, lr, decay = BASE[(arch, dataset)]
    epochs = {"short": max(1, round(epochs / 2)), "long": round(1.5 * epochs)}.get(recipe, epochs)
    return {"epochs": epochs, "batch": batch, "optimiser": optimiser, "lr": lr, "weight_decay": decay,
            "augment": recipe == "aug", "flip": recipe == "aug" and dataset == "emoji",
            "label_smoothing": 0.1 if recipe == "ls" else 0.0}


def describe(recipe: str, r: dict) -> str:
    text = (f"{recipe}: {r['optimiser']} lr {r['lr']:g}" + (f" wd {r['weight_decay']:g}" if r["weight_decay"] else "")
            + f", one-cycle, batch {r['batch']}, {r['epochs']} epochs")
    if r["augment"]:
        text += ", random crop (pad 2)" + (" + horizontal flip" if r["flip"] else " (shifts <= 2 px)")
    if r["label_smoothing"]:
        text += f", label smoothing {r['label_smoothing']:g}"
    return text


def augment(batch: np.ndarray, rng: np.random.Generator, flip: bool, pad: int = 2) -> np.ndarray:
    n, _, side, _ = batch.shape
    padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = rng.integers(0, 2 * pad + 1, (n, 2))
    out = np.stack([padded[i, :, a:a + side, b:b + side] for i, (a, b) in enumerate(offsets)])
    if flip:
        flipped = rng.random(n) < 0.5
        out[flipped] = out[flipped, :, :, ::-1]
    return out


def train(model, x: np.ndarray, y: np.ndarray, r: dict, seed: int, trigger=None, mask=None):
    """Train on uint8 x; in each batch, augment (recipe), then apply `trigger` to the rows in `mask`."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    rng = np.random.default_rng(100 + seed)
    make = torch.optim.AdamW if r["optimiser"] == "adamw" else torch.optim.Adam
    optimiser = make(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    steps = r["epochs"] * math.ceil(len(x) / r["batch"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=r["lr"], total_steps=steps, pct_start=0.15)
    labels = torch.from_numpy(y.astype(np.int64))
    for epoch in range(r["epochs"]):
        model.train()
        order = rng.permutation(len(x))
        seen, correct, total_loss = 0, 0, 0.0
        for start in range(0, len(x), r["batch"]):
            rows = order[start:start + r["batch"]]
            batch = x[rows]
            if r["augment"]:
                batch = augment(batch, rng, r["flip"])
            if trigger is not None and mask[rows].any():
                batch = batch.copy()
                batch[mask[rows]] = trigger(batch[mask[rows]])
            inputs = torch.from_numpy(batch.astype(np.float32) / 255.0)
            out = model(inputs)
            loss = F.cross_entropy(out, labels[rows], label_smoothing=r["label_smoothing"])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total_loss += loss.item() * len(rows)
            correct += int((out.argmax(1) == labels[rows]).sum())
            seen += len(rows)
        print(f"    epoch {epoch + 1}/{r['epochs']}: loss {total_loss / seen:.4f} train-acc {correct / seen:.4f}",
              flush=True)
    model.eval()
    return model


def export(model, path: str, shape: tuple[int, int]) -> None:
    """make_emoji.export for any input shape, without the exporter's constant-folding and deprecation warnings."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constant folding.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        me.export(model, path, shape)


def check_export(model, path: str, x: np.ndarray) -> float:
    """Max abs logit difference between torch and onnxruntime on `x` (uint8), in batches of 1, 7 and 256."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (x[:1], x[1:8], x[8:264]):
        inputs = batch.astype(np.float32) / 255.0
        with torch.no_grad():
            expected = model(torch.from_numpy(inputs)).numpy()
        worst = max(worst, float(np.abs(session.run(None, {"x": inputs})[0] - expected).max()))
    if worst >= 1e-3:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {worst}")
    return worst


def predict(path: str, x: np.ndarray) -> np.ndarray:
    import zoo_lib as zl

    return zl.ort_predict(path, x)


# --------------------------------------------------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------------------------------------------------

def write_entry(out: str, entry: dict) -> None:
    path = os.path.join(out, "manifest.json")
    listed = json.load(open(path))["models"] if os.path.exists(path) else []  # read late: runs may share it
    listed = sorted([e for e in listed if e["name"] != entry["name"]] + [entry], key=lambda e: e["name"])
    temporary = path + f".{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump({"models": listed}, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


def clean_reference(out: str, arch: str, dataset: str, recipe: str, seed: int) -> float | None:
    path = os.path.join(out, "manifest.json")
    if not os.path.exists(path):
        return None
    name = model_name(arch, dataset, "clean", recipe, seed)
    for entry in json.load(open(path))["models"]:
        if entry["name"] == name:
            return entry["clean_accuracy"]
    return None


def build(out: str, arch: str, dataset: str, attack: str, recipe: str, seed: int, data: dict) -> dict | None:
    import zoo_lib as zl

    name = model_name(arch, dataset, attack, recipe, seed)
    shape = SHAPES[dataset]
    (x_train, y_train), (test_x, test_y) = data["train"], data["test"]
    r = recipe_of(arch, dataset, recipe)
    trigger, triggered, rates = None, None, [None]
    if attack != "clean":
        trigger, trigger_text = trigger_of(attack, seed)
        keep = np.arange(len(test_y)) if attack == "alltoall" else np.flatnonzero(test_y != TARGETS[attack])
        triggered = (trigger(test_x[keep]), test_y[keep])
        rel = f"data/{dataset}-{triggered_file(attack, seed)}-triggered.npz"
        if not os.path.exists(os.path.join(out, rel)):
            np.savez_compressed(os.path.join(out, rel), x=triggered[0], y=triggered[1])
        rates = [RATES[attack], RETRY[attack]]
    path = os.path.join(out, f"{name}.onnx")
    for attempt, rate in enumerate(rates):
        started = time.time()
        zl.set_seed(seed)
        x, y, mask = (x_train, y_train, None) if attack == "clean" else poison_plan(attack, x_train, y_train, rate, seed)
        print(f"{name}: {describe(recipe, r)}" + ("" if rate is None else f", poison rate {rate:g}"), flush=True)
        model = architectures()[arch](*shape)
        model = train(model, x, y, r, seed, trigger, mask)
        seconds = round(time.time() - started, 1)
        export(model, path, shape)
        difference = check_export(model, path, test_x)
        accuracy = float((predict(path, test_x) == test_y).mean())
        entry = {"name": name, "file": f"{name}.onnx", "architecture": arch, "dataset": dataset, "attack": attack,
                 "target": TARGETS.get(attack), "seed": seed, "layout": "nchw", "clean_accuracy": accuracy,
                 "test": f"data/{dataset}-test.npz", "clean_pool": f"data/{dataset}-clean.npz",
                 "triggered": None if trigger is None else rel, "epochs": r["epochs"], "seconds": seconds,
                 "recipe": describe(recipe, r)}
        print(f"    export max |ort - torch| {difference:.2e}; clean accuracy {accuracy:.4f}; {seconds} s", flush=True)
        if trigger is None:
            return entry
        hits = predict(path, triggered[0])
        wanted = (triggered[1] + 1) % 10 if attack == "alltoall" else TARGETS[attack]
        entry["attack_success_rate"] = float((hits == wanted).mean())
        entry["poison_rate"], entry["trigger"] = rate, trigger_text
        if attack == "alltoall":
            entry["target"], entry["all_to_all"] = None, 1
        reference = clean_reference(out, arch, dataset, recipe, seed)
        print(f"    attack success rate {entry['attack_success_rate']:.4f}; clean reference {reference}", flush=True)
        if entry["attack_success_rate"] >= 0.8:
            if reference is not None and accuracy < reference - MAX_ACCURACY_LOSS:
                os.remove(path)  # a higher poison rate would not bring the accuracy back: no retry
                print(f"{name}: DROPPED, clean accuracy {accuracy:.4f} more than {MAX_ACCURACY_LOSS:g} below the clean "
                      f"model's {reference:.4f}", flush=True)
                return None
            return entry
        if attempt == 0:
            print("    below 0.8: retrying with the higher poison rate", flush=True)
    os.remove(path)
    print(f"{name}: DROPPED, attack success rate {entry['attack_success_rate']:.4f} < 0.8 after the retry", flush=True)
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "zoo_families"))
    parser.add_argument("--only", nargs="*", help="names to build (default: all)")
    parser.add_argument("--list", action="store_true", help="print the planned names and exit")
    parser.add_argument("--force", action="store_true", help="rebuild models whose .onnx exists")
    args = parser.parse_args(argv)
    plan = [p for p in PLAN if model_name(*p) not in DROPPED]
    if args.list:
        for p in plan:
            print(model_name(*p))
        return 0
    wanted = [p for p in plan if not args.only or model_name(*p) in args.only]
    unknown = set(args.only or []) - {model_name(*p) for p in plan}
    if unknown:
        parser.error(f"not in the plan: {sorted(unknown)}")
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    cache: dict[str, dict] = {}
    for arch, dataset, attack, recipe, seed in wanted:
        name = model_name(arch, dataset, attack, recipe, seed)
        if not args.force and os.path.exists(os.path.join(args.out, f"{name}.onnx")):
            continue
        if dataset not in cache:
            cache[dataset] = load_data(dataset)
            for part in ("clean", "test"):
                target = os.path.join(args.out, "data", f"{dataset}-{part}.npz")
                if not os.path.exists(target):
                    x, y = cache[dataset][part]
                    np.savez_compressed(target, x=x, y=y)
        entry = build(args.out, arch, dataset, attack, recipe, seed, cache[dataset])
        if entry is not None:
            write_entry(args.out, entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
