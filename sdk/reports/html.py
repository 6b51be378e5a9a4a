"""Reports as one self-contained HTML file: inline CSS, charts embedded as base64 PNG data URIs,
no scripts and no external resources, so the file opens offline and can be archived as is.
Every piece of text that comes from a job or a study (names, config, class names, parameters,
errors) is escaped."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from html import escape
from typing import Any

from matrec.sdk.reports import charts
from matrec.sdk.reports.compare import Comparison, format_number
from matrec.sdk.reports.model import EPOCH_KEYS, JobReport
from matrec.sdk.reports.study import StudyReport, StudyTrial

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.error { color: #b00; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
"""


def report_html(report: JobReport) -> str:
    """The whole HTML document of one job's report."""
    title = f"matrec report: {report.name or report.job_id} ({report.job_id})"
    parts = [
        f"<h1>{escape(title)}</h1>",
        _table(
            ["", ""],
            [
                ["job", escape(report.job_id)],
                ["name", escape(report.name)],
                ["kind", escape(report.kind)],
                ["state", escape(report.state)],
                ["created", escape(_when(report.created_at))],
                ["started", escape(_when(report.started_at))],
                ["finished", escape(_when(report.finished_at))],
                ["final val accuracy", format_number(report.final_val_accuracy)],
            ],
            header=False,
        ),
    ]
    if report.error:
        parts.append(f'<p class="error">{escape(report.error)}</p>')
    # The job's visualization_level: minimal reports numbers only, detailed adds per-class curves.
    level = report.setting("visualization_level", "standard")
    if level != "minimal":
        parts += [
            "<h2>Learning curves</h2>",
            _image(charts.learning_curves_png(report), "learning curves", "chart-curves"),
        ]
    parts += [
        "<h2>Epochs</h2>",
        _epoch_table(report) if report.epochs else "<p>no epoch finished yet</p>",
    ]
    if level == "detailed":
        parts.append(_class_f1_table(report))
    if report.evaluation is None:
        parts.append("<h2>Evaluation</h2><p>no evaluation stored</p>")
    else:
        ev = report.evaluation
        parts += [
            "<h2>Evaluation</h2>",
            _table(
                ["accuracy", "macro-F1", f"top-{ev.top_k} accuracy"],
                [[_num(ev.accuracy), _num(ev.macro_f1), _num(ev.top_k_accuracy)]],
            ),
            "<h3>Per class</h3>",
            _table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [
                        escape(row.name),
                        _num(row.precision),
                        _num(row.recall),
                        _num(row.f1),
                        _num(row.support),
                    ]
                    for row in ev.per_class
                ],
            ),
        ]
        if level != "minimal":
            parts += [
                "<h3>Confusion matrix</h3>",
                _image(
                    charts.confusion_png(report, normalized=False),
                    "confusion matrix (counts)",
                    "chart-confusion-counts",
                ),
                _image(
                    charts.confusion_png(report, normalized=True),
                    "confusion matrix (normalised)",
                    "chart-confusion-normalized",
                ),
            ]
    parts += [
        "<h2>Config</h2>",
        f"<pre>{escape(json.dumps(report.config, indent=2, sort_keys=True, default=str))}</pre>",
    ]
    return _document(title, parts)


def comparison_html(comparison: Comparison) -> str:
    """The whole HTML document of a comparison of several jobs."""
    title = "matrec comparison: " + ", ".join(row.job_id for row in comparison.rows)
    rows = [
        [
            escape(row.job_id),
            escape(row.name),
            escape(row.state),
            _num(row.final_val_accuracy),
            _num(row.macro_f1),
            _num(row.epochs),
            escape(row.model),
            escape(row.model_type),
            escape(row.strategy),
        ]
        for row in comparison.rows
    ]
    headers = [
        "job",
        "name",
        "state",
        "val accuracy",
        "macro-F1",
        "epochs",
        "model",
        "model_type",
        "strategy",
    ]
    parts = [
        f"<h1>{escape(title)}</h1>",
        _table(headers, rows),
        "<h2>Validation accuracy</h2>",
        _image(charts.comparison_png(comparison), "validation accuracy", "chart-comparison"),
    ]
    return _document(title, parts)


