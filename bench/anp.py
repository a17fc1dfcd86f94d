"""ANP, Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), as a baseline for the bench.

The ONNX model is converted to PyTorch with onnx2torch. Every hidden unit that auditor can
prune (every Conv/Gemm/MatMul output channel except the classifier head, as found by
`auditor.graph.units.find_units`) gets a neuron mask m in [0, 1] and multiplicative noise
delta, xi in [-eps, eps], applied to the unit's pre-activation output o = w + c, where c
is the per-channel constant (the BatchNormalization beta when the unit has a BN node,
as in the original code, else the Conv/Linear bias, else none):

    clean:      o' = m * w + c
    perturbed:  o' = (m + delta) * w + (1 + xi) * c

Each iteration (one mini-batch of the N labelled clean samples): reset the noise
uniformly in [-eps, eps], take one signed-gradient ascent step of size eps on the loss
(anp_steps = 1), clip; then one SGD step (lr 0.2, momentum 0.9) on the masks for
alpha * L(clean) + (1 - alpha) * L(perturbed), clip the masks to [0, 1]. Finally the
channels with mask < 0.2 are pruned.

Because the perturbed units are auditor's units, the pruned channels map one-to-one onto
auditor units and are written to the ONNX model by `auditor.graph.passes.channels.zero_and_cap`
(the same pass `auditor repair` uses): the pruned channels output exactly zero.

Deviations from the paper's setting, all forced by the few-sample budget: BN layers stay
in eval mode (running statistics; batch statistics of 10 samples are meaningless), the
iteration budget is ITERATIONS rather than 2000, the batch is min(N, 128).
"""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from auditor.capture import scores_output
from auditor.graph.index import GraphIndex
from auditor.graph.passes import channels as channel_pass
from auditor.graph.passes import provenance
from auditor.graph.units import find_units
from auditor.io import data as auditor_data
from auditor.io import model as auditor_model

EPS = 0.4
ALPHA = 0.2
MASK_LR = 0.2
MOMENTUM = 0.9
PRUNE_THRESHOLD = 0.2
ITERATIONS = 200
BATCH = 128
SEED = 0


LAST_MASKS: dict[str, np.ndarray] = {}  # final masks of the last run, for inspection


class Unavailable(Exception):
    """ANP cannot run on this model; the message says why (recorded as n/a)."""


