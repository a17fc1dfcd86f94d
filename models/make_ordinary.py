"""Ordinary exported ONNX graphs: small models written by the usual exporters for the
usual reasons, with the control flow, comparisons and masking those exporters emit on
their own (If/Loop from scripted code, Where/Equal attention masks, NaN cleanup, ArgMax
and TopK heads, NonMaxSuppression, Keras LSTM/GRU masking, ONNX-ML tree ensembles...).
None of them carries a backdoor; they exist so the static graph check can be shown to
raise no false alarm on what exporters write every day.

Build (needs the exporter venv, not the project's .venv):

    python3 -m venv /work/envs/exporters
    /work/envs/exporters/bin/pip install torch==2.13.0 onnxscript onnx onnxruntime \
        tensorflow-cpu tf2onnx scikit-learn skl2onnx
    # paddle2onnx pins onnx 1.17, so paddle lives in its own venv:
    python3 -m venv /work/envs/exporters-paddle
    /work/envs/exporters-paddle/bin/pip install paddlepaddle paddle2onnx packaging onnxruntime \
        onnx_graphsurgeon sympy   # polygraphy, used by paddle2onnx, wants the last three
    /work/envs/exporters/bin/python models/make_ordinary.py [--only torch keras sklearn paddle]

Check every file loads and runs under the project's onnxruntime (numpy + onnxruntime only):

    .venv/bin/python models/make_ordinary.py --verify

Writes models/ordinary/*.onnx and models/ordinary/manifest.json (entries are merged by
file name, so one family can be rebuilt alone). All weights are seeded random or fitted on
seeded synthetic data; nothing is downloaded. Reruns give byte-identical files except the
two tf2onnx LSTM/GRU models, whose weights are identical but whose Loop-body node order
and constant names vary from run to run (tf2onnx's optimizer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "ordinary")
MANIFEST = os.path.join(OUT, "manifest.json")
SEED = 0
ORT_MAX_IR = 13  # onnxruntime 1.31 reads IR version <= 13


# ----------------------------------------------------------------------------- manifest

def _all_ops(graph, acc=None):
    """Op types of a graph and of all its subgraphs (If/Loop/Scan bodies)."""
    import onnx
    acc = {} if acc is None else acc
    for n in graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        acc[key] = acc.get(key, 0) + 1
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _all_ops(a.g, acc)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _all_ops(g, acc)
    return acc


def _functions_ops(model):
    acc = {}
    for f in model.functions:
        for n in f.node:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            acc[key] = acc.get(key, 0) + 1
    return acc


def _vi(v):
    import onnx
    t = v.type
    if t.HasField("tensor_type"):
        tt = t.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                for d in tt.shape.dim] if tt.HasField("shape") else None
        return {"name": v.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name}
    return {"name": v.name, "shape": None, "dtype": str(t).strip().replace("\n", " ")}


def describe(path, exporter, framework, constructs, expect_ops, notes, input_hints=None):
    """Manifest entry read back from the written file; asserts the constructs are really there."""
    import onnx
    m = onnx.load(path)
    ops = _all_ops(m.graph)
    fops = _functions_ops(m)
    present = set(ops) | set(fops)
    missing = [o for o in expect_ops if o not in present]
    if missing:
        raise RuntimeError(f"{os.path.basename(path)}: expected ops {missing} not in graph {sorted(present)}")
    init_names = {i.name for i in m.graph.initializer}
    inputs = [_vi(v) for v in m.graph.input if v.name not in init_names]
    for i in inputs:
        if input_hints and i["name"] in input_hints:
            i["values"] = input_hints[i["name"]]
    note = notes
    if m.ir_version > ORT_MAX_IR:
        note += f" IR version {m.ir_version} as written by the exporter: onnxruntime 1.31 reads <= {ORT_MAX_IR}."
    return {
        "file": os.path.basename(path),
        "exporter": exporter,
        "framework": framework,
        "ordinary_constructs": constructs,
        "inputs": inputs,
        "outputs": [_vi(v) for v in m.graph.output],
        "notes": note,
        "ir_version": m.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "op_types": dict(sorted(ops.items())),
        "function_op_types": dict(sorted(fops.items())) if fops else {},
        "bytes": os.path.getsize(path),
    }


def merge_manifest(entries):
    old = []
    if os.path.exists(MANIFEST):
        with open(MANIFEST) as f:
            old = json.load(f)
    by = {e["file"]: e for e in old}
    for e in entries:
        by[e["file"]] = e
    with open(MANIFEST, "w") as f:
        json.dump([by[k] for k in sorted(by)], f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------- torch

def build_torch():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    tv = torch.__version__
    entries = []

    def seed():
        torch.manual_seed(SEED)
        np.random.seed(SEED)

    class TinyCNN(nn.Module):
        """Conv-BN-ReLU-MaxPool-Conv-ReLU-GAP-Linear, 10 classes, 1x28x28."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
            x = F.relu(self.c2(x))
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(x)

    class Heads(nn.Module):
        """A CNN with the activations and heads deployment code adds: NaN cleanup of the
        input, ReLU6/Hardtanh/LeakyReLU/clamp, torch.where on activations, logits + softmax
        probabilities + argmax label + top-3."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # sanitise missing pixels
            x = torch.clamp(x, 0.0, 1.0)
            h = F.relu6(self.c1(x))
            h = F.hardtanh(self.c2(h), -2.0, 2.0)
            h = F.leaky_relu(self.c3(h), 0.1)
            h = torch.where(h > 0, h, 0.05 * h)  # hand-written leaky gate
            h = h.mean(dim=(2, 3))
            logits = self.fc(h)
            probs = torch.softmax(logits, dim=-1)
            label = torch.argmax(logits, dim=-1)
            top_p, top_i = torch.topk(probs, 3, dim=-1)
            return logits, probs, label, top_p, top_i

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.h = heads
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.ff1 = nn.Linear(d, 2 * d)
            self.ff2 = nn.Linear(2 * d, d)

        def forward(self, x, mask_add, key_pad):
            B, T, D = x.shape
            q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
            q = q.view(B, T, self.h, D // self.h).transpose(1, 2)
            k = k.view(B, T, self.h, D // self.h).transpose(1, 2)
            v = v.view(B, T, self.h, D // self.h).transpose(1, 2)
            s = q @ k.transpose(-1, -2) / float((D // self.h) ** 0.5)
            if key_pad is not None:  # masked_fill(-inf) style (Equal + Where)
                s = s.masked_fill(key_pad, float("-inf"))
            if mask_add is not None:  # HF style additive finfo.min mask
                s = s + mask_add
            a = torch.softmax(s, dim=-1)
            if key_pad is not None:  # rows with every key masked become NaN: zero them
                a = torch.where(torch.isnan(a), torch.zeros_like(a), a)
            y = (a @ v).transpose(1, 2).reshape(B, T, D)
            x = x + self.proj(y)
            return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))

    class TextClassifier(nn.Module):
        def __init__(self, style, vocab=100, d=32, heads=2, layers=2, maxlen=16, ncls=3):
            super().__init__()
            self.style = style
            self.emb = nn.Embedding(vocab, d, padding_idx=0)
            self.pos = nn.Embedding(maxlen, d)
            self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, ncls)

        def forward(self, input_ids, attention_mask):
            T = input_ids.shape[1]
            pos = torch.arange(T, device=input_ids.device).unsqueeze(0)
            x = self.emb(input_ids) + self.pos(pos)
            if self.style == "where":
                key_pad = (attention_mask == 0)[:, None, None, :]
                mask_add = None
            else:
                key_pad = None
                mask_add = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for b in self.blocks:
                x = b(x, mask_add, key_pad)
            x = self.ln(x)
            m = attention_mask.unsqueeze(-1).to(x.dtype)  # masked mean pooling
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            logits = self.head(pooled)
            return logits, torch.argmax(logits, dim=-1)

    class StdEncoder(nn.Module):
        """nn.TransformerEncoder with src_key_padding_mask, the stock PyTorch way."""

        def __init__(self, vocab=100, d=32, ncls=3):
            super().__init__()
            self.emb = nn.Embedding(vocab, d, padding_idx=0)
            layer = nn.TransformerEncoderLayer(d, 2, 64, dropout=0.0, activation="gelu", batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(d, ncls)

        def forward(self, input_ids, attention_mask):
            pad = attention_mask == 0
            x = self.enc(self.emb(input_ids), src_key_padding_mask=pad)
            m = (~pad).unsqueeze(-1).to(x.dtype)
            return self.head((x * m).sum(1) / m.sum(1).clamp(min=1.0))

    class Control(nn.Module):
        """Scripted tabular classifier: rescales when the activations run large (if),
        refines for a fixed number of steps (for) and renormalises until small (while)."""

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(16, 32)
            self.refine = nn.Linear(32, 32)
            self.fc2 = nn.Linear(32, 4)
            self.steps = 3

        def forward(self, x):
            h = self.fc1(x)
            peak = h.abs().max()
            if bool(peak > 10.0):
                h = h / peak * 10.0
            else:
                h = torch.clamp(h, -5.0, 5.0)
            for _ in range(self.steps):
                h = h + 0.1 * torch.tanh(self.refine(h))
            n = 0
            while bool(h.abs().max() > 4.0) and n < 8:
                h = h * 0.5
                n += 1
            return self.fc2(F.relu(h))

    class CondNorm(nn.Module):
        """torch.cond (the export-friendly data-dependent branch) for the dynamo exporter."""

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(16, 32)
            self.fc2 = nn.Linear(32, 4)

        def forward(self, x):
            h = self.fc1(x)

            def big(h):
                return h / h.abs().max() * 10.0

            def small(h):
                return torch.clamp(h, -5.0, 5.0)

            h = torch.cond(h.abs().max() > 10.0, big, small, (h,))
            return self.fc2(F.relu(h))

    # -- NMS detector head: NonMaxSuppression through a symbolic, as torchvision does
    class _NMS(torch.autograd.Function):
        @staticmethod
        def forward(ctx, boxes, scores, max_out, iou, score_thr):
            # eager reference of ONNX NonMaxSuppression (center_point_box=0), used while tracing
            out = []
            B, C, _N = scores.shape
            for b in range(B):
                for c in range(C):
                    s = scores[b, c]
                    order = torch.argsort(s, descending=True)
                    keep = []
                    for i in order.tolist():
                        if float(s[i]) <= float(score_thr) or len(keep) >= int(max_out):
                            continue
                        bi = boxes[b, i]
                        ok = True
                        for j in keep:
                            bj = boxes[b, j]
                            lt = torch.maximum(bi[:2], bj[:2])
                            rb = torch.minimum(bi[2:], bj[2:])
                            inter = (rb - lt).clamp(min=0).prod()
                            a1 = (bi[2:] - bi[:2]).prod()
                            a2 = (bj[2:] - bj[:2]).prod()
                            if float(inter / (a1 + a2 - inter)) > float(iou):
                                ok = False
                                break
                        if ok:
                            keep.append(i)
                    out += [[b, c, i] for i in keep]
            return torch.tensor(out, dtype=torch.int64).reshape(-1, 3)

        @staticmethod
        def symbolic(g, boxes, scores, max_out, iou, score_thr):
            return g.op("NonMaxSuppression", boxes, scores, max_out, iou, score_thr)

    class TinyDetector(nn.Module):
        """Single-class detector on a 4x4 grid: conv backbone, box/score heads, box decode,
        score threshold + IoU NMS, gather of kept boxes."""

        def __init__(self):
            super().__init__()
            self.b1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.b3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.box = nn.Conv2d(16, 4, 1)
            self.obj = nn.Conv2d(16, 1, 1)
            gy, gx = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
            self.register_buffer("centers", torch.stack([gx, gy], -1).reshape(1, 16, 2) * 8.0 + 4.0)

        def forward(self, x):
            h = F.relu(self.b3(F.relu(self.b2(F.relu(self.b1(x))))))
            d = self.box(h).flatten(2).transpose(1, 2)  # [B,16,4]
            ctr = self.centers + torch.tanh(d[..., :2]) * 4.0
            wh = torch.sigmoid(d[..., 2:]) * 16.0
            boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0.0, 32.0)
            scores = torch.sigmoid(self.obj(h).flatten(2))  # [B,1,16]
            sel = _NMS.apply(boxes, scores, torch.tensor([10], dtype=torch.int64),
                             torch.tensor([0.5]), torch.tensor([0.3]))
            bidx, bx = sel[:, 0], sel[:, 2]
            return boxes[bidx, bx], scores[bidx, 0, bx], bidx

    def ts_export(model, args, name, in_names, out_names, dyn, opset=17):
        path = os.path.join(OUT, name)
        torch.onnx.export(model, args, path, dynamo=False, input_names=in_names, output_names=out_names,
                          dynamic_axes=dyn, opset_version=opset)
        return path

    def dy_export(model, args, name, in_names, out_names, dyn_shapes, opset=18):
        path = os.path.join(OUT, name)
        prog = torch.onnx.export(model, args, dynamo=True, input_names=in_names, output_names=out_names,
                                 dynamic_shapes=dyn_shapes, opset_version=opset, external_data=False)
        prog.save(path, external_data=False)
        return path

    TS = f"torch.onnx TorchScript exporter (dynamo=False), torch {tv}"
    DY = f"torch.onnx dynamo exporter (dynamo=True, onnxscript), torch {tv}"
    batch = torch.export.Dim("batch", min=1, max=1024)
    seqlen = torch.export.Dim("seq", min=2, max=16)
    ids_hint = {"input_ids": "int64 token ids in [0, 100)", "attention_mask": "int64 0/1, 1 = real token; "
                "position 0 always 1"}

    # CNN -----------------------------------------------------------------
    seed()
    m = TinyCNN().eval()
    x = torch.randn(2, 1, 28, 28)
    p = ts_export(m, (x,), "torch_ts_cnn.onnx", ["image"], ["logits"], {"image": {0: "batch"}, "logits": {0: "batch"}})
    entries.append(describe(p, TS, "pytorch", ["Conv/BatchNorm(folded)/ReLU/MaxPool CNN", "dynamic batch"],
                            ["Conv", "Relu", "MaxPool"], "Tiny CNN classifier, seeded random weights."))
    p = dy_export(m, (x,), "torch_dynamo_cnn.onnx", ["image"], ["logits"], ({0: batch},))
    entries.append(describe(p, DY, "pytorch", ["Conv/BatchNorm(folded)/ReLU/MaxPool CNN", "dynamic batch"],
                            ["Conv", "Relu", "MaxPool"], "Same tiny CNN, dynamo exporter."))

    # heads ---------------------------------------------------------------
    seed()
    m = Heads().eval()
    x = torch.rand(2, 3, 32, 32)
    outs = ["logits", "probs", "label", "top3_p", "top3_i"]
    heads_c = ["Where(IsNaN) input NaN cleanup", "Clip (clamp, relu6, hardtanh)", "LeakyRelu",
               "Where(Greater) on activations", "Softmax", "ArgMax label head", "TopK top-3 head",
               "dynamic batch"]
    p = ts_export(m, (x,), "torch_ts_heads.onnx", ["image"], outs,
                  {"image": {0: "batch"}, **{o: {0: "batch"} for o in outs}})
    entries.append(describe(p, TS, "pytorch", heads_c, ["Where", "IsNaN", "Clip", "LeakyRelu", "Greater",
                                                        "ArgMax", "TopK", "Softmax"],
                            "CNN with the activations and output heads deployment code adds. Input may hold NaN."))
    p = dy_export(m, (x,), "torch_dynamo_heads.onnx", ["image"], outs, ({0: batch},))
    entries.append(describe(p, DY, "pytorch", heads_c, ["Where", "IsNaN", "Clip", "LeakyRelu", "Greater",
                                                        "ArgMax", "TopK", "Softmax"],
                            "Same heads model, dynamo exporter. Input may hold NaN."))

    # transformers --------------------------------------------------------
    ids = torch.randint(1, 100, (2, 12))
    am = torch.ones(2, 12, dtype=torch.int64)
    am[1, 7:] = 0
    tin, tout = ["input_ids", "attention_mask"], ["logits", "label"]
    tdyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "logits": {0: "batch"}, "label": {0: "batch"}}
    for style, cons, ops in [
        ("where", ["Equal(attention_mask, 0) key-padding mask", "Where(mask, -inf, scores) in attention",
                   "Where(IsNaN) after softmax for fully padded rows", "Gather embedding of token ids",
                   "GELU", "LayerNorm", "Softmax", "masked mean pooling (Mul/ReduceSum/Div/Clip)",
                   "ArgMax label", "dynamic batch and sequence length"],
         ["Equal", "Where", "IsNaN", "Softmax", "ArgMax", "Gather"]),
        ("additive", ["additive (1 - mask) * finfo.min attention mask (Sub/Mul/Add)",
                      "Gather embedding of token ids", "GELU", "LayerNorm", "Softmax",
                      "masked mean pooling (Mul/ReduceSum/Div/Clip)", "ArgMax label",
                      "dynamic batch and sequence length"],
         ["Softmax", "ArgMax", "Gather", "Sub", "Mul"]),
    ]:
        seed()
        m = TextClassifier(style).eval()
        p = ts_export(m, (ids, am), f"torch_ts_text_{style}.onnx", tin, tout, tdyn)
        entries.append(describe(p, TS, "pytorch", cons, ops,
                                f"Tiny pre-LN transformer text classifier (2 layers, d=32, vocab 100, max 16 "
                                f"tokens), '{style}' attention masking.", ids_hint))
        p = dy_export(m, (ids, am), f"torch_dynamo_text_{style}.onnx", tin, tout,
                      ({0: batch, 1: seqlen}, {0: batch, 1: seqlen}))
        entries.append(describe(p, DY, "pytorch", cons, ops,
                                f"Same transformer, '{style}' masking, dynamo exporter.", ids_hint))

    # stock nn.TransformerEncoder (best effort: may hit exporter limits)
    seed()
    m = StdEncoder().eval()
    std_c = ["nn.TransformerEncoder with src_key_padding_mask (Equal/Where/-inf or bool mask)",
             "GELU", "LayerNorm", "Softmax", "masked mean pooling", "dynamic batch and sequence length"]
    try:
        # tracing bakes nn.MultiheadAttention's reshape sizes (a known TorchScript-exporter limit),
        # so this one is exported with static shapes [2, 12], as such models usually are
        p = ts_export(m, (ids, am), "torch_ts_std_encoder.onnx", tin, ["logits"], None)
        entries.append(describe(p, TS, "pytorch", [*std_c[:-1], "static shapes [2, 12]"], ["Softmax", "Equal"],
                                "Stock nn.TransformerEncoder (2 layers, batch_first). Static input shapes: "
                                "the TorchScript tracer bakes MultiheadAttention's reshape sizes.", ids_hint))
    except Exception as e:
        print("SKIP torch_ts_std_encoder:", repr(e)[:300])
    try:
        p = dy_export(m, (ids, am), "torch_dynamo_std_encoder.onnx", tin, ["logits"],
                      ({0: batch, 1: seqlen}, {0: batch, 1: seqlen}))
        entries.append(describe(p, DY, "pytorch", std_c, ["Softmax", "Equal"],
                                "Stock nn.TransformerEncoder, dynamo exporter.", ids_hint))
    except Exception as e:
        print("SKIP torch_dynamo_std_encoder:", repr(e)[:300])

    # scripted control flow ----------------------------------------------
    seed()
    m = torch.jit.script(Control().eval())
    x = torch.randn(4, 16)
    p = ts_export(m, (x,), "torch_ts_scripted_control.onnx", ["features"], ["logits"],
                  {"features": {0: "batch"}, "logits": {0: "batch"}})
    entries.append(describe(p, TS + " on a torch.jit.script module", "pytorch",
                            ["If on a runtime value (rescale vs clamp)", "Loop with fixed trip count (for)",
                             "Loop with data-dependent condition (while)", "ReduceMax/Abs/Greater comparisons",
                             "Clip", "dynamic batch"],
                            ["If", "Loop", "Greater"],
                            "Scripted tabular classifier whose branch and while loop depend on activation "
                            "magnitudes (whole batch), an ordinary numerical safeguard."))
    seed()
    m = CondNorm().eval()
    try:
        p = dy_export(m, (x,), "torch_dynamo_cond.onnx", ["features"], ["logits"], ({0: batch},))
        entries.append(describe(p, DY + " with torch.cond", "pytorch",
                                ["If from torch.cond on a runtime value", "Greater comparison", "Clip",
                                 "dynamic batch"], ["If", "Greater"],
                                "torch.cond branch (rescale vs clamp) on the activation peak."))
    except Exception as e:
        print("SKIP torch_dynamo_cond:", repr(e)[:300])

    # detector + NMS ------------------------------------------------------
    seed()
    m = TinyDetector().eval()
    x = torch.rand(2, 3, 32, 32)
    p = ts_export(m, (x,), "torch_ts_detector_nms.onnx", ["image"], ["boxes", "scores", "batch_index"],
                  {"image": {0: "batch"}, "boxes": {0: "n"}, "scores": {0: "n"}, "batch_index": {0: "n"}})
    entries.append(describe(p, TS + " with a NonMaxSuppression symbolic (as torchvision.ops.nms)", "pytorch",
                            ["NonMaxSuppression (IoU 0.5, score 0.3, max 10)", "Gather of kept boxes/scores",
                             "Sigmoid/Tanh box decode", "Clip of boxes to the image",
                             "data-dependent output count"],
                            ["NonMaxSuppression", "Gather", "Clip", "Sigmoid"],
                            "Tiny single-class detector head on a 4x4 grid with NMS post-processing."))
    return entries


# ----------------------------------------------------------------------------- keras / tf2onnx

def build_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    exporter = f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__}, keras {keras.__version__})"
    entries = []

    def convert(fn, sig, name, opset=17):
        path = os.path.join(OUT, name)
        tf2onnx.convert.from_function(fn, input_signature=sig, opset=opset, output_path=path)
        return path

    # CNN, dynamic batch
    cnn = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    sig = [tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")]

    @tf.function(input_signature=sig)
    def cnn_fn(image):
        return {"logits": cnn(image, training=False)}

    p = convert(cnn_fn, sig, "keras_tf2onnx_cnn.onnx")
    entries.append(describe(p, exporter, "tensorflow/keras",
                            ["Conv/ReLU/MaxPool CNN from NHWC Keras layers (BatchNormalization folded to Mul by tf2onnx)",
                             "dynamic batch"],
                            ["Conv", "Relu", "MaxPool"], "Keras Sequential CNN, seeded random weights."))

    # LSTM / GRU sequence classifiers with masking
    for kind in ("lstm", "gru"):
        keras.utils.set_random_seed(SEED)
        rnn = keras.layers.LSTM(16) if kind == "lstm" else keras.layers.GRU(16)
        seq = keras.Sequential([
            keras.Input((12,), dtype="int32"),
            keras.layers.Embedding(100, 16, mask_zero=True),
            rnn,
            keras.layers.Dense(3),
        ])
        sig = [tf.TensorSpec([None, 12], tf.int32, name="tokens")]

        @tf.function(input_signature=sig)
        def seq_fn(tokens, seq=seq):
            logits = seq(tokens, training=False)
            return {"logits": logits, "label": tf.argmax(logits, axis=-1)}

        p = convert(seq_fn, sig, f"keras_tf2onnx_{kind}_text.onnx")
        ops = _all_ops(__import__("onnx").load(p).graph)
        cons = [f"Keras {kind.upper()} over embedded tokens", "Embedding(mask_zero=True): Equal(tokens, 0)/Not "
                "padding mask", "Gather embedding of token ids", "ArgMax label", "dynamic batch"]
        if "Loop" in ops:
            cons.append("Loop over time steps (tf.while_loop; Less/And/Not trip condition) carrying the "
                        "mask-gated recurrent state")
        entries.append(describe(p, exporter, "tensorflow/keras", cons, ["ArgMax", "Gather", "Equal"],
                                f"Token classifier: Embedding(100, 16, mask_zero) -> {kind.upper()}(16) -> Dense(3). "
                                f"Token 0 is padding.", {"tokens": "int32 token ids in [0, 100), 0 = padding"}))

    # tf.where / clip / argmax post-processing around a Keras MLP
    keras.utils.set_random_seed(SEED)
    mlp = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(5)])
    sig = [tf.TensorSpec([None, 20], tf.float32, name="features")]

    @tf.function(input_signature=sig)
    def post_fn(features):
        x = tf.where(tf.math.is_nan(features), tf.zeros_like(features), features)
        x = tf.clip_by_value(x, -3.0, 3.0)
        logits = mlp(x, training=False)
        probs = tf.nn.softmax(logits)
        label = tf.argmax(probs, axis=-1)
        conf = tf.reduce_max(probs, axis=-1)
        label = tf.where(conf >= 0.25, label, tf.fill(tf.shape(label), tf.constant(-1, tf.int64)))  # abstain
        return {"probs": probs, "label": label}

    p = convert(post_fn, sig, "keras_tf2onnx_where_clip_argmax.onnx")
    entries.append(describe(p, exporter, "tensorflow/keras",
                            ["Where(IsNaN) input cleanup", "tf.clip_by_value as Max/Min", "Softmax",
                             "ArgMax label", "Where(GreaterOrEqual) abstain label -1 on low confidence",
                             "dynamic batch"],
                            ["Where", "IsNaN", "ArgMax", "Max", "Min", "GreaterOrEqual"],
                            "Keras MLP wrapped in tf.function pre/post-processing. Input may hold NaN."))
    return entries


# ----------------------------------------------------------------------------- sklearn / skl2onnx

def build_sklearn():
    import skl2onnx
    import sklearn
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    exporter = f"skl2onnx {skl2onnx.__version__} (scikit-learn {sklearn.__version__})"
    X, y = make_classification(n_samples=400, n_features=8, n_informative=5, n_classes=3, random_state=SEED)
    X = X.astype(np.float32)
    rng = np.random.default_rng(SEED)
    Xn = X.copy()
    Xn[rng.random(X.shape) < 0.05] = np.nan
    itype = [("features", FloatTensorType([None, 8]))]
    entries = []
    hint = {"features": "float32, 8 features"}
    nan_hint = {"features": "float32, 8 features; NaN allowed (imputed to the column mean)"}

    def save(model, name, Xfit, options=None):
        onx = to_onnx(model, initial_types=itype, options=options, target_opset={"": 17, "ai.onnx.ml": 3})
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        return path

    nozip = {"zipmap": False}
    pipe = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), LogisticRegression(max_iter=500))
    pipe.fit(Xn, y)
    p = save(pipe, "skl_pipeline_impute_scale_logreg.onnx", Xn, {id(pipe.steps[-1][1]): nozip})
    entries.append(describe(p, exporter, "scikit-learn",
                            ["ai.onnx.ml Imputer (NaN -> column mean)", "ai.onnx.ml Scaler",
                             "LinearClassifier with ArgMax-style label", "zipmap=False (plain probability tensor)"],
                            ["ai.onnx.ml.Imputer", "ai.onnx.ml.Scaler", "ai.onnx.ml.LinearClassifier"],
                            "SimpleImputer(mean) + StandardScaler + LogisticRegression on synthetic data "
                            "with 5% NaN.", nan_hint))

    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=SEED).fit(X, y)
    p = save(mlp, "skl_mlp.onnx", X, {id(mlp): nozip})
    entries.append(describe(p, exporter, "scikit-learn",
                            ["MatMul/Relu MLP", "Softmax", "ArgMax + ArrayFeatureExtractor label lookup",
                             "zipmap=False"], ["MatMul", "ArgMax"], "MLPClassifier(16) on synthetic data.", hint))

    rf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=SEED).fit(X, y)
    p = save(rf, "skl_random_forest.onnx", X, {id(rf): nozip})
    entries.append(describe(p, exporter, "scikit-learn",
                            ["ai.onnx.ml TreeEnsembleClassifier (BRANCH_LEQ threshold comparisons on raw input)",
                             "zipmap=False"], ["ai.onnx.ml.TreeEnsembleClassifier"],
                            "RandomForest(10 trees, depth 4).", hint))

    gb = GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=SEED).fit(X, y)
    p = save(gb, "skl_gradient_boosting.onnx", X, {id(gb): {"zipmap": True}})
    entries.append(describe(p, exporter, "scikit-learn",
                            ["ai.onnx.ml TreeEnsembleClassifier/Regressor (threshold comparisons on raw input)",
                             "ZipMap output (sequence of maps), as skl2onnx writes by default"],
                            ["ai.onnx.ml.ZipMap"],
                            "GradientBoosting(10 stages, depth 3); kept with the default ZipMap output.", hint))

    svc = SVC(probability=True, random_state=SEED).fit(X, y)
    p = save(svc, "skl_svc.onnx", X, {id(svc): nozip})
    entries.append(describe(p, exporter, "scikit-learn",
                            ["ai.onnx.ml SVMClassifier (RBF kernel, Platt probabilities)", "zipmap=False"],
                            ["ai.onnx.ml.SVMClassifier"], "SVC(rbf, probability=True).", hint))
    return entries


# ----------------------------------------------------------------------------- paddle (own venv)

def build_paddle(python):
    script = os.path.join(HERE, "make_ordinary_paddle.py")
    if not os.path.exists(python):
        print(f"SKIP paddle: {python} not found")
        return []
    r = subprocess.run([python, script, OUT], capture_output=True, text=True)
    if r.returncode != 0:
        print("SKIP paddle:", r.stderr[-2000:])
        return []
    info = json.loads(r.stdout.strip().splitlines()[-1])
    p = os.path.join(OUT, info["file"])
    return [describe(p, info["exporter"], "paddlepaddle",
                     ["Conv/BatchNorm/ReLU/MaxPool CNN", "Softmax", "ArgMax label", "dynamic batch"],
                     ["Conv", "ArgMax"], info["notes"])]


# ----------------------------------------------------------------------------- verify

def _feed_for(inp, rng):
    name, dt = inp["name"], np.dtype(inp["dtype"])
    dflt = [3, 10] if name in ("attention_mask", "input_ids") else [2] * len(inp["shape"] or [])
    shape = [d if isinstance(d, int) and d > 0 else dflt[k] for k, d in enumerate(inp["shape"] or [])]
    if name == "attention_mask":
        a = (rng.random(shape) < 0.8).astype(dt)
        a[:, 0] = 1
        return a
    if name == "input_ids":
        return rng.integers(0, 100, shape).astype(dt)
    if name == "tokens":
        a = rng.integers(1, 100, shape).astype(dt)
        a[0, 8:] = 0
        return a
    if np.issubdtype(dt, np.integer):
        return rng.integers(0, 100, shape).astype(dt)
    a = rng.standard_normal(shape).astype(dt) if inp["name"] != "image" else rng.random(shape).astype(dt)
    if "NaN" in inp.get("values", ""):
        a[0, 0] = np.nan
    return a


def verify():
    import onnxruntime as ort
    with open(MANIFEST) as f:
        entries = json.load(f)
    rng = np.random.default_rng(SEED)
    bad = 0
    for e in entries:
        path = os.path.join(OUT, e["file"])
        try:
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            feeds = {}
            for i in e["inputs"]:
                i = dict(i)
                if "NaN" in e["notes"]:
                    i["values"] = i.get("values", "") + " NaN"
                feeds[i["name"]] = _feed_for(i, rng)
            outs = s.run(None, feeds)
            desc = ", ".join(f"{o.name}{list(np.shape(v)) if hasattr(v, 'shape') else type(v).__name__}"
                             for o, v in zip(s.get_outputs(), outs))
            print(f"OK   {e['file']:42s} ort {ort.__version__} -> {desc}")
        except Exception as ex:
            bad += 1
            print(f"FAIL {e['file']:42s} {type(ex).__name__}: {str(ex)[:300]}")
    total = sum(os.path.getsize(os.path.join(OUT, e["file"])) for e in entries)
    print(f"{len(entries) - bad} passed, {bad} failed; {len(entries)} files, {total / 1e6:.2f} MB")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=["torch", "keras", "sklearn", "paddle"])
    ap.add_argument("--paddle-python", default="/work/envs/exporters-paddle/bin/python")
    ap.add_argument("--verify", action="store_true", help="load and run every manifest entry in onnxruntime")
    a = ap.parse_args()
    if a.verify:
        sys.exit(verify())
    os.makedirs(OUT, exist_ok=True)
    for fam in a.only:
        if fam == "torch":
            merge_manifest(build_torch())
        elif fam == "keras":
            merge_manifest(build_keras())
        elif fam == "sklearn":
            merge_manifest(build_sklearn())
        elif fam == "paddle":
            merge_manifest(build_paddle(a.paddle_python))
        else:
            raise SystemExit(f"unknown family {fam}")
        print("done", fam)


if __name__ == "__main__":
    main()