def study_html(report: StudyReport) -> str:
    """The whole HTML document of a hyperparameter study's report."""
    title = f"matrec study report: {report.name or report.study_id} ({report.study_id})"
    counts = ", ".join(f"{count} {state}" for state, count in report.counts.items() if count)
    parts = [
        f"<h1>{escape(title)}</h1>",
        _table(
            ["", ""],
            [
                ["study", escape(report.study_id)],
                ["name", escape(report.name)],
                ["state", escape(report.state)],
                ["algorithm", escape(report.algorithm)],
                ["objective", escape(f"{report.objective} ({report.direction})")],
                ["pruner", escape(report.pruner_label)],
                ["trial kind", escape(report.trial_kind)],
                ["trials", escape(f"{len(report.trials)} ({counts or 'none yet'})")],
                ["max trials", escape(_when(report.max_trials))],
                ["max parallel", escape(_when(report.max_parallel))],
                ["created", escape(_when(report.created_at))],
                ["finished", escape(_when(report.finished_at))],
            ],
            header=False,
        ),
    ]
    if report.error:
        parts.append(f'<p class="error">{escape(report.error)}</p>')
    parts += ["<h2>Best trial</h2>", _best_trial(report)]
    parts += [
        "<h2>Optimisation history</h2>",
        _image(charts.history_png(report), "optimisation history", "chart-history"),
        "<h2>Objective by hyperparameter</h2>",
        _image(charts.params_png(report), "objective by hyperparameter", "chart-params"),
        "<h2>Intermediate values</h2>",
        _image(charts.intermediate_png(report), "intermediate values", "chart-intermediate"),
        "<h2>Trials (best first)</h2>",
        _trials_table(report) if report.trials else "<p>no trial yet</p>",
        "<h2>Spec</h2>",
        f"<pre>{escape(json.dumps(report.spec, indent=2, sort_keys=True, default=str))}</pre>",
    ]
    return _document(title, parts)


def _best_trial(report: StudyReport) -> str:
    best = report.best
    if best is None:
        return "<p>no best trial yet (no trial has completed)</p>"
    rows = [
        ["trial", _num(best.number)],
        ["objective", _num(best.objective_value)],
        ["job", escape(best.job_id)],
        *([escape(name), _param(value)] for name, value in sorted(best.params.items())),
    ]
    note = (
        "<p>A training report of this trial's job: "
        f"<code>matrec-ctl report {escape(best.job_id)}</code></p>"
    )
    return _table(["", ""], rows, header=False) + note


def _trials_table(report: StudyReport) -> str:
    names = [info.name for info in report.params]
    rows = [
        [
            _num(trial.number),
            f'<td class="nowrap">{escape(trial.state_label)}</td>',
            _num(trial.objective_value),
            *(_param(trial.params[name]) if name in trial.params else "-" for name in names),
            f'<td class="nowrap">{escape(trial.job_id)}</td>',
            _error(trial),
        ]
        for trial in report.trials
    ]
    return _table(["#", "state", report.objective or "objective", *names, "job", "error"], rows)


def _error(trial: StudyTrial) -> str:
    if trial.state == "failed":
        return f'<td class="error">{escape(trial.error)}</td>'
    return escape(trial.error)


def _param(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _num(value)
    return escape(str(value))


def _document(title: str, parts: Iterable[str]) -> str:
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _image(png: bytes, alt: str, element_id: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{element_id}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _epoch_table(report: JobReport) -> str:
    keys = [key for key in EPOCH_KEYS if any(key in row.values for row in report.epochs)]
    rows = [
        [_num(row.epoch), _num(row.step), *(_num(row.values.get(key)) for key in keys)]
        for row in report.epochs
    ]
    return _table(["epoch", "step", *keys], rows)


def _class_f1_table(report: JobReport) -> str:
    """Each class's validation F1 per epoch (stored at visualization_level "detailed")."""
    prefix = "val/f1/"
    classes = sorted(key.removeprefix(prefix) for key in report.curves if key.startswith(prefix))
    if not classes:
        return "<h3>Per-class F1 by epoch</h3><p>none stored</p>"
    series = {name: report.curves[prefix + name] for name in classes}
    epochs = max(len(points) for points in series.values())
    rows = [
        [_num(i + 1), *(_num(series[n][i].value) if i < len(series[n]) else "" for n in classes)]
        for i in range(epochs)
    ]
    return "<h3>Per-class F1 by epoch</h3>" + _table(["epoch", *classes], rows)


def _table(headers: list[str], rows: list[list[str]], *, header: bool = True) -> str:
    """`rows` hold HTML already (escaped text or _num cells); headers are escaped here."""
    head = ""
    if header:
        head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"
    body = "".join(
        "<tr>"
        + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _num(value: float | int | None) -> str:
    if value is None:
        text = "-"

    elif isinstance(value, int):
        text = str(value)
    else:
        text = f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
    return f'<td class="num">{text}</td>'


def _when(moment: object) -> str:
    return "-" if moment is None else str(moment)
