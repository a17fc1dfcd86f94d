"""The CLI with a configuration file and image folders: the file found from the current folder, the command line
winning over it, the effective settings and the preprocessing recorded in the report, a bad file refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builders import run_cli, tree


def _project(example, tmp_path: Path, config: str, name: str = "auditor.toml") -> Path:
    """A project folder holding the example model, its image folder and `config` (relative paths inside it)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".git").mkdir()  # the repository's root: the search for a config file stops here
    shutil.copy(example.model, project / "model.onnx")
    shutil.copytree(Path(example.clean).parent / "images", project / "images")
    (project / name).write_text(config)
    return project


def test_the_config_file_gives_data_and_settings_and_the_command_line_wins(example, tmp_path: Path) -> None:
    project = _project(example, tmp_path, 'data = "images"\nlimit = 12\njson = "out/report.json"\n'
                                          "[settings.verdict]\nprobe_threshold = 0.7\n")
    (project / "out").mkdir()
    result = run_cli("scan", "model.onnx", "--limit", "10", "--resize", "28", cwd=project)
    assert result.returncode == 1, result.stderr
    assert f"config: {project / 'auditor.toml'}" in result.stdout
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["data"]["samples"] == 10  # --limit 10 beat the file's 12
    assert report["settings"] == {"preprocess.resize": 28, "verdict.probe_threshold": 0.7}
    assert report["verdict"]["threshold"] == 0.7
    assert report["config"]["path"] == str(project / "auditor.toml") and report["config"]["options"]["limit"] == 12
    assert report["data"]["preprocessing"]["resize"] == 28 and report["data"]["preprocessing"]["files"] == 10


def test_pyproject_tool_auditor_is_read_when_no_auditor_toml_is_there(example, tmp_path: Path) -> None:
    project = _project(example, tmp_path, '[project]\nname = "team-model"\n[tool.auditor]\ndata = "images"\nlimit = 10\n'
                                          "patch_search = false\n", name="pyproject.toml")
    result = run_cli("scan", "model.onnx", "--json", "r.json", cwd=project)
    report = json.loads((project / "r.json").read_text())
    assert report["verdict"]["patch"] is None  # the file switched the patch search off
    assert result.returncode == (1 if report["verdict"]["suspicious"] else 0)
    assert report["config"]["options"] == {"data": str(project / "images"), "limit": 10, "patch_search": False}


def test_a_bad_config_file_is_refused_in_one_line_and_nothing_is_written(example, tmp_path: Path) -> None:
    project = _project(example, tmp_path, 'data = "images"\nthreshhold = 0.5\n')
    before = tree(project)
    result = run_cli("scan", "model.onnx", "--json", "r.json", cwd=project)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "threshhold" in lines[0] and "auditor.toml" in lines[0]
    assert tree(project) == before


def test_without_data_anywhere_the_scan_says_where_to_give_it(example, tmp_path: Path) -> None:
    folder = tmp_path / "alone"
    folder.mkdir()
    (folder / ".git").mkdir()
    result = run_cli("scan", example.model, cwd=folder)
    assert result.returncode == 2 and "--data" in result.stderr and "auditor.toml" in result.stderr


def test_repair_takes_its_data_and_report_path_from_the_config_file(example, tmp_path: Path) -> None:
    project = _project(example, tmp_path, 'data = "images"\nlimit = 10\njson = "repair.json"\n')
    result = run_cli("repair", "model.onnx", "-o", "repaired.onnx", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads((project / "repair.json").read_text())
    assert report["command"] == "repair" and report["data"]["samples"] == 10
    assert report["config"]["options"]["json"] == str(project / "repair.json")
    assert report["repair"]["output"] == "repaired.onnx" and (project / "repaired.onnx").exists()
