"""Channel suspicion (the paper's method): per-channel signals from one capture and one read of
the weights, standardised within each layer and combined per method.

Each signal is oriented so that larger means more suspicious:
- activation: minus the mean post-activation value (backdoor channels are dormant on clean data)
- weight: upper bound of the channel's Lipschitz constant (CLP), scaled by a following BN
- relationship: minus how well the other channels of the layer linearly explain this one
  (R^2 from the regularised inverse covariance); a channel apart from the layer's clean
  feature pool is suspicious
- bn_drift: how far BatchNormalization's running statistics (learned on the possibly
  poisoned training set) sit from the clean samples' statistics, in the direction the
  channel fires
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from auditor.capture import ChannelStats
from auditor.graph.index import GraphIndex, attribute
from auditor.graph.units import Unit, kernel_rows

SIGNALS = ("activation", "weight", "relationship", "bn_drift")
# Signal weights per method. `sus` combines; `clp` and `fp` are the baselines run through
# the same stages (CLP: weight alone, data-free; Fine-Pruning: activation alone).
METHODS: dict[str, dict[str, float]] = {
    "sus": {"activation": 1.0, "weight": 1.0, "relationship": 1.0, "bn_drift": 1.0},
    "clp": {"weight": 1.0},
    "fp": {"activation": 1.0},
}


@dataclass(frozen=True)
class Signals:
    """Raw oriented signal values of one unit: name -> [C]; bn_drift only when BN exists."""

    values: dict[str, np.ndarray]


def bn_parameters(index: GraphIndex, unit: Unit) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None:
    """(scale, bias, running mean, running var, epsilon) of the unit's BatchNormalization."""
    if unit.bn is None:
        return None
    node = index.node(unit.bn)
    arrays = [index.constant(name) for name in node.input[1:5]]
    if any(a is None for a in arrays):
        return None
    scale, bias, mean, var = (np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays)
    return scale, bias, mean, var, float(attribute(node, "epsilon", 1e-5))


def channel_gain(index: GraphIndex, unit: Unit) -> np.ndarray:
    """|multiplier| applied to each channel after the weighted op (BN scale, per-channel Mul/Div)."""
    gain = np.ones(unit.channels)
    bn = bn_parameters(index, unit)
    if bn is not None:
        scale, _, _, var, eps = bn
        gain *= np.abs(scale / np.sqrt(var + eps))
    for affine in unit.affines:
        if affine.op in ("Mul", "Div"):
            value = np.asarray(index.constant(affine.constant), dtype=np.float64).reshape(-1)
            value = np.abs(value if affine.op == "Mul" else 1.0 / np.where(value == 0, np.inf, value))
            gain *= value if affine.per_channel else value[0]
    return gain


def lipschitz(index: GraphIndex, unit: Unit) -> np.ndarray:
    """Spectral norm of each output channel's kernel [fan_in, k], times its gain."""
    weights = np.asarray(index.constant(unit.weight), dtype=np.float64)
    rows = kernel_rows(weights, unit)
    norms = np.linalg.svd(rows, compute_uv=False)[:, 0] if rows.shape[2] > 1 else np.linalg.norm(rows[:, :, 0], axis=1)
    return norms * channel_gain(index, unit)


def relationship(stats: ChannelStats) -> np.ndarray:
    """R^2 of each channel regressed on the others, from the (ridge-regularised) covariance. A wide unit's Gram
    matrix covers a sample of its channels: they are regressed on each other, and the channels outside the sample
    get the sample's median (no evidence either way)."""
    if stats.gram_index is not None:
        sampled = relationship(dataclasses.replace(stats, sum=stats.sum[stats.gram_index], gram_index=None))
        r2 = np.full(len(stats.sum), float(np.median(sampled)))
        r2[stats.gram_index] = sampled
        return r2
    count = max(stats.count, 1)
    mean = stats.sum / count
    cov = stats.gram / count - np.outer(mean, mean)
    cov = (cov + cov.T) / 2
    var = np.clip(np.diag(cov), 0.0, None)
    live = var > 1e-12 * max(var.max(initial=0.0), 1e-30)
    r2 = np.zeros(len(var))
    if live.sum() >= 2:
        sub = cov[np.ix_(live, live)]
        sd = np.sqrt(np.diag(sub))
        corr = sub / np.outer(sd, sd)
        ridge = 0.1
        precision = np.linalg.inv(corr + ridge * np.eye(len(corr)))
        r2[live] = np.clip(1.0 - 1.0 / (np.diag(precision) * (1.0 + ridge)), 0.0, 1.0)
    return r2


def bn_drift(index: GraphIndex, unit: Unit, stats: ChannelStats) -> np.ndarray | None:
    """Signed shift of the running mean from the clean mean (in running std), plus excess variance."""
    bn = bn_parameters(index, unit)
    if bn is None or stats.bn_count == 0:
        return None
    scale, _, running_mean, running_var, eps = bn
    clean_mean = stats.bn_sum / stats.bn_count
    clean_var = np.maximum(stats.bn_sumsq / stats.bn_count - clean_mean**2, 0.0)
    shift = np.sign(scale) * (running_mean - clean_mean) / np.sqrt(running_var + eps)
    spread = 0.5 * np.log((running_var + eps) / (clean_var + eps))
    return shift + np.maximum(spread, 0.0)


def compute(index: GraphIndex, unit: Unit, stats: ChannelStats) -> Signals:
    """All signals of one unit, oriented larger = more suspicious."""
    values = {
        "activation": -stats.mean,
        "weight": lipschitz(index, unit),
        "relationship": -relationship(stats),
    }
    drift = bn_drift(index, unit, stats)
    if drift is not None:
        values["bn_drift"] = drift
    return Signals(values=values)


@dataclass(frozen=True)
class Suspicion:
    """Per-channel scores of one unit [C] and each standardised signal [C]."""

    score: np.ndarray
    z: dict[str, np.ndarray]


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD), falling back to the mean absolute deviation, else 0."""
    values = np.asarray(values, dtype=np.float64)
    center = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - center))
    if spread <= 1e-12 * max(1.0, abs(center)):
        spread = 1.2533 * np.mean(np.abs(values - center))
    if spread <= 1e-12 * max(1.0, abs(center)):
        return np.zeros_like(values)
    return (values - center) / spread


def suspicion(signals: Signals, method: str) -> Suspicion:
    """Weighted mean of the robust z-scores of the signals the method uses and the unit has."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    weights = {name: w for name, w in METHODS[method].items() if name in signals.values and w}
    z = {name: robust_z(value) for name, value in signals.values.items()}
    total = sum(weights.values())
    score = sum(w * z[name] for name, w in weights.items()) / total
    return Suspicion(score=np.asarray(score, dtype=np.float64), z=z)


def layer_score(score: np.ndarray, top_fraction: float) -> float:
    """A layer's score: the mean of its top `top_fraction` channel scores."""
    count = max(1, round(top_fraction * len(score)))
    return float(np.sort(score)[::-1][:count].mean())
