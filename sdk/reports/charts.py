"""Report charts as PNG bytes, drawn with matplotlib's Agg backend.

matplotlib is imported when a chart is drawn, not with this module. Figures are built as
`matplotlib.figure.Figure` objects (no pyplot, no global state, no display needed) at a fixed
size, so an image is exactly ``size * DPI`` pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matrec.sdk.reports.compare import Comparison
from matrec.sdk.reports.model import ConfusionMatrix, JobReport, Point
from matrec.sdk.reports.study import ParamInfo, StudyReport, StudyTrial

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

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


# -- hyperparameter studies --------------------------------------------------------------------

HISTORY_SIZE = (8.0, 4.5)
INTERMEDIATE_SIZE = (8.0, 4.5)
#: The size of one parameter's panel; the panels fill a grid of PARAM_COLUMNS columns at most.
PARAM_PANEL_SIZE = (4.0, 3.2)
PARAM_COLUMNS = 3
#: The width of the study summary; its height is the top row plus the parameter rows.
STUDY_SUMMARY_WIDTH = 14.0
STUDY_SUMMARY_TOP = 4.5

COMPLETED_COLOR = "tab:blue"
PRUNED_COLOR = "0.5"
FAILED_COLOR = "tab:red"
OTHER_COLOR = "tab:cyan"
BEST_COLOR = "tab:orange"
OTHER_LABEL = "running / cancelled"


def param_grid(count: int) -> tuple[int, int]:
    """(rows, columns) of the parameter panels: one panel per parameter, at least one panel."""
    columns = max(1, min(PARAM_COLUMNS, count))
    rows = max(1, -(-count // columns))
    return rows, columns


def params_size(report: StudyReport) -> tuple[float, float]:
    rows, columns = param_grid(len(report.params))
    return (PARAM_PANEL_SIZE[0] * columns, PARAM_PANEL_SIZE[1] * rows)


def study_summary_size(report: StudyReport) -> tuple[float, float]:
    rows, _ = param_grid(len(report.params))
    return (STUDY_SUMMARY_WIDTH, STUDY_SUMMARY_TOP + PARAM_PANEL_SIZE[1] * rows)


def history_png(report: StudyReport) -> bytes:
    """The optimisation history: each trial's objective by trial number, the best so far."""
    figure = _figure(HISTORY_SIZE)
    _draw_history(figure.subplots(), report)
    return _png(figure)


def params_png(report: StudyReport) -> bytes:
    """The objective against each hyperparameter, one panel per parameter."""
    figure = _figure(params_size(report))
    _draw_params(figure, report)
    return _png(figure)


def intermediate_png(report: StudyReport) -> bytes:
    """Each trial's intermediate values (the objective per resource), the best highlighted."""
    figure = _figure(INTERMEDIATE_SIZE)
    _draw_intermediate(figure.subplots(), report)
    return _png(figure)


def study_summary_png(report: StudyReport) -> bytes:
    """One image: history and intermediate values on top, the parameter panels below."""
    figure = _figure(study_summary_size(report))
    rows, _ = param_grid(len(report.params))
    grid = figure.add_gridspec(2, 1, height_ratios=[STUDY_SUMMARY_TOP, PARAM_PANEL_SIZE[1] * rows])
    top, bottom = figure.add_subfigure(grid[0]), figure.add_subfigure(grid[1])
    history_axes, intermediate_axes = top.subplots(1, 2)
    _draw_history(history_axes, report)
    _draw_intermediate(intermediate_axes, report)
    _draw_params(bottom, report)
    figure.suptitle(
        _literal(
            f"study {report.study_id}"
            + (f" ({report.name})" if report.name and report.name != report.study_id else "")
            + f": {report.state}, "
            f"{report.direction} {report.objective}"
        )
    )
    return _png(figure)


def _objective_label(report: StudyReport) -> str:
    better = "higher" if report.maximize else "lower"
    return _literal(f"{report.objective or 'objective'} ({better} is better)")


def _valued(trials: Sequence[StudyTrial], state: str | None) -> list[StudyTrial]:
    """Trials with an objective value, of `state` (None: of any state but completed/pruned)."""
    return [
        trial
        for trial in trials
        if trial.objective_value is not None
        and (
            trial.state == state
            if state is not None
            else trial.state not in ("completed", "pruned")
        )
    ]


