"""Terminal sparklines: scaled to the series, resampled to the width."""

from __future__ import annotations

from matrec.sdk.ctl.terminal_chart import BLOCKS, resample, sparkline


def test_rising_series_rises_from_the_lowest_to_the_highest_block() -> None:
    line = sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert line == BLOCKS
    assert sparkline([3.0, 2.0, 1.0]) == BLOCKS[-1] + BLOCKS[len(BLOCKS) // 2] + BLOCKS[0]


def test_long_series_are_averaged_down_to_the_width() -> None:
    values = [float(i % 2) for i in range(1000)]
    assert resample(values, 10) == [0.5] * 10
    assert len(sparkline([float(i) for i in range(1000)], width=25)) == 25


def test_flat_and_empty_series() -> None:
    assert sparkline([2.0, 2.0, 2.0]) == BLOCKS[3] * 3
    assert sparkline([]) == ""
