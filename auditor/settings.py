"""Every tunable of the method, in one frozen tree: `Settings`, passed explicitly into the stages.

Defaults live here and only here. Why each value is what it is: docs/EXPERIMENTS.md (the numbers
behind it: BENCHMARKS.md). A variant of the method is an override (`Settings().override(...)`);
a name that does not exist is refused. Derived values (`VerdictSettings.patch_reach`) are
computed from the settings, never stored beside them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auditor.errors import SettingsError


@dataclass(frozen=True)
class CaptureSettings:
    """The pass that captures per-channel statistics, and the size of every run after it (detectors, evaluate)."""

    batch: int = 64  # samples per run (1 when the model fixes its batch dimension at 1)
    batch_values: int = 1 << 19  # and at most this many input values per run: 3 samples at 224 px, 64 at 28 or 32 px;
    # memory then does not grow with N (a 224 px batch of 64 held GBs of activations, one of 27 twice a batch of 10's; the
    # instrumented MobileNetV3 peaked at 655 MB in runs of 5 samples, 549 MB in runs of 3)
    # `scan` measures channel statistics on at most this many of the first samples (the detectors read no more) and
    # gives the rest a plain pass for their classes: the instrumented pass costs several plain ones, and at N = 1000 it
    # was most of a MobileNetV3 scan's growth in time (`repair` measures every sample: its bounds are clean maxima)
    scan_statistics: int = 100
    gram_channels: int = 512  # wider units: channel relations on an evenly spaced sample of this many channels (a full
    # Gram matrix of a 3072-wide layer costs twice the layer's own pass, its inverse more than the whole capture)


@dataclass(frozen=True)
class ChannelSettings:
    """Channel suspicion (the paper's signals): ranks channels; gives the verdict only without a probe."""

    top_fraction: float = 0.05  # a layer's score: the mean of its top this share of channel scores
    threshold: float = 3.0  # robust z-score at which a layer's score flags the model


@dataclass(frozen=True)
class VerdictSettings:
    """Thresholds that turn the detectors' evidence into a verdict (chosen on the zoo's tuning half)."""

    probe_threshold: float = 0.6  # the corruption probe's largest class share; the one threshold of the verdict
    patch_threshold: float = 0.9  # the patch search's score that flags; rescaled onto probe_threshold
    # the Fourier probe's score (its target's lift over the runner-up's) that flags; rescaled onto probe_threshold. Chosen
    # on the grey-scale zoo alone (largest TPR - 2 x FPR), the RGB and families zoos held out (bench.fourier_runner_up)
    fourier_threshold: float = 0.35
    min_others: int = 3  # a class's share is measured on at least this many samples predicted elsewhere
    min_classes: int = 3  # with fewer classes an error has no other class to go to: no behavioural verdict
    # classes the model is trained to give inputs with nothing in them (a detector's background, a speech model's
    # silence or unknown, a reject option): corrupted samples pile into them by design, so the corruption probe does
    # not take them for a shortcut's target (the patch search and the Fourier probe still do); declared by the user
    background_classes: tuple[int, ...] = ()
    # (slope, intercept): the verdict score's chance of a backdoor, 1 / (1 + exp(-(slope * score + intercept))), at a
    # prior of one half; the class-balanced logistic fit on the grey-scale zoo's 38 models x 6 draws (bench.calibrate),
    # refitted when the Fourier probe's score changed (2026-12-07; before: (7.709, -3.511))
    calibration: tuple[float, float] = (6.985, -3.228)

    @property
    def patch_reach(self) -> float:
        """The largest verdict score the patch search can give (its own score is at most 1)."""
        return self.probe_threshold / self.patch_threshold

    @property
    def fourier_scale(self) -> float:
        """What the Fourier probe's score is multiplied by to sit on the verdict's scale."""
        return self.probe_threshold / self.fourier_threshold

    @property
    def fourier_reach(self) -> float:
        """The largest verdict score the Fourier probe can give: its rescaled score, capped at a share's largest, 1."""
        return min(1.0, self.fourier_scale)

    def fourier_value(self, score: float) -> float:
        """The Fourier probe's `score` on the verdict's scale: rescaled, from 0 up to `fourier_reach`."""
        return min(self.fourier_reach, max(0.0, score) * self.fourier_scale)


@dataclass(frozen=True)
class ProbeSettings:
    """The corruption probe: noise, noise blends and blur on the clean samples."""

    noise_levels: tuple[float, ...] = (0.1, 0.2, 0.3)  # uniform noise amplitude, share of the clean range
    noise_draws: int = 5  # noisy (and blended) copies per sample and level
    blend_levels: tuple[float, ...] = (0.1, 0.2)  # weights a of (1 - a) x + a u, u uniform noise
    blur_sigmas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # Gaussian blur over the image axes, in positions
    max_samples: int = 100  # the probe corrupts at most the first this many clean samples ...
    max_values: int = 1 << 23  # ... and at most as many as keep one corruption's copies within this many input values:
    # 100 samples at 28 or 32 px, 11 at 224 px (where 100 held 300 MB a corruption, and the probe's time grew with N)
    seed: int = 0
    # a class's share counts in full only when the corrupted samples it takes are classified at least this surely,
    # as a median margin relative to the clean samples' median margin; below, in proportion (a natural sink takes
    # samples unsure, a shortcut as surely as clean ones are classified). 0: no discount
    confidence: float = 0.7


@dataclass(frozen=True)
class PatchSettings:
    """The patch search (random search, then a sweep of the best patch over every position)."""

    size: float = 0.15  # side of the square patch, share of the image's shorter side (4 pixels of 28)
    iterations: int = 300  # random-search steps
    screen: int = 100  # steps over every class before only the `shortlist` best go on
    shortlist: int = 3
    screen_samples: int = 5  # while screening, a class's patch is pasted on at most this many samples
    max_classes: int = 10  # with more classes, this many patches serve whichever class each pushes furthest
    max_samples: int = 10  # patches are pasted on at most the first this many clean samples
    levels: tuple[float, ...] = (0.0, 1.0)  # pixel values a patch may take, shares of the clean range
    move: float = 0.15  # share of steps that move a patch anywhere
    nudge: float = 0.2  # share of steps that move a patch by up to two positions
    seed: int = 0
    restarts: int = 1  # independent searches (seeds seed, seed + 1, ...), the best kept
    sweep_positions: int = 625  # the sweep's grid: at most this many positions (25 x 25)
    sweep_screen: int = 3  # samples every position is tried on ...
    sweep_keep: int = 5  # ... before this many best positions are scored on all
    chunk: int = 1 << 22  # input values per batch of the sweep (bounds memory on large images: 27 at 224 px)
    unlearn_shifts: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # where unlearning pastes the patch
    occlusion_margins: tuple[int, ...] = (1, 0)  # pixels around the found patch the occlusion covers, widest first


@dataclass(frozen=True)
class FourierSettings:
    """The Fourier probe: one low-frequency basis image added to the clean samples at a time."""

    fmax: int = 7  # largest frequency, cycles per image on each axis
    amplitudes: tuple[float, ...] = (0.1,)  # of the clean value range
    phases: tuple[float, ...] = (0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi)
    quantile: float = 0.9  # a class's typical share over the bases, against which its best share is measured
    max_samples: int = 10  # the probe perturbs at most the first this many clean samples
    chunk: int = 1 << 22  # input values per batch of perturbed samples (27 at 224 px; 1 << 24 cost a MobileNetV3 180 MB)
    unlearn_bases: int = 8  # with a verdict on this probe, unlearning uses the target's best this many bases
    phase_steps: int = 5  # the narrow notch refines the phase over this many steps within +-pi/4


@dataclass(frozen=True)
class GuardSettings:
    """The fidelity guard: augmented copies of the clean samples and the ladders it searches."""

    batch: int = 256  # guard samples per run
    augmented_per_sample: int = 15
    max_guard_samples: int = 2000
    # and at most this many input values (128 MB of float32): at 224 px, 15 copies of 100 samples held 960 MB; this
    # keeps 15 copies of 10 such samples, one of 100 and none of 1000 (at 28 or 32 px max_guard_samples binds first)
    max_guard_values: int = 1 << 25
    block: int = 8  # ranked channels tried together when zeroing
    patience: int = 4  # consecutive fully rejected blocks that end the zeroing walk
    bound_factors: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)  # x each channel's clean maximum
    position_steps: tuple[tuple[int, float], ...] = ((1, 0.25), (2, 0.25), (3, 0.25), (1, 0.5), (2, 0.5), (3, 0.5))  # (radius, floor)
    input_radii: tuple[int, ...] = (0, 1, 2)  # input clamps: clean range within this many positions
    half_slack: float = 3.0  # a cross-fit half's fidelity slack relative to the whole


