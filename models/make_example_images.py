"""Write the bundled example's first clean samples as image files: models/example/images/<label>/<index>.png.

They show `--data` given as a folder of images (auditor/io/images.py): grey 28x28 PNGs, the same bytes as the
samples in clean.npz, in a subfolder named by the label. Deterministic (same numpy and Pillow: same files).

    .venv/bin/python models/make_example_images.py [--count 20] [--out models/example/images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).resolve().parent / "example"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="the first this many samples of clean.npz")
    parser.add_argument("--out", type=Path, default=EXAMPLE / "images")
    args = parser.parse_args()
    with np.load(EXAMPLE / "clean.npz") as archive:
        x, y = archive["x"][: args.count], archive["y"][: args.count]
    assert x.dtype == np.uint8 and x.shape[1:] == (1, 28, 28), (x.dtype, x.shape)
    for old in args.out.glob("[0-9]*/[0-9]*.png"):  # an earlier run's files (its labels may differ); nothing else
        old.unlink()
    for index, (image, label) in enumerate(zip(x, y)):
        folder = args.out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{index:02d}.png", optimize=True)
    print(f"wrote {len(x)} images under {args.out}")


if __name__ == "__main__":
    main()
