"""The comparison of several jobs: one row of final numbers and settings per job, plus each
job's validation-accuracy curve for an overlaid chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from matrec.sdk.reports.model import SCHEMA_VERSION, JobReport, Point

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class ComparisonRow:
    job_id: str
    name: str
    state: str
    final_val_accuracy: float | None
    macro_f1: float | None
    epochs: int
    model: str
    model_type: str
    strategy: str


@dataclass(frozen=True)
class Comparison:
    rows: list[ComparisonRow]
    #: Per job id, its val/accuracy points (step, value).
    val_accuracy: dict[str, list[Point]]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "type": "job_comparison",
            "jobs": [
                {
                    "id": row.job_id,
                    "name": row.name,
                    "state": row.state,
                    "final_val_accuracy": row.final_val_accuracy,
                    "macro_f1": row.macro_f1,
                    "epochs": row.epochs,
                    "model": row.model,
                    "model_type": row.model_type,
                    "strategy": row.strategy,
                    "val_accuracy": [
                        [point.step, point.value] for point in self.val_accuracy[row.job_id]
                    ],
                }
                for row in self.rows
            ],
        }


def compare(reports: Sequence[JobReport]) -> Comparison:
    """The comparison of `reports`, in the order given."""
    rows = [
        ComparisonRow(
            job_id=report.job_id,
            name=report.name,
            state=report.state,
            final_val_accuracy=report.final_val_accuracy,
            macro_f1=report.final_macro_f1,
            epochs=len(report.epochs),
            model=report.setting("model"),
            model_type=report.setting("model_type", "cnn"),
            strategy=report.setting("strategy", "full"),
        )
        for report in reports
    ]
    curves = {report.job_id: list(report.curves.get("val/accuracy", [])) for report in reports}
    return Comparison(rows=rows, val_accuracy=curves)


def comparison_table(comparison: Comparison) -> Table:
    """A Rich table of the comparison, for the terminal."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="job comparison")
    for header in ("job", "name", "state", "val acc", "macro-F1", "epochs", "model"):
        table.add_column(header, justify="right" if header in {"val acc", "macro-F1"} else "left")
    table.add_column("model_type")
    table.add_column("strategy")
    for row in comparison.rows:
        table.add_row(
            escape(row.job_id),
            escape(row.name),
            escape(row.state),
            format_number(row.final_val_accuracy),
            format_number(row.macro_f1),
            str(row.epochs),
            escape(row.model),
            escape(row.model_type),
            escape(row.strategy),
        )
    return table


def format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