def _draw_history(axes: Axes, report: StudyReport) -> None:
    from matplotlib.ticker import MaxNLocator

    trials = report.by_number
    axes.set_title("optimisation history")
    axes.set_xlabel("trial number")
    axes.set_ylabel(_objective_label(report))
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    completed = _valued(trials, "completed")
    pruned = _valued(trials, "pruned")
    others = _valued(trials, None)
    failed = [trial for trial in trials if trial.state == "failed"]
    if completed:
        axes.scatter(
            [t.number for t in completed],
            [_value(t) for t in completed],
            color=COMPLETED_COLOR,
            s=24,
            zorder=3,
            label="completed",
        )
        numbers, best_so_far = _best_so_far(completed, report.maximize)
        last = max(trial.number for trial in trials)
        axes.step(
            [*numbers, last],
            [*best_so_far, best_so_far[-1]],
            where="post",
            color=BEST_COLOR,
            linewidth=1.5,
            zorder=2,
            label="best so far",
        )
    if pruned:
        axes.scatter(
            [t.number for t in pruned],
            [_value(t) for t in pruned],
            facecolors="none",
            edgecolors=PRUNED_COLOR,
            s=24,
            zorder=3,
            label="pruned (last value)",
        )
    if others:
        axes.scatter(
            [t.number for t in others],
            [_value(t) for t in others],
            facecolors="none",
            edgecolors=OTHER_COLOR,
            marker="s",
            s=20,
            zorder=3,
            label=OTHER_LABEL,
        )
    best = report.best
    if best is not None and best.objective_value is not None:
        axes.scatter(
            [best.number],
            [best.objective_value],
            marker="*",
            s=160,
            color=BEST_COLOR,
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
            label=f"best: trial {best.number}",
        )
    if failed:
        # No value to show: a mark on the x axis, at the trial's number.
        axes.scatter(
            [t.number for t in failed],
            [0.0] * len(failed),
            transform=axes.get_xaxis_transform(),
            marker="x",
            color=FAILED_COLOR,
            s=30,
            clip_on=False,
            zorder=4,
            label="failed",
        )
    if completed or pruned or others:
        axes.legend(fontsize="small")
    else:
        if failed:
            axes.legend(fontsize="small")
            axes.set_xlim(min(t.number for t in failed) - 1, max(t.number for t in failed) + 1)
        _no_data(axes, "no trial has an objective value yet")


def _best_so_far(completed: Sequence[StudyTrial], maximize: bool) -> tuple[list[int], list[float]]:
    numbers: list[int] = []
    values: list[float] = []
    for trial in sorted(completed, key=lambda t: t.number):
        value = _value(trial)
        if values and math.isfinite(values[-1]):
            better = value > values[-1] if maximize else value < values[-1]
            value = value if better else values[-1]
        numbers.append(trial.number)
        values.append(value)
    return numbers, values


def _draw_params(figure: Figure | SubFigure, report: StudyReport) -> None:
    count = len(report.params)
    rows, columns = param_grid(count)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= count:
            axes.axis("off")
            continue
        _draw_param(axes, report, report.params[index])
        if index % columns == 0:
            axes.set_ylabel(_objective_label(report))
    if count == 0:
        grid[0][0].axis("on")
        grid[0][0].set_title("hyperparameters")
        _no_data(grid[0][0], "no hyperparameters")


def _draw_param(axes: Axes, report: StudyReport, info: ParamInfo) -> None:
    axes.set_title(_literal(info.name + (" (log)" if info.log else "")), fontsize="medium")
    axes.grid(alpha=0.3)
    categories = _categories(info, report.trials) if info.categorical else []

    def position(value: Any) -> float | None:
        if info.categorical:
            return float(_category_index(categories, value))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    groups: dict[str, tuple[list[float], list[float]]] = {}
    for trial in report.trials:
        if trial.objective_value is None or info.name not in trial.params:
            continue
        x = position(trial.params[info.name])
        if x is None:
            continue
        group = trial.state if trial.state in ("completed", "pruned") else "other"
        xs, ys = groups.setdefault(group, ([], []))
        xs.append(x)
        ys.append(trial.objective_value)
    if "completed" in groups:
        axes.scatter(*groups["completed"], color=COMPLETED_COLOR, s=20, zorder=3)
    if "pruned" in groups:
        axes.scatter(*groups["pruned"], facecolors="none", edgecolors=PRUNED_COLOR, s=20, zorder=3)
    if "other" in groups:
        axes.scatter(*groups["other"], facecolors="none", edgecolors=OTHER_COLOR, marker="s", s=18)
    best = report.best
    if best is not None and best.objective_value is not None and info.name in best.params:
        x = position(best.params[info.name])
        if x is not None:
            axes.scatter(
                [x],
                [best.objective_value],
                marker="*",
                s=140,
                color=BEST_COLOR,
                edgecolors="black",
                linewidths=0.5,
                zorder=4,
            )
    if info.categorical:
        axes.set_xticks(
            range(len(categories)),
            [_literal(str(c)) for c in categories],
            rotation=30 if any(len(str(c)) > 6 for c in categories) else 0,
        )
        axes.set_xlim(-0.5, max(len(categories), 1) - 0.5)
    elif info.log:
        xs = [x for group_xs, _ in groups.values() for x in group_xs]
        if all(x > 0 for x in xs) and (info.low is None or info.low > 0):
            axes.set_xscale("log")
    if not groups:
        _no_data(axes, "no trial has a value yet")


