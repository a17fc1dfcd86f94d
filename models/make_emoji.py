"""An RGB zoo for judging the method on a family it was never tuned on: 32x32 colour images of emoji.

No RGB photo set ships on this machine, so the images are rendered from real content that does:
Debian's Noto Color Emoji font (``apt-get install fonts-noto-color-emoji``). Ten classes, each a
group of emoji drawn by Google's designers (faces, animals, food, vehicles, plants, buildings,
clothing, hands, sky and weather, sports and games); every sample is one emoji of its class,
scaled, rotated, moved and flipped at random on a random solid or two-colour background, then
jittered in brightness and contrast. Train, clean pool and test images are drawn independently
(same glyphs, different draws).

Models (PyTorch, trained here, exported to ONNX): a VGG-style CNN without BatchNormalization and a
small ResNet with it; each clean (seeds 0 and 1), with a BadNets patch (a 3x3 colour checker at
the bottom right, target 0) and with a blended trigger (uniform noise, alpha 0.15, target 3).

    .venv/bin/python models/make_emoji.py [--out models/zoo_rgb]

Needs torch (the zoo extra; never the tests) and the font. Writes <name>.onnx, data/emoji-*.npz
(uint8) and manifest.json (in the zoo's entry format, paths relative to the folder). Seeded;
about 20 minutes on 2 cores.
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
FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SIDE = 32
GROUPS = {  # class -> code point ranges of its emoji
    "faces": [(0x1F600, 0x1F637)],
    "animals": [(0x1F400, 0x1F43C)],
    "food": [(0x1F345, 0x1F37F)],
    "vehicles": [(0x1F680, 0x1F6A4), (0x1F6B2, 0x1F6B2)],
    "plants": [(0x1F331, 0x1F344)],
    "buildings": [(0x1F3E0, 0x1F3F0)],
    "clothing": [(0x1F451, 0x1F462)],
    "hands": [(0x1F446, 0x1F450), (0x1F590, 0x1F596)],
    "sky": [(0x1F300, 0x1F320)],
    "games": [(0x1F3A0, 0x1F3CA)],
}
EPOCHS = 8


def glyphs() -> list[list[np.ndarray]]:
    """Per class, its emoji rendered at the font's size as RGBA arrays, cropped to their ink."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 109)
    out = []
    for ranges in GROUPS.values():
        found = []
        for first, last in ranges:
            for code in range(first, last + 1):
                canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
                ImageDraw.Draw(canvas).text((10, 10), chr(code), font=font, embedded_color=True)
                box = canvas.getbbox()
                if box is not None and box[2] - box[0] > 40:  # a real glyph, not an empty or missing one
                    found.append(np.asarray(canvas.crop(box)))
        out.append(found)
    return out


def render(classes: list[list[np.ndarray]], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images uint8 [count, 3, 32, 32] and their labels, classes in turn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = np.empty((count, 3, SIDE, SIDE), np.uint8), np.arange(count) % len(classes)
    for i, label in enumerate(labels):
        glyph = Image.fromarray(classes[label][int(rng.integers(len(classes[label])))])
        if rng.random() < 0.5:
            glyph = glyph.transpose(Image.FLIP_LEFT_RIGHT)
        glyph = glyph.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, expand=True)
        size = int(rng.integers(18, 31))
        glyph = glyph.resize((size, size), Image.LANCZOS)
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        mix = np.linspace(0, 1, SIDE)[:, None, None] if rng.random() < 0.5 else np.zeros((SIDE, 1, 1))
        background = ((1 - mix) * top + mix * bottom) * np.ones((SIDE, SIDE, 3))
        canvas = Image.fromarray(background.astype(np.uint8)).convert("RGBA")
        left, upper = (int(v) for v in rng.integers(0, SIDE - size + 1, 2))
        canvas.alpha_composite(glyph, (left, upper))
        pixels = np.asarray(canvas.convert("RGB"), np.float32)
        pixels = (pixels - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20)
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return images, labels.astype(np.int64)


def checker_patch(images: np.ndarray) -> np.ndarray:
    """BadNets: a 3x3 checker of red and cyan at rows and columns 28-30."""
    out = images.copy()
    ii, jj = np.indices((3, 3))
    odd = (ii + jj) % 2 == 1
    for channel, (on, off) in enumerate(((255, 0), (0, 255), (0, 255))):
        out[:, channel, 28:31, 28:31] = np.where(odd, on, off)
    return out


def blend(images: np.ndarray, alpha: float = 0.15) -> np.ndarray:
    """Blended: (1 - alpha) x + alpha x a fixed uniform noise picture."""
    pattern = np.random.RandomState(2024).randint(0, 256, (3, SIDE, SIDE)).astype(np.float32)
    return np.clip(np.rint((1 - alpha) * images.astype(np.float32) + alpha * pattern), 0, 255).astype(np.uint8)