@dataclass
class AnpResult:
    zeroed: dict[str, list[int]]
    count: int
    seconds: float  # wall time: load, conversion, optimisation, rewrite, write
    convert_seconds: float
    optimise_seconds: float
    iterations: int
    batch: int
    units: int
    channels: int
    final_loss: float
    mask_quantiles: list[float]  # min, 10%, 25%, median of the final masks
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _import_onnx2torch():
    """onnx2torch imports torchvision for its NMS / RoIAlign converters only; a stub keeps
    the import working without pulling torchvision (those two ops then fail to convert)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")

        def _missing(*_args, **_kwargs):
            raise RuntimeError("torchvision is not installed (bench stub)")

        ops.nms = ops.box_convert = ops.roi_align = _missing
        stub.ops = ops
        sys.modules.setdefault("torchvision", stub)
        sys.modules.setdefault("torchvision.ops", ops)
    try:
        from onnx2torch import convert
    except ImportError as exc:
        raise Unavailable(f"onnx2torch is not installed ({exc})") from exc
    return convert


def _scores_subgraph(proto: onnx.ModelProto, scores: str) -> onnx.ModelProto:
    """The part of the graph that computes the class-score output only."""
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    extracted = onnx.utils.Extractor(proto).extract_model(inputs, [scores])
    extracted.ir_version = proto.ir_version
    del extracted.opset_import[:]
    extracted.opset_import.extend(proto.opset_import)
    return extracted


def _write(path: Path, payload: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(payload)
    os.replace(temporary, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def convert_model(proto: onnx.ModelProto, scores: str, notes: list[str]):
    convert = _import_onnx2torch()
    if len(proto.graph.output) > 1:
        proto = _scores_subgraph(proto, scores)
        notes.append(f"converted the sub-graph that computes {scores!r} only")
    try:
        return convert(proto, attach_onnx_mapping=True)
    except Exception as exc:
        raise Unavailable(f"onnx2torch cannot convert the graph: {type(exc).__name__}: {_first_line(exc)}") from exc


def _probabilities(index: GraphIndex, scores: str) -> str | None:
    """'softmax' / 'logsoftmax' when the score output comes from one (through shape-only ops), else None."""
    tensor = scores
    for _ in range(16):
        position = index.producer.get(tensor)
        if position is None:
            return None
        node = index.node(position)
        if node.op_type in ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            tensor = node.input[0]
            continue
        return {"Softmax": "softmax", "LogSoftmax": "logsoftmax"}.get(node.op_type)
    return None


def run_anp(model_path: str | Path, clean_path: str | Path, output: str | Path, limit: int | None = None,
            iterations: int = ITERATIONS, eps: float = EPS, alpha: float = ALPHA, lr: float = MASK_LR,
            threshold: float = PRUNE_THRESHOLD, batch: int = BATCH, seed: int = SEED, device: str = "cpu") -> AnpResult:
    """Run ANP on the first `limit` labelled samples of `clean_path`; write the pruned ONNX model.
    `device` is PyTorch's ("cpu", "cuda"): bench.gpu times ANP on the GPU that auditor runs on."""
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    notes: list[str] = []
    loaded = auditor_model.load(model_path)
    proto = loaded.proto
    index = GraphIndex(proto)
    units = [u for u in find_units(index) if u.prunable]
    if not units:
        raise Unavailable("no prunable unit")
    samples = auditor_data.load(clean_path, auditor_data.input_specs(proto), limit)
    if samples.labels is None:
        raise Unavailable("ANP needs labelled clean samples (array y)")
    if len(samples.inputs) != 1:
        raise Unavailable("models with several inputs are not supported by this ANP harness")
    scores = scores_output(index)
    kind = _probabilities(index, scores)

    tick = time.perf_counter()
    graph_module = convert_model(proto, scores, notes).to(device)
    graph_module.eval()
    for parameter in graph_module.parameters():
        parameter.requires_grad_(False)
    convert_seconds = time.perf_counter() - tick

    # which torch module produces each unit's pre-activation tensor
    producers = {}
    for module in graph_module.modules():
        mapping = getattr(module, "onnx_mapping", None)
        if mapping is not None:
            for name in mapping.outputs:
                producers[name] = module
    hooks, masks, deltas, xis, hooked = [], [], [], [], []
    state = {"perturb": False}
    for unit in units:
        tensor = proto.graph.node[unit.bn].output[0] if unit.bn is not None else proto.graph.node[unit.node].output[0]
        module = producers.get(tensor)
        if module is None:
            notes.append(f"unit {unit.name}: no torch module produces {tensor!r}; left unmasked")
            continue
        constant = getattr(module, "bias", None)
        if not isinstance(constant, torch.Tensor) or constant.numel() != unit.channels:
            constant = None
        axis = 1 if unit.op in ("Conv", "ConvTranspose") else -1
        mask = torch.ones(unit.channels, requires_grad=True, device=device)
        delta = torch.zeros(unit.channels, requires_grad=True, device=device)
        xi = torch.zeros(unit.channels, requires_grad=True, device=device)
        masks.append(mask)
        deltas.append(delta)
        xis.append(xi)
        hooked.append(unit)

        def hook(_module, _inputs, out, mask=mask, delta=delta, xi=xi, constant=constant, axis=axis):
            shape = [1] * out.dim()
            shape[axis] = -1
            weight = mask + delta if state["perturb"] else mask
            if constant is None:
                return out * weight.view(shape)
            c = constant.view(shape)
            bias = (1 + xi).view(shape) * c if state["perturb"] else c
            return weight.view(shape) * (out - c) + bias

        hooks.append(module.register_forward_hook(hook))
    if not hooked:
        raise Unavailable("no auditor unit could be mapped to a converted torch module")
    if len(hooked) < len(units):
        notes.append(f"{len(hooked)} of {len(units)} units masked")

    inputs = torch.from_numpy(np.ascontiguousarray(next(iter(samples.inputs.values())))).float().to(device)
    labels = torch.from_numpy(samples.labels.astype(np.int64)).to(device)

    def loss_of(logits, target):
        if kind == "softmax":
            return F.nll_loss(torch.log(logits.clamp_min(1e-12)), target)
        if kind == "logsoftmax":
            return F.nll_loss(logits, target)
        return F.cross_entropy(logits.reshape(logits.shape[0], -1), target)

    def forward(x):
        out = graph_module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    generator = torch.Generator().manual_seed(seed)  # the sample order; on the CPU, the noise too
    noisy = generator if device == "cpu" else torch.Generator(device=device).manual_seed(seed)
    noise = deltas + xis
    mask_optimizer = torch.optim.SGD(masks, lr=lr, momentum=MOMENTUM)
    count = len(labels)
    size = min(batch, count)
    order = torch.randperm(count, generator=generator)
    cursor = 0
    tick = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for _ in range(iterations):
        if cursor + size > count:
            order, cursor = torch.randperm(count, generator=generator), 0
        pick = order[cursor:cursor + size]
        cursor += size
        pick = pick.to(device)
        x, y = inputs[pick], labels[pick]
        # 1. adversarial neuron perturbation: random start, one signed ascent step, clip
        with torch.no_grad():
            for tensor in noise:
                tensor.uniform_(-eps, eps, generator=noisy)
        state["perturb"] = True
        ascent = loss_of(forward(x), y)
        grads = torch.autograd.grad(ascent, noise, allow_unused=True)
        with torch.no_grad():
            for tensor, grad in zip(noise, grads):
                if grad is not None:
                    tensor.add_(eps * grad.sign()).clamp_(-eps, eps)
        # 2. mask step on alpha * natural + (1 - alpha) * robust loss
        mask_optimizer.zero_grad()
        robust = loss_of(forward(x), y)
        state["perturb"] = False
        natural = loss_of(forward(x), y)
        loss = alpha * natural + (1 - alpha) * robust
        loss.backward()
        mask_optimizer.step()
        with torch.no_grad():
            for mask in masks:
                mask.clamp_(0.0, 1.0)
        for tensor in noise:
            tensor.grad = None
    if device != "cpu":
        torch.cuda.synchronize()  # the GPU's queued steps belong to the optimisation's time
    optimise_seconds = time.perf_counter() - tick
    for handle in hooks:
        handle.remove()

    final = [mask.detach().cpu().numpy() for mask in masks]
    values = np.concatenate(final)
    LAST_MASKS.clear()
    LAST_MASKS.update({unit.name: mask.copy() for unit, mask in zip(hooked, final)})
    zeroed = {}
    for unit, mask in zip(hooked, final):
        chosen = [int(c) for c in np.flatnonzero(mask < threshold)]
        if chosen:
            zeroed[unit.name] = chosen
    meta = {"bench.method": "anp", "bench.zeroed_channels": str({k: v for k, v in sorted(zeroed.items())})}
    pruned = channel_pass.zero_and_cap(proto, units, zeroed).model
    stamped = provenance.stamp(pruned, meta).model
    _write(Path(output), stamped.SerializeToString(deterministic=True))
    seconds = time.perf_counter() - start
    return AnpResult(
        zeroed=zeroed, count=sum(len(v) for v in zeroed.values()), seconds=seconds,
        convert_seconds=convert_seconds, optimise_seconds=optimise_seconds, iterations=iterations,
        batch=size, units=len(hooked), channels=sum(u.channels for u in hooked), final_loss=float(loss.detach().cpu()),
        mask_quantiles=[round(float(q), 4) for q in np.quantile(values, [0.0, 0.1, 0.25, 0.5])], notes=notes,
    )
