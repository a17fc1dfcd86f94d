"""Clean samples as a folder of image files, turned into the model's input by the model's own preprocessing.

People keep their samples as PNG/JPEG files, not as arrays. A folder is read recursively (`.png .jpg .jpeg .bmp`, any
case; hidden files and folders skipped, links to folders not followed), sorted by relative path so that every run
feeds the same samples in the same order, and each image goes through, in order: decode (Pillow; EXIF orientation is
not applied, as torchvision's loader does not), the model's channel count (grey "L" for 1 channel, "RGB" for 3),
resize (shorter side), centre crop, resize to the model's fixed height and width when the result still differs
(recorded), to numbers, channel order, scale, mean/std, layout. The arithmetic runs in float64 and is rounded once into
the model's float type, so 8-bit images with the default scale give exactly what an .npz of the same bytes gives
(uint8 / 255). When every image sits in a subfolder named by an integer, that is its label.

Pillow is an optional extra (`pip install 'auditor[images]'`), imported only when a folder is read.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import DataError, SettingsError
from auditor.io.data import InputSpec, Samples, _conform, _labels
from auditor.settings import PreprocessSettings

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_LABEL_FOLDER = re.compile(r"[0-9]{1,9}")  # at most 9 digits: a plausible class index, never an int64 overflow
_HIGH_DEPTH = ("I", "F")  # Pillow's 32-bit integer and float modes; "I;16..." are 16-bit


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (recursively, hidden ones skipped), sorted by their relative path."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in relative.parts) and path.is_file():
            found.append(relative)
    return [folder / relative for relative in sorted(found, key=lambda r: r.as_posix())]


def load(folder: Path, specs: list[InputSpec], limit: int | None, max_bytes: int, preprocess: PreprocessSettings) -> Samples:
    """Samples for the model's one image input from the image files under `folder`, at most `limit` (the first in
    sorted order); their float arrays together may hold at most `max_bytes` (limits.data_bytes)."""
    if limit is not None and limit < 1:
        raise DataError(f"the sample limit must be at least 1, got {limit}")
    files = image_files(folder)
    if not files:
        raise DataError(f"data path is a directory holding no image files ({' '.join(SUFFIXES)}): {folder}; "
                        "give a folder of images or an .npz / .npy file")
    if len(specs) != 1:
        raise DataError(f"data path is a directory of images, but the model has {len(specs)} inputs "
                        f"({', '.join(s.name for s in specs)}): give an .npz with one array per input")
    spec = specs[0]
    layout, channels, size = _geometry(spec, preprocess.layout)
    _check_per_channel(preprocess, channels)
    labels = _folder_labels(folder, files)
    if limit is not None:
        if limit > len(files):
            raise DataError(f"{folder.name} holds {len(files)} images, fewer than the limit of {limit}")
        files = files[:limit]
        labels = None if labels is None else labels[:limit]
    image = _pillow()
    inputs, resized = None, False
    for number, path in enumerate(files):
        pixels, fitted = _read(image, path, path.relative_to(folder).as_posix(), channels, size, preprocess, max_bytes)
        resized |= fitted
        sample = _to_model(pixels, layout, preprocess)
        if inputs is None:
            needed = len(files) * sample.size * spec.dtype.itemsize
            if needed > max_bytes:
                raise DataError(f"{folder.name}: {len(files)} images of shape {sample.shape} make {needed:,} bytes of samples, "
                                f"over limits.data_bytes ({max_bytes:,}); give fewer (--limit), or raise it with --set limits.data_bytes=N")
            inputs = np.empty((len(files), *sample.shape), dtype=spec.dtype)
        elif sample.shape != inputs.shape[1:]:
            raise DataError(f"{path.relative_to(folder).as_posix()} gives a sample of shape {sample.shape} after preprocessing, "
                            f"{files[0].relative_to(folder).as_posix()} one of {inputs.shape[1:]}: set preprocess.resize and "
                            "preprocess.crop so that every image has one size")
        with np.errstate(over="ignore"):
            inputs[number] = sample
    assert inputs is not None  # files is not empty
    array = _conform(inputs, spec, folder.name)
    record: dict[str, Any] = {
        "files": len(files), "resize": preprocess.resize, "crop": preprocess.crop, "scale": preprocess.scale,
        "mean": list(preprocess.mean), "std": list(preprocess.std), "channel_order": preprocess.channel_order, "layout": layout,
        "resized_to_model": list(size) if resized else None,
    }
    return Samples({spec.name: array}, None if labels is None else _labels(labels, len(labels), len(files), folder.name), str(folder), record)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading a folder of images needs Pillow: pip install 'auditor[images]'") from None
    return Image


def _geometry(spec: InputSpec, layout: str) -> tuple[str, int, tuple[int, int] | None]:
    """How the input takes an image: its layout (nchw, nhwc; nhw for [N, H, W] grey; flat for [N, H * W] grey), its
    channel count, and the (height, width) it fixes, if it fixes both."""
    if spec.dtype.kind != "f":
        raise DataError(f"model input {spec.name!r} takes {spec.dtype}; a folder of images feeds float inputs only: "
                        "give the input's arrays in an .npz")
    shape = spec.shape
    shown = "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    if shape is None or len(shape) not in (2, 3, 4):
        raise DataError(f"model input {spec.name!r} has shape {shown}, not an image's [N, C, H, W], [N, H, W, C], [N, H, W] "
                        "or [N, H * W]: give its arrays in an .npz")
    if len(shape) < 4:
        if layout != "auto":
            raise SettingsError(f"preprocess.layout {layout} needs a 4-D input; {spec.name!r} has shape {shown}: leave it at auto")
        if len(shape) == 3:
            height, width = shape[1], shape[2]
            return "nhw", 1, (height, width) if height and width else None
        side = math.isqrt(shape[1]) if shape[1] else 0
        if not side or side * side != shape[1]:
            raise DataError(f"model input {spec.name!r} has shape {shown}: a flat input takes a square grey image, "
                            "so its size must be fixed and a square number; give its arrays in an .npz")
        return "flat", 1, (side, side)
    if layout == "auto":
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if first == last:
            raise DataError(f"cannot tell the layout of model input {spec.name!r} of shape {shown}: "
                            "set preprocess.layout to nchw or nhwc")
        layout = "nchw" if first else "nhwc"
    channels, height, width = (shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[3], shape[1], shape[2])
    if channels not in (1, 3):
        raise DataError(f"model input {spec.name!r} of shape {shown}, read as {layout}, has {channels or 'unfixed'} channels; "
                        "images give 1 (grey) or 3 (colour): check preprocess.layout, or give its arrays in an .npz")
    return layout, channels, (height, width) if height and width else None


def _check_per_channel(preprocess: PreprocessSettings, channels: int) -> None:
    for name in ("mean", "std"):
        values = getattr(preprocess, name)
        if len(values) not in (1, channels):
            raise SettingsError(f"preprocess.{name} has {len(values)} values, the model's input has {channels} channel"
                                f"{'s' if channels > 1 else ''}: give 1 or {channels}")


def _folder_labels(folder: Path, files: list[Path]) -> np.ndarray | None:
    """Each image's class from the top subfolder it sits in, when every image sits in one named by an integer."""
    tops = [path.relative_to(folder).parts for path in files]
    if not all(len(parts) > 1 and _LABEL_FOLDER.fullmatch(parts[0]) for parts in tops):
        return None
    return np.array([int(parts[0]) for parts in tops], dtype=np.int64)


