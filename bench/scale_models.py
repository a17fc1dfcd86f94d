"""Real-size architectures for bench/scale.py, written here in plain torch (torchvision would pull a CUDA torch):
ResNet-18/50, a MobileNetV3-style net with squeeze-excitation, ViT-B/16 at 224 px with 1000 classes, and a BERT-base
classifier over token ids or over embeddings. Seeded random weights; BatchNorm running statistics set by passes in
train mode over smooth random images, so the exported graph normalises as a trained one would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE, CLASSES, TOKENS, VOCAB = 224, 1000, 128, 30522


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.skip = (nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))
                     if stride != 1 or cin != width else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
        self.skip = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                     if stride != 1 or cin != out else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, block, depths: tuple[int, ...]) -> None:
        super().__init__()
        layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
        for stage, depth in enumerate(depths):
            width = 64 * 2 ** stage
            for i in range(depth):
                layers.append(block(cin, width, 2 if i == 0 and stage > 0 else 1))
                cin = width * block.expansion
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, CLASSES)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, max(8, channels // 4), 1), nn.Conv2d(max(8, channels // 4), channels, 1)

    def forward(self, x):
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(scale))))


class Inverted(nn.Module):
    def __init__(self, cin: int, expand: int, cout: int, kernel: int, stride: int, se: bool) -> None:
        super().__init__()
        layers = [nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), nn.Hardswish(),
                  nn.Conv2d(expand, expand, kernel, stride, kernel // 2, groups=expand, bias=False), nn.BatchNorm2d(expand), nn.Hardswish()]
        if se:
            layers.append(SqueezeExcite(expand))
        layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV3(nn.Module):
    """MobileNetV3-Large's block table (kernel, expansion, out, squeeze-excitation, stride)."""

    TABLE = ((3, 16, 16, False, 1), (3, 64, 24, False, 2), (3, 72, 24, False, 1), (5, 72, 40, True, 2), (5, 120, 40, True, 1),
             (5, 120, 40, True, 1), (3, 240, 80, False, 2), (3, 200, 80, False, 1), (3, 184, 80, False, 1), (3, 184, 80, False, 1),
             (3, 480, 112, True, 1), (3, 672, 112, True, 1), (5, 672, 160, True, 2), (5, 960, 160, True, 1), (5, 960, 160, True, 1))

    def __init__(self) -> None:
        super().__init__()
        layers, cin = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()], 16
        for kernel, expand, cout, se, stride in self.TABLE:
            layers.append(Inverted(cin, expand, cout, kernel, stride, se))
            cin = cout
        layers += [nn.Conv2d(cin, 960, 1, bias=False), nn.BatchNorm2d(960), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, CLASSES))

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class Encoder(nn.Module):
    """A pre-norm transformer encoder (ViT-B and BERT-base sizes: 12 layers, width 768, 12 heads, MLP 3072)."""

    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        for block in self.layers.layers:  # TransformerEncoder deep-copies one layer: give each its own weights
            for weight in block.parameters():
                if weight.dim() > 1:
                    nn.init.xavier_uniform_(weight)
                else:
                    nn.init.normal_(weight, 0.0, 0.02) if weight.shape[0] != width else None

    def forward(self, x):
        return self.norm(self.layers(x))


class ViT(nn.Module):
    def __init__(self, patch: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 768, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, 768))
        self.position = nn.Parameter(torch.randn(1, (SIZE // patch) ** 2 + 1, 768) * 0.02)
        self.encoder, self.head = Encoder(), nn.Linear(768, CLASSES)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.position
        return self.head(self.encoder(tokens)[:, 0])


class Bert(nn.Module):
    """BERT-base over token ids [N, 128] (int64), or over their embeddings [N, 128, 768] (float); 2 classes are too
    few for a behavioural verdict, so it classifies into 10 intents."""

    def __init__(self, ids: bool) -> None:
        super().__init__()
        self.ids = ids
        self.words = nn.Embedding(VOCAB, 768) if ids else None
        self.position = nn.Parameter(torch.randn(1, TOKENS, 768) * 0.02)
        self.encoder, self.head = Encoder(), nn.Sequential(nn.Linear(768, 768), nn.Tanh(), nn.Linear(768, 10))

    def forward(self, x):
        hidden = (self.words(x) if self.ids else x) + self.position
        return self.head(self.encoder(hidden)[:, 0])


BUILDERS = {
    "resnet18": lambda: ResNet(Basic, (2, 2, 2, 2)),
    "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
    "mobilenetv3": MobileNetV3,
    "vit_b16": ViT,
    "bert_tokens": lambda: Bert(ids=True),
    "bert_embeddings": lambda: Bert(ids=False),
}


def images(count: int, seed: int) -> np.ndarray:
    """Smooth random RGB images, uint8 [N, 3, 224, 224]: low-frequency noise upsampled, as natural images are smooth."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(count, 3, 14, 14)).astype(np.float32)
    fine = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return (np.clip(fine.numpy(), 0, 1) * 255).round().astype(np.uint8)


def samples(name: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Clean samples for model `name`: images, token ids, or embeddings of token ids (through a fixed table)."""
    rng = np.random.default_rng(seed)
    if name.startswith("bert"):
        ids = rng.integers(1000, VOCAB, size=(count, TOKENS)).astype(np.int64)
        if name == "bert_tokens":
            return {"x": ids}
        table = np.random.default_rng(1).normal(0, 0.05, size=(VOCAB, 768)).astype(np.float32)
        return {"x": table[ids]}
    return {"x": images(count, seed)}


def build(name: str, path: Path) -> Path:
    """Export model `name` (seeded, BatchNorm statistics from train-mode passes) to ONNX with a dynamic batch."""
    torch.manual_seed(0)
    model = BUILDERS[name]()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model.train()
        with torch.no_grad():
            for k in range(4):
                model(torch.from_numpy(images(16, 100 + k).astype(np.float32) / 255.0))
    model.eval()
    example = samples(name, 2)["x"]
    dummy = torch.from_numpy(example if example.dtype != np.uint8 else example.astype(np.float32) / 255.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (dummy,), str(path), input_names=["x"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path
