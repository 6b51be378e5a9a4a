"""Report charts as PNG bytes, drawn with matplotlib's Agg backend.

matplotlib is imported when a chart is drawn, not with this module. Figures are built as
`matplotlib.figure.Figure` objects (no pyplot, no global state, no display needed) at a fixed
size, so an image is exactly ``size * DPI`` pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from matrec.sdk.reports.compare import Comparison
from matrec.sdk.reports.model import ConfusionMatrix, JobReport, Point

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: (series key, label) drawn on the loss and on the accuracy chart.
LOSS_SERIES = (
    ("train/loss", "train (per step)"),
    ("train/loss_epoch", "train"),
    ("val/loss", "val"),
)
ACCURACY_SERIES = (("train/accuracy", "train"), ("val/accuracy", "val"))

CURVES_SIZE = (10.0, 4.0)
CONFUSION_SIZE = (6.0, 5.0)
SUMMARY_SIZE = (16.0, 5.0)
COMPARISON_SIZE = (8.0, 5.0)


def learning_curves_png(report: JobReport) -> bytes:
    """Loss (train per step and per epoch, val) and accuracy (train, val) side by side."""
    figure = _figure(CURVES_SIZE)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    _draw_curves(loss_axes, accuracy_axes, report)
    return _png(figure)


def confusion_png(report: JobReport, *, normalized: bool) -> bytes:
    """The confusion matrix as counts or row-normalised (an empty chart without evaluation)."""
    figure = _figure(CONFUSION_SIZE)
    axes = figure.subplots()
    _draw_confusion(axes, report, normalized=normalized)
    return _png(figure)


def summary_png(report: JobReport) -> bytes:
    """One image: loss and accuracy curves and the normalised confusion matrix, side by side."""
    figure = _figure(SUMMARY_SIZE)
    loss_axes, accuracy_axes, confusion_axes = figure.subplots(
        1, 3, gridspec_kw={"width_ratios": [1.0, 1.0, 1.1]}
    )
    _draw_curves(loss_axes, accuracy_axes, report)
    _draw_confusion(confusion_axes, report, normalized=True)
    figure.suptitle(_literal(f"{report.name or report.job_id} ({report.job_id}): {report.state}"))
    return _png(figure)


def comparison_png(comparison: Comparison) -> bytes:
    """The jobs' validation-accuracy curves overlaid."""
    figure = _figure(COMPARISON_SIZE)
    axes = figure.subplots()
    for row in comparison.rows:
        _plot(
            axes, comparison.val_accuracy.get(row.job_id, []), _literal(f"{row.job_id} {row.name}")
        )
    axes.set_title("validation accuracy")
    axes.set_xlabel("step")
    axes.set_ylabel("accuracy")
    axes.grid(alpha=0.3)
    if any(comparison.val_accuracy.values()):
        axes.legend(fontsize="small")
    else:
        _no_data(axes)
    return _png(figure)


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _draw_curves(loss_axes: Axes, accuracy_axes: Axes, report: JobReport) -> None:
    for axes, series, title in (
        (loss_axes, LOSS_SERIES, "loss"),
        (accuracy_axes, ACCURACY_SERIES, "accuracy"),
    ):
        drawn = False
        for key, label in series:
            points = report.curves.get(key, [])
            if points:
                thin = key == "train/loss"
                _plot(axes, points, label, thin=thin)
                drawn = True
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if drawn:
            axes.legend(fontsize="small")
        else:
            _no_data(axes)


def _plot(axes: Axes, points: Sequence[Point], label: str, *, thin: bool = False) -> None:
    steps = [point.step for point in points]
    values = [point.value for point in points]
    if thin:
        axes.plot(steps, values, label=label, linewidth=0.8, alpha=0.5)
    else:
        axes.plot(steps, values, label=label, marker="o", markersize=3)


def _draw_confusion(axes: Axes, report: JobReport, *, normalized: bool) -> None:
    title = "confusion matrix (normalised)" if normalized else "confusion matrix (counts)"
    axes.set_title(title)
    if report.evaluation is None:
        _no_data(axes, "no evaluation stored")
        return
    matrix: ConfusionMatrix = report.evaluation.confusion
    cells: Sequence[Sequence[float]] = matrix.normalized if normalized else matrix.counts
    peak = max((max(row) for row in cells if row), default=0) or 1
    image = axes.imshow(cells, cmap="Blues", vmin=0, vmax=1 if normalized else peak)
    axes.figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = range(len(matrix.classes))
    labels = [_literal(name) for name in matrix.classes]
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i, row in enumerate(cells):
        for j, value in enumerate(row):
            text = f"{value:.2f}" if normalized else str(value)
            dark = value > (0.5 if normalized else peak / 2)
            axes.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize="small",
                color="white" if dark else "black",
            )


def _no_data(axes: Axes, message: str = "no data stored yet") -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)


def _literal(text: str) -> str:
    """`text` shown as written: a "$" would otherwise start matplotlib's math mode."""
    return text.replace("$", r"\$")
