"""The settings tree: defaults in one place, overrides checked, derived values computed."""

from __future__ import annotations

import dataclasses

import pytest

from auditor.errors import SettingsError
from auditor.settings import Settings, parse_overrides


def test_defaults_are_frozen_and_shipped():
    settings = Settings()
    assert settings.verdict.probe_threshold == 0.6 and settings.repair.floor == 0.95
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.verdict.probe_threshold = 0.5  # type: ignore[misc]
    assert settings.differences() == {}


def test_override_parses_text_by_type_and_records_the_difference():
    changed = Settings().override({"patch.iterations": "50", "probe.noise_levels": "0.1,0.2", "guard.position_steps": "(1,0.5),(2,0.5)"})
    assert changed.patch.iterations == 50 and isinstance(changed.patch.iterations, int)
    assert changed.probe.noise_levels == (0.1, 0.2)
    assert changed.guard.position_steps == ((1, 0.5), (2, 0.5))
    assert changed.differences() == {"patch.iterations": 50, "probe.noise_levels": [0.1, 0.2],
                                     "guard.position_steps": [[1, 0.5], [2, 0.5]]}
    assert Settings().patch.iterations == 300  # the defaults are untouched


@pytest.mark.parametrize("key", ["nope.x", "patch.nope", "patch", "verdict.patch_reach"])
def test_unknown_names_are_refused(key):
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings().override({key: 1})


@pytest.mark.parametrize(("key", "value"), [("patch.iterations", "many"), ("patch.iterations", 2.5), ("repair.floor", "nan"),
                                            ("repair.floor", 1.5), ("repair.layer_cap", 0), ("repair.max_divergence", -1)])
def test_bad_values_are_refused(key, value):
    with pytest.raises(SettingsError):
        Settings().override({key: value})


def test_derived_values_follow_the_settings_they_come_from():
    moved = Settings().override({"verdict.probe_threshold": 0.45})
    assert moved.verdict.patch_reach == pytest.approx(0.45 / 0.9)
    assert moved.verdict.fourier_scale == pytest.approx(0.45 / 0.35)
    assert moved.verdict.fourier_reach == 1.0  # capped where a share is
    assert Settings().override({"verdict.fourier_threshold": 0.9}).verdict.fourier_reach == pytest.approx(0.6 / 0.9)
    assert Settings().override({"unlearn.penalty": 0.01}).unlearn.ladder == ((1.0, 0.01), (0.3, 0.01), (0.1, 0.01))


def test_parse_overrides_needs_a_name_and_a_value():
    assert parse_overrides(["verdict.probe_threshold=0.7"]) == {"verdict.probe_threshold": "0.7"}
    with pytest.raises(SettingsError, match=r"SECTION\.NAME=VALUE"):
        parse_overrides(["verdict.probe_threshold"])


def test_every_setting_round_trips_through_its_text():
    """Every field, written as a user would type it, parses back to the same value."""
    for section, values in Settings().to_dict().items():
        for name, value in values.items():
            text = ",".join(f"({','.join(map(str, v))})" if isinstance(v, list) else str(v) for v in value) \
                if isinstance(value, list) else str(value)
            assert Settings().override({f"{section}.{name}": text}).differences() == {}, (section, name, text)
