"""Regenerate the whole ONNX model zoo under models/zoo/ and merge the manifests.

    .venv/bin/python models/make_zoo.py [--force] [--skip-torch] [--skip-keras] [--skip-sklearn]
                                        [--merge-only]

1. models/zoo_torch.py   with this interpreter (PyTorch models);
2. models/zoo_keras.py   with $ZOO_TF_PYTHON (default `python`), if the file exists;
3. models/zoo_sklearn.py with $ZOO_SKLEARN_PYTHON (default: $ZOO_TF_PYTHON, then `python`),
   if the file exists;
4. merges models/zoo/manifest-*.json into models/zoo/manifest.json (sorted by name).

Each script skips models whose .onnx already exists unless --force, so an
interrupted run resumes.  A failing step is reported and the remaining steps
still run; the exit status is non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.join(HERE, "zoo")


def run_step(label, python, script, extra):
    path = os.path.join(HERE, script)
    if not os.path.exists(path):
        print(f"== {label}: {script} not found, skipped")
        return True
    cmd = [python, path] + extra
    print(f"== {label}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
    except OSError as e:
        print(f"== {label}: could not start {python!r}: {e}")
        return False
    print(f"== {label}: exit {rc} after {time.time() - t0:.0f}s", flush=True)
    return rc == 0


def merge_manifests(zoo=ZOO):
    entries = {}
    for path in sorted(glob.glob(os.path.join(zoo, "manifest-*.json"))):
        with open(path) as f:
            part = json.load(f)
        for e in part:
            if e["name"] in entries:
                raise SystemExit(f"duplicate model name {e['name']!r} in {path}")
            if not os.path.exists(os.path.join(zoo, e["file"])):
                print(f"warning: {e['name']}: {e['file']} missing, left out of manifest.json")
                continue
            entries[e["name"]] = e
        print(f"merged {len(part)} entries from {os.path.basename(path)}")
    merged = [entries[k] for k in sorted(entries)]
    out = os.path.join(zoo, "manifest.json")
    with open(out, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(merged)} models")
    return merged


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="retrain every model")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-keras", action="store_true")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--merge-only", action="store_true", help="only merge the existing manifests")
    args = ap.parse_args(argv)
    extra = ["--force"] if args.force else []
    tf_python = os.environ.get("ZOO_TF_PYTHON", "python")
    sk_python = os.environ.get("ZOO_SKLEARN_PYTHON", tf_python)
    ok = True
    if not args.merge_only:
        if not args.skip_torch:
            ok &= run_step("torch", sys.executable, "zoo_torch.py", extra)
        if not args.skip_keras:
            ok &= run_step("keras", tf_python, "zoo_keras.py", extra)
        if not args.skip_sklearn:
            ok &= run_step("sklearn", sk_python, "zoo_sklearn.py", extra)
    merge_manifests()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
