"""Samples left in their file (auditor/io/data.py `stream`, `SampleFile`): a scan reads them a block at a time, so
its memory does not grow with N, and sees exactly what `load` would have given it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from auditor.detect import scan as detection
from auditor.errors import DataError
from auditor.io import data, runtime
from auditor.settings import Settings


def _specs(example) -> list[data.InputSpec]:
    return data.input_specs(onnx.load(str(example.model)))


def _images(example, count: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(example.test) as archive:
        return archive["x"][:count], archive["y"][:count]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed, np.save])
def test_every_block_holds_what_load_reads(example, save, tmp_path: Path) -> None:
    x, y = _images(example, 40)
    path = tmp_path / ("images.npy" if save is np.save else "images.npz")
    save(path, x) if save is np.save else save(path, x=x, y=y)
    specs = _specs(example)
    whole = data.load(path, specs, limit=30)
    streamed = data.stream(path, specs, limit=30)
    assert isinstance(streamed, data.SampleFile) and len(streamed) == 30
    name = specs[0].name
    assert whole.inputs[name].dtype == np.float32
    for half in (0, 1):  # the capture's order: every other row, a few at a time
        rows = np.arange(30)[np.arange(30) % 2 == half]
        for chosen, feed in streamed.feeds(rows, 4):
            np.testing.assert_array_equal(feed[name], whole.inputs[name][chosen])
    for ours, theirs in zip(streamed.batches(8), whole.batches(8), strict=True):  # `evaluate`'s pass
        np.testing.assert_array_equal(ours[name], theirs[name])
    head = streamed.head(7)
    np.testing.assert_array_equal(head.inputs[name], whole.inputs[name][:7])
    if save is not np.save:
        np.testing.assert_array_equal(streamed.labels, y[:30])
        np.testing.assert_array_equal(head.labels, y[:7])


def test_a_bad_row_past_the_first_block_is_refused_when_it_is_read(example, tmp_path: Path) -> None:
    """Opening reads the headers only; each block is checked as `load` checks the whole (here: a NaN in row 25)."""
    x, _ = _images(example, 30)
    values = x.astype(np.float32) / 255
    values[25] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=values)
    streamed = data.stream(path, _specs(example))
    streamed.head(10)  # rows 0-9 are fine
    with pytest.raises(DataError, match="contain NaN or Inf"):
        list(streamed.feeds(np.arange(30), 8))


def test_a_file_cut_short_during_the_run_is_refused(example, tmp_path: Path) -> None:
    x, _ = _images(example, 30)
    path = tmp_path / "images.npy"
    np.save(path, x)
    streamed = data.stream(path, _specs(example))
    path.write_bytes(path.read_bytes()[:-28 * 28 * 3])  # the last three rows gone
    with pytest.raises(DataError, match="truncated"):
        list(streamed.feeds(np.arange(30), 8))


def test_a_fortran_ordered_array_is_read_whole(example, tmp_path: Path) -> None:
    x, _ = _images(example, 12)
    path = tmp_path / "fortran.npy"
    np.save(path, np.asfortranarray(x))
    got = data.stream(path, _specs(example))
    assert isinstance(got, data.Samples)
    np.testing.assert_array_equal(got.inputs[_specs(example)[0].name], data.load(path, _specs(example)).inputs[_specs(example)[0].name])


def test_a_scan_from_the_file_finds_what_a_scan_from_memory_finds(example) -> None:
    """Beyond the first samples the detectors read, the scan holds none: the capture reads the file a block at a time.
    Its statistics and its verdict are the in-memory scan's, bit for bit."""
    provider, settings = runtime.select_provider("cpu"), Settings()
    first = detection.detector_samples(settings, data.load(example.test, _specs(example), limit=1).sample_values)
    count = first + 60
    settings = settings.override({"capture.scan_statistics": count})  # every sample measured, as `repair` measures
    held = detection.scan(example.model, example.test, count, "sus", provider, settings, keep_samples=True)
    read = detection.scan(example.model, example.test, count, "sus", provider, settings, keep_samples=False)
    assert len(held.samples) == count and len(read.samples) == first == settings.probe.max_samples
    np.testing.assert_array_equal(held.capture.scores, read.capture.scores)
    for unit, stats in held.capture.stats.items():
        for field in ("sum", "sumsq", "max", "gram", "half_position_max"):
            np.testing.assert_array_equal(getattr(stats, field), getattr(read.capture.stats[unit], field))
    assert (held.verdict.score, held.verdict.basis, held.verdict.target) == (read.verdict.score, read.verdict.basis, read.verdict.target)
    assert held.verdict.probe.shares == read.verdict.probe.shares


def test_a_scan_measures_statistics_on_the_first_samples_and_classifies_the_rest(example) -> None:
    """`scan` captures channel statistics on the first capture.scan_statistics samples only: they are the statistics
    of a scan of exactly those samples, while every sample still gets its class (through the plain session)."""
    provider, settings = runtime.select_provider("cpu"), Settings()
    measured = settings.capture.scan_statistics
    count = measured + 37
    read = detection.scan(example.model, example.test, count, "sus", provider, settings, keep_samples=False)
    only = detection.scan(example.model, example.test, measured, "sus", provider, settings, keep_samples=False)
    everything = detection.scan(example.model, example.test, count, "sus", provider, settings, keep_samples=True)
    assert read.capture.measured == measured and everything.capture.measured == count
    assert len(read.capture.scores) == count
    for unit, stats in only.capture.stats.items():
        for field in ("sum", "sumsq", "max", "gram", "half_position_max"):
            np.testing.assert_array_equal(getattr(stats, field), getattr(read.capture.stats[unit], field))
    assert read.capture.stats[unit].count < everything.capture.stats[unit].count
    np.testing.assert_array_equal(read.capture.scores[:measured], only.capture.scores)
    np.testing.assert_allclose(read.capture.scores, everything.capture.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(read.capture.labels, everything.capture.labels)
