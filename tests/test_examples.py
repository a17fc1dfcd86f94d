"""CI in one copy-paste: the GitHub Actions workflow (examples/github-actions/auditor.yml) and the pre-commit hook
(.pre-commit-hooks.yaml, examples/pre-commit/.pre-commit-config.yaml) are parsed, and the exact command each runs
is run here on real models with `auditor` from this virtual environment on PATH: the workflow's scan step as its
bash script with its env, pre-commit's as entry + args + file names. Exit codes (backdoored example 1, clean zoo
model 0, not assessed 4 unless allowed) and the SARIF they write (against the official schema) are checked."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_sarif import _binary, validate
from zoo_samples import MANIFEST, ZOO, clean

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "github-actions" / "auditor.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
PRE_COMMIT_CONFIG = ROOT / "examples" / "pre-commit" / ".pre-commit-config.yaml"
EXAMPLE = ROOT / "models" / "example"
CLEAN_ZOO = "cnn_bn-fmnist-clean-s0"
BIN = Path(sys.executable).parent  # the virtual environment's bin: `auditor` is there


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A team's repository as a CI job sees it: models and clean samples under models/, the job's folder its root."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "models").mkdir()
    shutil.copy(EXAMPLE / "model.onnx", root / "models" / "backdoored.onnx")
    shutil.copy(EXAMPLE / "clean.npz", root / "models" / "clean.npz")
    shutil.copy(ZOO / f"{CLEAN_ZOO}.onnx", root / "models" / "clean-model.onnx")
    clean(MANIFEST[CLEAN_ZOO], root / "models").rename(root / "models" / "fashion-clean.npz")
    _binary(root / "models")  # models/binary.onnx and models/binary-clean.npz: a model auditor cannot assess
    return root


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CI": "true"}
    env.pop("AUDITOR_DEBUG", None)
    return env


def _workflow() -> dict:
    document = yaml.safe_load(WORKFLOW.read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads the key `on` as true
    return document


def _step(document: dict, name: str | None = None, uses: str | None = None, id_: str | None = None) -> dict:
    (steps,) = [job["steps"] for job in document["jobs"].values()]
    (found,) = [s for s in steps if (id_ and s.get("id") == id_) or (uses and s.get("uses", "").startswith(uses))
                or (name and s.get("name") == name)]
    return found


def run_scan_step(checkout: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The workflow's scan step exactly as GitHub runs a `shell: bash` step, with the workflow's env and `env` over it."""
    document = _workflow()
    step = _step(document, id_="scan")
    assert step["shell"] == "bash"
    variables = {**{k: str(v) for k, v in document["env"].items()}, **env}
    for name in (checkout / variables["SARIF"], checkout / variables["REPORT"]):
        name.unlink(missing_ok=True)
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=checkout,
                          env=_env(variables), capture_output=True, text=True, timeout=300)
    return done, checkout / variables["SARIF"]


def test_the_workflow_has_what_code_scanning_needs() -> None:
    document = _workflow()
    assert document["permissions"]["security-events"] == "write"
    assert {"push", "pull_request"} <= set(document["on"])
    assert {"MODELS", "DATA", "SARIF", "ALLOW_NOT_ASSESSED"} <= set(document["env"])
    assert _step(document, uses="actions/checkout@")
    assert _step(document, uses="actions/setup-python@")["with"]["python-version"] == "3.11"
    assert "pip install" in _step(document, name="Install auditor")["run"]
    upload = _step(document, uses="github/codeql-action/upload-sarif@v3")
    assert upload["if"].startswith("always()") and upload["with"]["sarif_file"] == "${{ env.SARIF }}"
    scan = _step(document, id_="scan")
    assert "continue-on-error" not in scan  # the job fails on the scan's exit code
    used = set(re.findall(r"\$\{?(\w+)", scan["run"])) - {"status"}
    assert used <= set(document["env"]), f"the scan step reads variables the workflow does not set: {used - set(document['env'])}"


