"""Paddle half of make_ordinary.py, run by it in its own venv (paddle2onnx pins onnx 1.17):

    /work/envs/exporters-paddle/bin/python models/make_ordinary_paddle.py models/ordinary

Exports a tiny seeded CNN classifier (logits + argmax label, dynamic batch) with
paddle.onnx.export (paddle2onnx) and prints one JSON line describing it.
"""

import json
import os
import sys
import tempfile

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import paddle2onnx

out = sys.argv[1]
paddle.seed(0)
np.random.seed(0)


class TinyCNN(nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2D(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2D(8)
        self.c2 = nn.Conv2D(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        x = F.relu(self.c2(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.fc(x)
        return logits, paddle.argmax(F.softmax(logits, axis=-1), axis=-1)


m = TinyCNN()
m.eval()
spec = [paddle.static.InputSpec([None, 1, 28, 28], "float32", name="image")]
name = "paddle_cnn.onnx"
with tempfile.TemporaryDirectory() as td:
    prefix = os.path.join(td, "paddle_cnn")
    paddle.onnx.export(m, prefix, input_spec=spec, opset_version=13)
    os.replace(prefix + ".onnx", os.path.join(out, name))
print(json.dumps({"file": name,
                  "exporter": f"paddle2onnx {paddle2onnx.__version__} via paddle.onnx.export "
                              f"(paddlepaddle {paddle.__version__})",
                  "notes": "Tiny Paddle CNN classifier, seeded random weights, logits + argmax label."}))