@dataclass(frozen=True)
class UnlearnSettings:
    """Head unlearning: refit the suspected target's row of a dense head."""

    weights: tuple[float, ...] = (1.0, 0.3, 0.1)  # of the stand-ins for triggered inputs, strongest first
    penalty: float = 1e-3  # L2 penalty on the change of the row
    steps: int = 500
    anchor_weight: float = 3.0  # the target's own clean samples weigh at least this many times the stand-ins

    @property
    def ladder(self) -> tuple[tuple[float, float], ...]:
        """(weight, penalty) from the strongest unlearning to the weakest."""
        return tuple((weight, self.penalty) for weight in self.weights)


@dataclass(frozen=True)
class RepairSettings:
    """The fidelity limits every repair step must keep, measured on augmented clean samples."""

    floor: float = 0.95  # agreement with the original's classes
    max_divergence: float = 0.05  # mean KL(original || repaired), nats
    layer_cap: float = 0.3  # at most this share of a layer's channels is zeroed
    anchor_slack: float = 8.0  # a head correction must also keep the limits x this slack on the target's own samples
    filter_gate: float = 0.4  # input filters also run on a verdict score from here up to the threshold ...
    weak_slack: float = 0.5  # ... within this share of the limits' slack
    held_back_seed: int = 1  # the held-back check's augmented copies (the guard fits on seed 0's)
    held_back_z: float = 2.0  # it refuses a repair whose held-back agreement or divergence breaks a limit by z standard errors
    moved_margin: float = 0.0  # a repair moved the shortcut when another class takes more than the original's share + this

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= 1.0:
            raise SettingsError(f"repair.floor must be in (0, 1], got {self.floor}")
        if not 0.0 < self.layer_cap <= 1.0:
            raise SettingsError(f"repair.layer_cap must be in (0, 1], got {self.layer_cap}")
        if not self.max_divergence > 0:
            raise SettingsError(f"repair.max_divergence must be positive, got {self.max_divergence}")


