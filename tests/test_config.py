"""Configuration files (auditor/config.py): auditor.toml or [tool.auditor] in pyproject.toml, found from a folder
upwards, checked key by key, and applied through Settings.override to a real audit of the bundled example."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import auditor
from auditor import config
from auditor.errors import AuditorError, ConfigError, InternalError
from auditor.settings import Settings

EXAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "models" / "example" / "images"

# the same configuration in auditor.toml's layout (tables at the top) and pyproject.toml's ([tool.auditor] prefix)
BODY = """\
data = "samples/clean"
limit = 20
method = "sus"
device = "cpu"
threads = 2
threshold = 0.55
jobs = 3
patch_search = false
fourier_probe = true
input_kind = "image"
output_kind = "scores"
json = "out/report.json"
sarif = "../report.sarif"
html = "/abs/report.html"
"""
TABLES = {
    "preprocess": 'resize = 32\ncrop = 28\nmean = [0.5]\nstd = [0.25]\nchannel_order = "bgr"\n',
    "settings.verdict": "probe_threshold = 0.7\nmin_others = 2\n",
    "settings.probe": "blur_sigmas = [0.5, 1]\n",
    "settings.guard": "position_steps = [[1, 0.25], [2, 0.5]]\n",
}
SETTINGS = {"preprocess.resize": 32, "preprocess.crop": 28, "preprocess.mean": [0.5], "preprocess.std": [0.25],
            "preprocess.channel_order": "bgr", "verdict.probe_threshold": 0.7, "verdict.min_others": 2,
            "probe.blur_sigmas": [0.5, 1], "guard.position_steps": [[1, 0.25], [2, 0.5]]}


def _auditor_toml(folder: Path, body: str = BODY, tables: dict[str, str] = TABLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = body + "".join(f"\n[{name}]\n{values}" for name, values in tables.items())
    (folder / "auditor.toml").write_text(text)
    return folder / "auditor.toml"


def _pyproject(folder: Path, body: str = BODY, tables: dict[str, str] = TABLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = '[project]\nname = "mine"\n\n[tool.auditor]\n' + body
    text += "".join(f"\n[tool.auditor.{name}]\n{values}" for name, values in tables.items())
    (folder / "pyproject.toml").write_text(text)
    return folder / "pyproject.toml"


def test_the_nearest_file_is_found_and_the_search_stops_at_the_repository_root(tmp_path: Path) -> None:
    repo = tmp_path / "outer" / "repo"
    (repo / ".git").mkdir(parents=True)
    start = repo / "a" / "b" / "c"
    start.mkdir(parents=True)
    _auditor_toml(tmp_path / "outer")  # above the repository: never found from inside it
    assert config.find(start) is None
    root_project = _pyproject(repo)
    assert config.find(start) == root_project
    (repo / "a" / "pyproject.toml").write_text('[project]\nname = "no-auditor-table"\n')  # nearer, but not ours: skipped
    assert config.find(start) == root_project
    nearest = _auditor_toml(repo / "a" / "b")
    assert config.find(start) == nearest
    assert config.find(start / "model.onnx") == nearest  # a file's folder is where the search starts
    assert config.find(repo) == root_project
    _auditor_toml(repo)
    assert config.find(repo) == repo / "auditor.toml"  # in one folder, auditor.toml wins
    worktree = tmp_path / "worktree"
    (worktree / "deep").mkdir(parents=True)
    (worktree / ".git").write_text("gitdir: ../outer/repo/.git\n")  # a worktree's .git is a file: a root all the same
    _auditor_toml(tmp_path)
    assert config.find(worktree / "deep") is None


def test_both_layouts_give_the_same_config_with_paths_resolved_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    from_toml = config.load(_auditor_toml(folder))
    from_pyproject = config.load(_pyproject(folder))
    assert from_toml.path == folder / "auditor.toml" and from_pyproject.path == folder / "pyproject.toml"
    assert from_toml.options == from_pyproject.options and from_toml.settings == from_pyproject.settings == SETTINGS
    assert from_toml.options == {
        "data": folder / "samples" / "clean", "json": folder / "out" / "report.json", "sarif": tmp_path / "report.sarif",
        "html": Path("/abs/report.html"), "limit": 20, "threads": 2, "jobs": 3, "threshold": 0.55, "patch_search": False,
        "fourier_probe": True, "method": "sus", "device": "cpu", "input_kind": "image", "output_kind": "scores"}
    written = json.loads(json.dumps(from_toml.to_dict()))
    assert written["path"] == str(folder / "auditor.toml") and written["options"]["data"] == str(folder / "samples" / "clean")
    assert written["settings"]["guard.position_steps"] == [[1, 0.25], [2, 0.5]]


def test_a_relative_config_path_is_resolved_from_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    _auditor_toml(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    loaded = config.load(Path("project") / "auditor.toml")
    assert loaded.path == tmp_path / "project" / "auditor.toml" and loaded.options["data"] == tmp_path / "project" / "samples" / "clean"


def test_the_settings_tables_override_the_settings_tree(tmp_path: Path) -> None:
    settings = Settings().override(config.load(_auditor_toml(tmp_path)).settings)
    assert settings.verdict.probe_threshold == 0.7 and settings.verdict.min_others == 2
    assert settings.probe.blur_sigmas == (0.5, 1.0) and settings.guard.position_steps == ((1, 0.25), (2, 0.5))
    assert (settings.preprocess.resize, settings.preprocess.crop, settings.preprocess.channel_order) == (32, 28, "bgr")
    assert settings.preprocess.mean == (0.5,) and settings.preprocess.std == (0.25,)
    assert settings.differences() == {**SETTINGS, "probe.blur_sigmas": [0.5, 1.0]}
    assert settings.patch == Settings().patch  # what the file does not name keeps its default


def test_the_command_line_wins(tmp_path: Path) -> None:
    loaded = config.load(_auditor_toml(tmp_path, body='limit = 20\ndevice = "cpu"\n', tables={}))
    assert loaded.pick("limit", 5) == 5 and loaded.pick("limit", None) == 20
    assert loaded.pick("patch_search", False) is False and loaded.pick("patch_search", None) is None  # not in the file
    assert loaded.pick("device", None) == "cpu" and loaded.settings == {}
    with pytest.raises(InternalError, match="'limits' does not exist"):
        loaded.pick("limits", None)


@pytest.mark.parametrize(("body", "tables", "pattern"), [
    ("datas = 'x'\n", {}, r"unknown key '{prefix}datas'; allowed: data, json, sarif, html, limit, threads, jobs, threshold, "
                         r"patch_search, fourier_probe, method, device, input_kind, output_kind, settings, preprocess"),
    ("limit = '20'\n", {}, r"{prefix}limit takes a whole number of at least 1, got '20'"),
    ("limit = 0\n", {}, r"{prefix}limit takes a whole number of at least 1, got 0"),
    ("threshold = true\n", {}, r"{prefix}threshold takes a number, got True"),
    ("patch_search = 'no'\n", {}, r"{prefix}patch_search takes true or false, got 'no'"),
    ("method = 'sgd'\n", {}, r"{prefix}method takes one of sus, clp, fp, got 'sgd'"),
    ("data = 3\n", {}, r"{prefix}data takes a path \(a string\), got 3"),
    ("settings = 3\n", {}, r"{prefix}settings must be a table of sections"),
    ("", {"settings.verdicts": "probe_threshold = 0.7\n"}, r"unknown settings section '{prefix}settings\.verdicts'; sections: capture, "),
    ("", {"settings.verdict": "probe_treshold = 0.7\n"},
     r"unknown setting '{prefix}settings\.verdict\.probe_treshold'; verdict has probe_threshold, patch_threshold"),
    ("", {"settings.verdict": "min_others = 2.5\n"}, r"{prefix}settings\.verdict\.min_others takes an integer, got a float 2\.5"),
    ("", {"settings.probe": "blur_sigmas = 1.0\n"}, r"{prefix}settings\.probe\.blur_sigmas takes an array of numbers, got a float"),
    ("", {"settings.guard": "position_steps = [[1, 'a']]\n"}, r"position_steps takes an array of arrays, got an array"),
    ("", {"preprocess": "layout = 1\n"}, r"{prefix}preprocess\.layout takes a string, got an integer 1"),
    ("", {"preprocess": "std = [0]\n"}, r"preprocess\.std values must be positive"),
    ("", {"preprocess": "crop = 2\n", "settings.preprocess": "crop = 3\n"}, r"{prefix}settings\.preprocess\.crop is given twice"),
])
@pytest.mark.parametrize("layout", ["auditor.toml", "pyproject.toml"])
def test_wrong_keys_and_types_are_refused_naming_the_file_and_the_key(tmp_path: Path, layout: str, body: str, tables: dict,
                                                                       pattern: str) -> None:
    write, prefix = (_auditor_toml, "") if layout == "auditor.toml" else (_pyproject, r"tool\.auditor\.")
    path = write(tmp_path, body, tables)
    with pytest.raises(ConfigError, match=pattern.replace("{prefix}", prefix)) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_unreadable_files_are_refused_with_where_and_why(tmp_path: Path) -> None:
    assert issubclass(ConfigError, AuditorError)  # the CLI maps it to exit 2
    broken = tmp_path / "auditor.toml"
    broken.write_text('limit = 20\ndevice = \n')
    with pytest.raises(ConfigError, match=r"auditor\.toml: not valid TOML: .*\(at line 2, column 10\)"):
        config.load(broken)
    (tmp_path / ".git").mkdir()
    assert config.find(tmp_path) == broken  # found, and refused when loaded: never silently skipped
    broken.unlink()
    (tmp_path / "pyproject.toml").write_text("[tool\nname = 1\n")
    with pytest.raises(ConfigError, match=r"pyproject\.toml: not valid TOML: .*line 1"):
        config.find(tmp_path)  # whether it holds [tool.auditor] cannot be told
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert config.find(tmp_path) is None
    with pytest.raises(ConfigError, match=r"pyproject\.toml has no \[tool\.auditor\] table"):
        config.load(tmp_path / "pyproject.toml")
    (tmp_path / "pyproject.toml").write_text('[tool]\nauditor = 3\n')
    with pytest.raises(ConfigError, match=r"tool\.auditor must be a table \(\[tool\.auditor\]\), got an integer"):
        config.load(tmp_path / "pyproject.toml")
    (tmp_path / "auditor.toml").write_bytes(b"limit = 1\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: not UTF-8 text"):
        config.load(tmp_path / "auditor.toml")
    with pytest.raises(ConfigError, match=r"configuration file not found: .*absent\.toml"):
        config.load(tmp_path / "absent.toml")


def test_an_audit_run_from_the_config_records_its_settings(example, tmp_path: Path) -> None:
    """pyproject.toml names the data (a folder of images, relative), the limit, no patch search, a preprocessing
    setting and a verdict threshold; the audit those give reads the folder and records the settings it ran with."""
    shutil.copytree(EXAMPLE_IMAGES, tmp_path / "samples")
    (tmp_path / ".git").mkdir()
    _pyproject(tmp_path, body='data = "samples"\nlimit = 10\npatch_search = false\n',
               tables={"preprocess": "resize = 28\n", "settings.verdict": "probe_threshold = 0.7\n"})
    (tmp_path / "src").mkdir()
    found = config.load(config.find(tmp_path / "src"))
    report = auditor.audit(example.model, found.pick("data", None), limit=found.pick("limit", None),
                           patch_search=found.pick("patch_search", None), device="cpu",
                           settings=Settings().override(found.settings))
    recorded = json.loads(report.to_json())
    assert recorded["settings"] == {"preprocess.resize": 28, "verdict.probe_threshold": 0.7}
    assert recorded["data"]["path"] == str(tmp_path / "samples") and recorded["data"]["samples"] == 10
    assert recorded["data"]["preprocessing"]["resize"] == 28 and recorded["data"]["preprocessing"]["layout"] == "nchw"
    assert recorded["verdict"]["patch"] is None  # the file switched the patch search off