def _read(image, path: Path, name: str, channels: int, size: tuple[int, int] | None, preprocess: PreprocessSettings,
          max_bytes: int) -> tuple[np.ndarray, bool]:
    """One file decoded, converted, resized and cropped: float64 [H, W, C] pixel values, and whether it had to be
    resized to the model's fixed size."""
    fitted = False
    try:
        with image.open(path) as opened:
            width, height = opened.size
            if width * height * channels * 8 > max_bytes:
                raise DataError(f"{name} is {width}x{height} pixels, over limits.data_bytes ({max_bytes:,}) once decoded; "
                                "give smaller images, or raise it with --set limits.data_bytes=N")
            if opened.mode in _HIGH_DEPTH or opened.mode.startswith("I;16"):
                raise DataError(f"{name} has {opened.mode} pixels (16-bit or more); save it with 8 bits per channel")
            picture = opened.convert("L" if channels == 1 else "RGB")
        if preprocess.resize:
            width, height = picture.size
            short = preprocess.resize
            # the shorter side becomes `resize`, the longer one keeps the aspect, truncated (as torchvision's Resize)
            target = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
            if target != picture.size:
                picture = picture.resize(target, image.Resampling.BILINEAR)
        if preprocess.crop:
            width, height = picture.size
            side = preprocess.crop
            if side > width or side > height:
                raise DataError(f"{name}: preprocess.crop {side} is larger than the image ({width}x{height} pixels"
                                f"{' after the resize' if preprocess.resize else ''})")
            left, top = round((width - side) / 2), round((height - side) / 2)  # as torchvision's CenterCrop
            picture = picture.crop((left, top, left + side, top + side))
        if size is not None and picture.size != (size[1], size[0]):
            picture = picture.resize((size[1], size[0]), image.Resampling.BILINEAR)
            fitted = True
        pixels = np.asarray(picture, dtype=np.float64)
    except DataError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"cannot read {name} as an image ({text})") from exc
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), fitted


def _to_model(pixels: np.ndarray, layout: str, preprocess: PreprocessSettings) -> np.ndarray:
    """[H, W, C] pixel values -> one sample in the model's layout: channel order, scale, mean/std, axes."""
    if preprocess.channel_order == "bgr" and pixels.shape[2] == 3:
        pixels = pixels[:, :, ::-1]
    values = (pixels * preprocess.scale - np.asarray(preprocess.mean)) / np.asarray(preprocess.std)
    if layout == "nchw":
        return values.transpose(2, 0, 1)
    if layout == "nhwc":
        return values
    if layout == "nhw":
        return values[:, :, 0]
    return values.reshape(-1)  # flat: row-major, as a [H, W] image flattened