@dataclass(frozen=True)
class GraphSettings:
    """The graph check: backdoors carried by extra nodes rather than trained weights."""

    region_fraction: float = 0.05  # a gate on at most this share of an input's values reads "a few input values"
    thin_depth: int = 1  # a side path through at most this many weighted layers is thin beside a deeper body
    confirm_share: float = 0.5  # pasting a gate's values confirms it when the branch changes this share of classes
    max_rounds: int = 8  # repair removes branches, and what a removal uncovers, at most this many times


@dataclass(frozen=True)
class LimitSettings:
    """Bounds a hostile or runaway input cannot pass silently: each refusal names its limit (exit 2)."""

    model_bytes: int = 8 << 30  # the .onnx file and its external data together
    nodes: int = 1_000_000  # nodes in the graph, control-flow bodies included
    nesting: int = 16  # control-flow bodies inside bodies (the graph's depth; paths are bounded by `nodes`)
    tensor_elements: int = 1 << 32  # elements one initializer may declare
    data_bytes: int = 8 << 30  # the arrays of one samples file, as loaded into memory
    seconds: float = 3600.0  # wall-clock time of one CLI command; 0: no limit


@dataclass(frozen=True)
class RunSettings:
    """How the work is run, not what it decides."""

    notice_seconds: float = 30.0  # forecast searches longer than this are announced before they start
    budget: float = 900.0  # seconds the detectors may take after the capture; one cut short makes the outcome "not assessed"
    evaluate_batch: int = 256  # test samples per run in `evaluate`


