"""Small line charts for the terminal: a series drawn as one row of block characters."""

from __future__ import annotations

from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"


def resample(values: Sequence[float], width: int) -> list[float]:
    """At most `width` values: the mean of each of `width` equal runs (the series as it is when
    it is shorter)."""
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        start = i * len(values) // width
        end = max(start + 1, (i + 1) * len(values) // width)
        chunk = values[start:end]
        out.append(sum(chunk) / len(chunk))
    return out


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The series scaled between its own minimum and maximum; a flat series sits mid-height."""
    points = resample(values, width)
    if not points:
        return ""
    low, high = min(points), max(points)
    if high - low < 1e-12:
        return BLOCKS[len(BLOCKS) // 2 - 1] * len(points)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[round((v - low) / (high - low) * top)] for v in points)
