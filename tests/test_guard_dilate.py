"""The guard's dilation (auditor/mitigation/guard.py `dilate`): the per-position caps and input
clamps take the largest clean value near each position, never across channels."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.mitigation.guard import dilate


def test_dilate_takes_the_largest_value_nearby_but_never_across_channels() -> None:
    values = np.zeros((2, 5, 5))
    values[0, 2, 2] = 1.0
    values[1, 0, 0] = 2.0
    near = dilate(values, 1, channel_axis=0)
    assert near[0, 1:4, 1:4].min() == 1.0 and near[0, 0, 0] == 0.0 and near[0, 4, 4] == 0.0
    assert near[1, :2, :2].min() == 2.0 and near[1, 2, 2] == 0.0  # channel 1 never sees channel 0
    np.testing.assert_array_equal(dilate(values, 0, channel_axis=0), values)


@pytest.mark.parametrize("channel_axis", [None, 0, -3])
def test_dilate_equals_the_maximum_over_every_window(channel_axis: int | None) -> None:
    values = np.random.default_rng(3).normal(size=(3, 1, 6, 7))
    radius = 2
    want = np.empty_like(values)
    for index in np.ndindex(values.shape):
        window = tuple(
            slice(i, i + 1) if channel_axis is not None and axis == channel_axis % values.ndim
            else slice(max(0, i - radius), i + radius + 1)
            for axis, i in enumerate(index))
        want[index] = values[window].max()
    np.testing.assert_array_equal(dilate(values, radius, channel_axis), want)