def test_the_workflow_fails_on_a_backdoored_model_and_its_sarif_validates(checkout: Path) -> None:
    done, sarif = run_scan_step(checkout, MODELS="models/backdoored.onnx", DATA="models/clean.npz", LIMIT="10")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    document = validate(sarif.read_text())
    (verdict,) = [r for r in document["runs"][0]["results"] if r["ruleId"] == "AUD001"]
    assert verdict["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "models/backdoored.onnx",
                                                                               "uriBaseId": "%SRCROOT%", "index": 0}


def test_the_workflow_passes_a_clean_model(checkout: Path) -> None:
    done, sarif = run_scan_step(checkout, MODELS="models/clean-model.onnx", DATA="models/fashion-clean.npz", LIMIT="10")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    document = validate(sarif.read_text())
    assert document["runs"][0]["results"] == []
    assert document["runs"][0]["artifacts"][0]["properties"]["outcome"] == "clean"


def test_the_workflow_fails_when_a_model_is_not_assessed_unless_allowed(checkout: Path) -> None:
    done, sarif = run_scan_step(checkout, MODELS="models/binary.onnx", DATA="models/binary-clean.npz")
    assert done.returncode == 4
    assert [r["ruleId"] for r in validate(sarif.read_text())["runs"][0]["results"]] == ["AUD004"]
    allowed, _ = run_scan_step(checkout, MODELS="models/binary.onnx", DATA="models/binary-clean.npz", ALLOW_NOT_ASSESSED="true")
    assert allowed.returncode == 0 and "::warning::auditor could not assess a model" in allowed.stdout


def test_the_workflow_scans_several_models_and_fails_on_the_worst(checkout: Path) -> None:
    done, sarif = run_scan_step(checkout, MODELS="models/clean-model.onnx models/backdoored.onnx", DATA="models/clean.npz",
                                LIMIT="10")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    document = validate(sarif.read_text())
    assert [a["location"]["uri"] for a in document["runs"][0]["artifacts"]] == ["models/clean-model.onnx", "models/backdoored.onnx"]


def _hook() -> dict:
    hooks = yaml.safe_load(HOOKS.read_text())
    (hook,) = [h for h in hooks if h["id"] == "auditor-scan"]
    return hook


def pre_commit_command(files: list[str], data: str) -> list[str]:
    """What pre-commit runs for the team's config: the hook's entry, the config's args (their data path), the files."""
    hook = _hook()
    (repo,) = yaml.safe_load(PRE_COMMIT_CONFIG.read_text())["repos"]
    (configured,) = repo["hooks"]
    assert configured["id"] == hook["id"]
    args = [data if arg == "path/to/clean.npz" else str(arg) for arg in configured["args"]]
    assert data in args, "the example config passes its clean samples with --data"
    staged = [f for f in files if re.search(hook["files"], f)]
    return [*shlex.split(hook["entry"]), *args, *staged]


def test_the_pre_commit_hook_is_what_the_config_uses() -> None:
    hook = _hook()
    assert hook["entry"] == "auditor scan" and hook["language"] == "python" and hook["pass_filenames"] is True
    assert re.search(hook["files"], "models/a.onnx") and not re.search(hook["files"], "models/a.onnx.json")


@pytest.mark.parametrize(("files", "data", "code"), [
    (["models/backdoored.onnx", "README.md"], "models/clean.npz", 1),
    (["models/clean-model.onnx"], "models/fashion-clean.npz", 0),
    (["models/clean-model.onnx", "models/backdoored.onnx"], "models/clean.npz", 1),
])
def test_the_pre_commit_hook_refuses_a_backdoored_model_and_passes_a_clean_one(checkout: Path, files, data, code) -> None:
    command = pre_commit_command(files, data)
    assert "README.md" not in command
    done = subprocess.run(command, cwd=checkout, env=_env({}), capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_workflow_stops_on_bad_input_and_writes_no_sarif(checkout: Path) -> None:
    done, sarif = run_scan_step(checkout, MODELS="models/missing.onnx", DATA="models/clean.npz")
    assert done.returncode == 2 and "missing.onnx" in done.stderr
    assert not sarif.exists()  # the upload step's hashFiles() condition skips the upload then