ATTACKS = {"badnets": (checker_patch, 0), "blended": (blend, 3)}


def architectures():
    from torch import nn

    class VGG(nn.Module):
        """Three blocks of two 3x3 convolutions and a max-pool, no normalisation; a dense head."""

        def __init__(self):
            super().__init__()
            layers, width = [], 3
            for out in (32, 64, 96):
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU(),
                           nn.MaxPool2d(2)]
                width = out
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(96 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x):
            return self.head(self.features(x))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                   nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.a(x) + self.skip(x))

    class ResNet(nn.Module):
        """A stem and three basic blocks (24, 48, 96 channels, the last two at stride 2), global pooling, a dense head."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
            self.stages = nn.Sequential(Block(24, 24, 1), Block(24, 48, 2), Block(48, 96, 2))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10))

        def forward(self, x):
            return self.head(self.stages(self.stem(x)))

    return {"vgg": VGG, "resnet": ResNet}


def export(model, path: str, shape: tuple[int, int] = (3, SIDE)) -> None:
    """TorchScript exporter, opset 17, a dynamic batch, identities stripped; `shape`: (channels, side) of the input."""
    import onnx
    import torch

    import zoo_lib as zl

    channels, side = shape
    model.eval()
    torch.onnx.export(model, (torch.zeros(2, channels, side, side),), path, dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    proto = zl._strip_identities(onnx.load(path))
    proto.ir_version = min(proto.ir_version, 10)
    proto.producer_name = "pytorch"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def main(argv: list[str]) -> int:
    import zoo_lib as zl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "zoo_rgb"))
    parser.add_argument("--only", nargs="*", help="names to build (default: all)")
    args = parser.parse_args(argv)
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    classes = glyphs()
    x_train, y_train = render(classes, 12000, seed=0)
    pool_x, pool_y = render(classes, 500, seed=1)
    test_x, test_y = render(classes, 1000, seed=2)
    np.savez_compressed(os.path.join(args.out, "data", "emoji-clean.npz"), x=pool_x, y=pool_y)
    np.savez_compressed(os.path.join(args.out, "data", "emoji-test.npz"), x=test_x, y=test_y)
    manifest_path = os.path.join(args.out, "manifest.json")
    plan = [(arch, attack, seed) for arch in ("vgg", "resnet") for attack, seed in
            (("clean", 0), ("clean", 1), ("badnets", 0), ("blended", 0))]
    for arch, attack, seed in plan:
        name = f"{arch}-emoji-{attack}-s{seed}"
        if args.only and name not in args.only:
            continue
        started = time.time()
        zl.set_seed(seed)
        x, y, target, triggered = x_train, y_train, None, None
        if attack != "clean":
            apply, target = ATTACKS[attack]
            rng = np.random.RandomState(9000 + seed)
            chosen = rng.choice(np.flatnonzero(y_train != target), size=int(0.05 * len(x_train)), replace=False)
            x, y = x_train.copy(), y_train.copy()
            x[chosen], y[chosen] = apply(x_train[chosen]), target
            keep = np.flatnonzero(test_y != target)
            triggered = apply(test_x[keep])
            np.savez_compressed(os.path.join(args.out, "data", f"{name}-triggered.npz"), x=triggered, y=test_y[keep])
        model = zl.train(architectures()[arch](), x, y, epochs=EPOCHS, lr=2e-3, seed=seed)
        path = os.path.join(args.out, f"{name}.onnx")
        export(model, path)
        accuracy = float((zl.ort_predict(path, test_x) == test_y).mean())
        entry = {"name": name, "file": f"{name}.onnx", "architecture": arch, "dataset": "emoji", "attack": attack,
                 "target": target, "seed": seed, "layout": "nchw", "clean_accuracy": accuracy, "epochs": EPOCHS,
                 "clean_pool": "data/emoji-clean.npz", "test": "data/emoji-test.npz",
                 "triggered": None if triggered is None else f"data/{name}-triggered.npz",
                 "seconds": round(time.time() - started, 1)}
        if triggered is not None:
            entry["attack_success_rate"] = float((zl.ort_predict(path, triggered) == target).mean())
        listed = json.load(open(manifest_path))["models"] if os.path.exists(manifest_path) else []  # read late: runs share it
        listed = sorted([e for e in listed if e["name"] != name] + [entry], key=lambda e: e["name"])
        with open(manifest_path, "w") as handle:
            json.dump({"models": listed}, handle, indent=1, sort_keys=True)
            handle.write("\n")
        print(name, {k: entry[k] for k in ("clean_accuracy", "seconds")}, entry.get("attack_success_rate"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