@dataclass(frozen=True)
class PreprocessSettings:
    """How a folder of images becomes the model's input (auditor/io/images.py): a description of the data, not a
    tunable of the method; kept here for `--set preprocess.NAME=VALUE`, the config file and the report's record."""

    resize: int = 0  # resize (bilinear) so the shorter side has this many pixels; 0: no resize
    crop: int = 0  # then crop the centre square of this side; 0: no crop
    scale: float = 1 / 255  # pixel values (0..255) x this
    mean: tuple[float, ...] = (0.0,)  # subtracted per channel, in the model's channel order, after `scale` (one value: every channel)
    std: tuple[float, ...] = (1.0,)  # then divided by, per channel
    channel_order: str = "rgb"  # or "bgr" (colour images only)
    layout: str = "auto"  # "nchw" or "nhwc"; auto: from the model input's shape, the axis of size 1 or 3

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            if getattr(self, name) < 0:
                raise SettingsError(f"preprocess.{name} must be 0 (none) or a number of pixels, got {getattr(self, name)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise SettingsError(f"preprocess.scale must be a positive number, got {self.scale}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
                raise SettingsError(f"preprocess.{name} takes 1 or 3 finite numbers (one per channel), got {values}")
        if not all(v > 0 for v in self.std):
            raise SettingsError(f"preprocess.std values must be positive, got {self.std}")
        if self.channel_order not in ("rgb", "bgr"):
            raise SettingsError(f"preprocess.channel_order must be rgb or bgr, got {self.channel_order!r}")
        if self.layout not in ("auto", "nchw", "nhwc"):
            raise SettingsError(f"preprocess.layout must be auto, nchw or nhwc, got {self.layout!r}")


@dataclass(frozen=True)
class Settings:
    """The whole tree. `Settings()` is the shipped method."""

    capture: CaptureSettings = field(default_factory=CaptureSettings)
    channels: ChannelSettings = field(default_factory=ChannelSettings)
    verdict: VerdictSettings = field(default_factory=VerdictSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    patch: PatchSettings = field(default_factory=PatchSettings)
    fourier: FourierSettings = field(default_factory=FourierSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    repair: RepairSettings = field(default_factory=RepairSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    run: RunSettings = field(default_factory=RunSettings)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)

    def override(self, changes: Mapping[str, Any]) -> Settings:
        """A copy with `changes` ({"section.name": value}; a string value is parsed as the field's
        type, so command-line text works). An unknown name or a value of the wrong type is refused."""
        sections: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section, name = _split(key)
            current = getattr(self, section)
            kind = _field_types(type(current))[name]
            sections.setdefault(section, {})[name] = _coerce(key, kind, value)
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **v) for s, v in sections.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {name: value}}, tuples as lists (JSON)."""
        return {f.name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, f.name)).items()} for f in dataclasses.fields(self)}

    def differences(self) -> dict[str, Any]:
        """{"section.name": value} for every setting that differs from the default (what a report records)."""
        mine, shipped = self.to_dict(), Settings().to_dict()
        return {f"{s}.{k}": v for s, values in mine.items() for k, v in values.items() if shipped[s][k] != v}


def parse_overrides(texts: list[str]) -> dict[str, str]:
    """["section.name=value", ...] -> {"section.name": "value"} (values parsed by `Settings.override`)."""
    out = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"setting {text!r}: give SECTION.NAME=VALUE, e.g. verdict.probe_threshold=0.7")
        out[key.strip()] = value.strip()
    return out


def _split(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    if section not in sections:
        raise SettingsError(f"unknown setting {key!r}: sections are {', '.join(sections)}")
    names = _field_types(typing.get_type_hints(Settings)[section])
    if name not in names:
        raise SettingsError(f"unknown setting {key!r}: {section} has {', '.join(names)}")
    return section, name


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """`value` as `kind` (bool, int, float, str or a tuple of them), parsing strings."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        if isinstance(value, str):
            value = _parse_tuple(key, value)
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"setting {key!r} takes a tuple, got {value!r}")
        element = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, element, v) for v in value)
        if len(args) != len(value):
            raise SettingsError(f"setting {key!r} takes {len(args)} values, got {value!r}")
        return tuple(_coerce(key, a, v) for a, v in zip(args, value))
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
    except (TypeError, ValueError):
        raise SettingsError(f"setting {key!r} takes a {kind.__name__}, got {value!r}") from None
    return value


def _parse_tuple(key: str, text: str) -> list:
    """"1,2,3" -> ["1", "2", "3"]; "(1,0.5),(2,0.5)" -> [["1", "0.5"], ["2", "0.5"]]."""
    text = text.strip()
    if "(" in text:
        groups = [g.strip(" ,") for g in text.replace(")", "(").split("(") if g.strip(" ,")]
        return [[v.strip() for v in g.split(",") if v.strip()] for g in groups]
    return [v.strip() for v in text.strip("[]").split(",") if v.strip()]


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