def _categories(info: ParamInfo, trials: Sequence[StudyTrial]) -> list[Any]:
    """The choices in the search space's order, then any other value the trials hold."""
    categories = list(info.choices)
    for trial in trials:
        if info.name in trial.params:
            value = trial.params[info.name]
            if _category_index(categories, value) == len(categories):
                categories.append(value)
    return categories


def _category_index(categories: Sequence[Any], value: Any) -> int:
    """The index of `value` in `categories` (len(categories) when absent). An exact match first;
    then an equal number, as integer choices come back as floats (2 for 2.0)."""
    for index, category in enumerate(categories):
        if type(category) is type(value) and category == value:
            return index
    for index, category in enumerate(categories):
        if not isinstance(category, bool) and not isinstance(value, bool) and category == value:
            return index
    return len(categories)


def _draw_intermediate(axes: Axes, report: StudyReport) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    axes.set_title("intermediate values")
    axes.set_xlabel("resource (reports of the objective; epochs for fine-tunes)")
    axes.set_ylabel(_objective_label(report))
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = report.best
    styles: dict[str, dict[str, Any]] = {
        "completed": {"color": COMPLETED_COLOR, "linewidth": 1.0, "alpha": 0.7},
        "pruned": {"color": PRUNED_COLOR, "linewidth": 1.0, "alpha": 0.8},
        "failed": {"color": FAILED_COLOR, "linewidth": 0.8, "alpha": 0.6, "linestyle": ":"},
    }
    other: dict[str, Any] = {
        "color": OTHER_COLOR,
        "linewidth": 1.0,
        "alpha": 0.7,
        "linestyle": "--",
    }
    seen: set[str] = set()
    reported_after_pruning = False
    resources: list[int] = []
    for trial in report.by_number:
        if not trial.intermediate or (best is not None and trial.number == best.number):
            continue
        resources += [resource for resource, _ in trial.intermediate]
        label = trial.state if trial.state in styles else OTHER_LABEL
        seen.add(label)
        style = styles.get(trial.state, other)
        if trial.state != "pruned":
            xs, ys = _xy(trial.intermediate)
            # A curve of one point is drawn as a dot.
            axes.plot(xs, ys, **style, marker="o" if len(xs) == 1 else "", markersize=3)
            continue
        # Solid up to where the pruner stopped it (an x there); what the trial still reported
        # before its job stopped is dotted.
        stop = trial.pruned_resource
        if stop is None:
            stop = trial.intermediate[-1][0]
        head = [(x, y) for x, y in trial.intermediate if x <= stop]
        tail = [(x, y) for x, y in trial.intermediate if x >= stop]
        if head:
            axes.plot(*_xy(head), **style)
        if len(tail) > 1 or (tail and not head):
            axes.plot(*_xy(tail), color=PRUNED_COLOR, linewidth=0.8, alpha=0.6, linestyle=":")
            reported_after_pruning = True
        if head:
            value = trial.objective_value if trial.objective_value is not None else head[-1][1]
            axes.plot([head[-1][0]], [value], marker="x", markersize=6, color=PRUNED_COLOR)
    handles = [
        Line2D([], [], label=label, **styles.get(label, other))
        for label in (*styles, OTHER_LABEL)
        if label in seen
    ]
    if reported_after_pruning:
        handles.append(
            Line2D([], [], color=PRUNED_COLOR, linestyle=":", label="reported after pruning")
        )
    if best is not None and best.intermediate:
        xs = [resource for resource, _ in best.intermediate]
        ys = [value for _, value in best.intermediate]
        resources += xs
        (line,) = axes.plot(
            xs,
            ys,
            color=BEST_COLOR,
            linewidth=2.5,
            marker="o",
            markersize=3,
            zorder=3,
            label=f"best: trial {best.number}",
        )
        handles.append(line)
    if not resources:
        _no_data(axes, "no intermediate values reported yet")
        return
    for rung in _rungs(report.pruner, max(resources)):
        axes.axvline(rung, color="0.7", linewidth=0.8, linestyle=":", zorder=1)
    axes.legend(handles=handles, fontsize="small")


def _xy(points: Sequence[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [x for x, _ in points], [y for _, y in points]


def _rungs(pruner: dict[str, Any], limit: int) -> list[int]:
    """ASHA's rungs up to `limit` resources (inclusive): min_resource * reduction_factor**k."""
    if pruner.get("kind") != "asha":
        return []
    try:
        resource = int(pruner.get("min_resource") or 1)
        factor = int(pruner.get("reduction_factor") or 3)
    except (TypeError, ValueError):
        return []
    if resource < 1 or factor < 2:
        return []
    rungs = []
    while resource <= limit:
        rungs.append(resource)
        resource *= factor
    return rungs


def _value(trial: StudyTrial) -> float:
    assert trial.objective_value is not None
    return trial.objective_value
