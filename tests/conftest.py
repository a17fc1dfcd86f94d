
# --- graph passes (tests/test_pass_*.py): one loaded pattern graph per param, zero_and_cap applied ---

import pytest as _passes_pytest
from graphs import PATTERNS as _PASS_PATTERNS


@_passes_pytest.fixture(scope="module", params=_PASS_PATTERNS, ids=lambda p: p.name)
def pass_case(request, tmp_path_factory):
    """A `pass_cases.PassCase` for each pattern of tests/graphs.py (module-scoped: built once per test file)."""
    import pass_cases

    return pass_cases.build(request.param, tmp_path_factory.mktemp(request.param.name))

# --- end graph passes ---

# --- bundled example and output folders (end-to-end, CLI, io-hostile and unlearning tests) ---

import dataclasses as _example_dataclasses  # noqa: E402
import json as _example_json  # noqa: E402
from pathlib import Path as _ExamplePath  # noqa: E402

import pytest as _example_pytest  # noqa: E402

_EXAMPLE_DIR = _ExamplePath(__file__).resolve().parent.parent / "models" / "example"


@_example_dataclasses.dataclass(frozen=True)
class ExampleFiles:
    """The bundled backdoored example (models/example): the model, its clean, test and triggered sets, the attack's target."""

    model: _ExamplePath
    clean: _ExamplePath
    test: _ExamplePath
    triggered: _ExamplePath
    target: int


@_example_pytest.fixture(scope="session")
def example() -> ExampleFiles:
    """Paths of the bundled example (read only: a test that must change them copies them first)."""
    target = _example_json.loads((_EXAMPLE_DIR / "model.json").read_text())["target"]
    return ExampleFiles(*(_EXAMPLE_DIR / n for n in ("model.onnx", "clean.npz", "test.npz", "triggered.npz")), target)


@_example_pytest.fixture
def out_dir(tmp_path) -> _ExamplePath:
    """A fresh, empty folder for one test's outputs (apart from the inputs it builds in tmp_path)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder

# --- end bundled example ---
