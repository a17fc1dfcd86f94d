"""A project's standing choices for auditor, in a file beside its code: auditor.toml, or [tool.auditor] in pyproject.toml.

A release pipeline runs the same audit on every commit; the data folder, the method, the thresholds, the budgets and
the preprocessing belong in the repository, not retyped in each CI job. The file holds command-line option values
and setting overrides, in one of two layouts that mean the same:

    # auditor.toml                          # pyproject.toml
    data = "samples/clean"                  [tool.auditor]
    limit = 20                              data = "samples/clean"
    [preprocess]                            limit = 20
    resize = 256                            [tool.auditor.preprocess]
    crop = 224                              resize = 256
    [settings.verdict]                      crop = 224
    probe_threshold = 0.7                   [tool.auditor.settings.verdict]
                                            probe_threshold = 0.7

`[preprocess]` is short for `[settings.preprocess]`. Relative paths are resolved against the file's folder. Every key
and type is checked on load: a wrong one is a `ConfigError` naming the file, the key and what is allowed. The
command line wins over the file (`Config.pick`); `--set` overrides win over its `settings`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.detect.channels import METHODS
from auditor.errors import ConfigError, InternalError, SettingsError
from auditor.graph.kinds import INPUT_KINDS, OUTPUT_KINDS
from auditor.settings import Settings

FILE_NAME = "auditor.toml"
PYPROJECT = "pyproject.toml"
PATH_OPTIONS = ("data", "json", "sarif", "html")
COUNT_OPTIONS = ("limit", "threads", "jobs")  # whole numbers of at least 1
SWITCH_OPTIONS = ("patch_search", "fourier_probe")
CHOICE_OPTIONS: dict[str, tuple[str, ...]] = {
    "method": tuple(METHODS), "device": ("auto", "cpu", "cuda"), "input_kind": INPUT_KINDS, "output_kind": OUTPUT_KINDS,
}
OPTIONS = (*PATH_OPTIONS, *COUNT_OPTIONS, "threshold", *SWITCH_OPTIONS, *CHOICE_OPTIONS)
TABLES = ("settings", "preprocess")


@dataclass(frozen=True)
class Config:
    """One configuration file, checked: command-line option values and `Settings.override` changes."""

    path: Path
    options: dict[str, Any]  # option name (as in OPTIONS) -> value; paths absolute
    settings: dict[str, Any]  # {"section.name": value}, for Settings().override

    def pick(self, name: str, given: Any) -> Any:
        """The command line's value when it gave one (not None), else this file's, else None."""
        if name not in OPTIONS:
            raise InternalError(f"config option {name!r} does not exist (options: {', '.join(OPTIONS)})")
        return given if given is not None else self.options.get(name)

    def to_dict(self) -> dict[str, Any]:
        """{path, options, settings} as JSON values (for the report)."""
        options = {k: str(v) if isinstance(v, Path) else v for k, v in sorted(self.options.items())}
        return {"path": str(self.path), "options": options, "settings": dict(sorted(self.settings.items()))}


def find(start: Path) -> Path | None:
    """The nearest auditor.toml, or pyproject.toml holding a [tool.auditor] table, in `start` or a folder above it; the
    search stops after the first folder holding `.git` (the repository's root) or at the filesystem's root. In one
    folder, auditor.toml wins."""
    folder = Path(os.path.abspath(start))
    if not folder.is_dir():
        folder = folder.parent
    for current in (folder, *folder.parents):
        if (current / FILE_NAME).is_file():
            return current / FILE_NAME
        project = current / PYPROJECT
        if project.is_file() and isinstance(_auditor_table(project, _read(project)), dict):
            return project
        if (current / ".git").exists():
            return None
    return None


def load(path: Path) -> Config:
    """Read and check one configuration file: a pyproject.toml's [tool.auditor] table, any other file as auditor.toml."""
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    document = _read(path)
    if path.name == PYPROJECT:
        table, prefix = _auditor_table(path, document), "tool.auditor."
        if table is None:
            raise ConfigError(f"{path} has no [tool.auditor] table")
    else:
        table, prefix = document, ""
    options: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key in OPTIONS:
            options[key] = _option(path, prefix + key, key, value)
        elif key == "preprocess":
            _section(path, prefix + key, "preprocess", value, settings)
        elif key == "settings":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {prefix}settings must be a table of sections, e.g. [{prefix}settings.verdict]")
            for section, names in value.items():
                _section(path, f"{prefix}settings.{section}", section, names, settings)
        else:
            raise ConfigError(f"{path}: unknown key {prefix + key!r}; allowed: {', '.join(OPTIONS + TABLES)}")
    try:
        Settings().override(settings)
    except SettingsError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Config(path, options, settings)


def _read(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # the standard library's from Python 3.11
    except ModuleNotFoundError:
        raise ConfigError(f"reading {path} needs Python 3.11 or later (tomllib)") from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _auditor_table(path: Path, document: dict[str, Any]) -> dict[str, Any] | None:
    tool = document.get("tool")
    table = tool.get("auditor") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.auditor must be a table ([tool.auditor]), got {_toml_type(table)}")
    return table


def _option(path: Path, key: str, name: str, value: Any) -> Any:
    """One option's value, checked; a path resolved against the file's folder."""
    def wrong(allowed: str) -> ConfigError:
        return ConfigError(f"{path}: {key} takes {allowed}, got {value!r}")

    if name in PATH_OPTIONS:
        if not isinstance(value, str) or not value.strip():
            raise wrong("a path (a string)")
        return Path(os.path.normpath(path.parent / Path(value).expanduser()))
    if name in COUNT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise wrong("a whole number of at least 1")
        return value
    if name == "threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong("a number")
        return float(value)
    if name in SWITCH_OPTIONS:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if not isinstance(value, str) or value not in CHOICE_OPTIONS[name]:
        raise wrong(f"one of {', '.join(CHOICE_OPTIONS[name])}")
    return value


def _section(path: Path, where: str, section: str, values: Any, settings: dict[str, Any]) -> None:
    """Add one section's table ({name: value}) to `settings` as {"section.name": value}, each name and type checked."""
    sections = typing.get_type_hints(Settings)
    if section not in sections:
        raise ConfigError(f"{path}: unknown settings section {where!r}; sections: {', '.join(f.name for f in dataclasses.fields(Settings))}")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {where} must be a table ([{where}] with NAME = VALUE lines), got {_toml_type(values)}")
    kinds = typing.get_type_hints(sections[section])
    names = [f.name for f in dataclasses.fields(sections[section])]
    for name, value in values.items():
        if name not in names:
            raise ConfigError(f"{path}: unknown setting {where + '.' + name!r}; {section} has {', '.join(names)}")
        if not _fits(kinds[name], value):
            raise ConfigError(f"{path}: {where}.{name} takes {_describe(kinds[name])}, got {_toml_type(value)} {value!r}")
        key = f"{section}.{name}"
        if key in settings:
            raise ConfigError(f"{path}: {where}.{name} is given twice ([preprocess] is [settings.preprocess]); keep one")
        settings[key] = value


def _fits(kind: Any, value: Any) -> bool:
    """Whether a TOML value has a setting's type (an integer is a number; a boolean is not)."""
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(args) == len(value) and all(_fits(a, v) for a, v in zip(args, value))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return False


_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        element = args[0]
        inner = "arrays" if typing.get_origin(element) is tuple else _NAMES.get(element, ("", "values"))[1]
        return f"an array of {inner}" if len(args) == 2 and args[1] is Ellipsis else f"an array of {len(args)} values"
    return _NAMES.get(kind, (str(kind), ""))[0]


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
