"""`JobReport`: what a training report says about one job, built from the SDK's views.

A report holds the job's identity, state, times and config, its learning curves (every stored
metric key as a series of (step, value) points), one row per finished epoch and, where the job's
result holds one, the evaluation: per-class metrics and the confusion matrix as counts and
row-normalised (each true class's row sums to 1). A job that has not finished still gets a report
of what is stored so far. `to_json_dict` gives the document that ``report.schema.json``
describes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from matrec.sdk.evaluation import Evaluation, EvaluationMissingError
from matrec.sdk.types import Job, Metric

SCHEMA_VERSION = 1
SCHEMA_FILE = "report.schema.json"

#: The metrics a fine-tune reports once per epoch, at the epoch's last step.
EPOCH_KEYS: tuple[str, ...] = (
    "train/loss_epoch",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "val/macro_f1",
    "lr",
)


@dataclass(frozen=True)
class Point:
    step: int
    value: float


@dataclass(frozen=True)
class EpochRow:
    """The metrics reported at the end of one epoch (keys of EPOCH_KEYS that were stored)."""

    epoch: int
    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class ClassRow:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ConfusionMatrix:
    """Rows are true classes, columns predicted ones; `normalized` divides each row by its sum
    (a row with no images stays all zeros)."""

    classes: list[str]
    counts: list[list[int]]
    normalized: list[list[float]]


@dataclass(frozen=True)
class EvaluationSection:
    accuracy: float
    macro_f1: float
    top_k: int
    top_k_accuracy: float
    per_class: list[ClassRow]
    confusion: ConfusionMatrix


@dataclass(frozen=True)
class JobReport:
    job_id: str
    name: str
    kind: str
    state: str
    error: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    config: dict[str, Any]
    #: The job's result summary (numbers and strings only; the evaluation is its own section).
    summary: dict[str, Any]
    curves: dict[str, list[Point]]
    epochs: list[EpochRow]
    evaluation: EvaluationSection | None

    @property
    def final_val_accuracy(self) -> float | None:
        """The result's val_accuracy; for a job without one, the last stored val/accuracy."""
        value = self.summary.get("val_accuracy")
        if isinstance(value, int | float):
            return float(value)
        series = self.curves.get("val/accuracy")
        return series[-1].value if series else None

    @property
    def final_macro_f1(self) -> float | None:
        if self.evaluation is not None:
            return self.evaluation.macro_f1
        series = self.curves.get("val/macro_f1")
        return series[-1].value if series else None

    def setting(self, key: str, default: str = "") -> str:
        """A setting as the result reports it, else as the config asked for it."""
        value = self.summary.get(key, self.config.get(key, default))
        return str(value)

    def to_json_dict(self) -> dict[str, Any]:
        evaluation = None
        if self.evaluation is not None:
            ev = self.evaluation
            evaluation = {
                "accuracy": ev.accuracy,
                "macro_f1": ev.macro_f1,
                "top_k": ev.top_k,
                "top_k_accuracy": ev.top_k_accuracy,
                "per_class": [
                    {
                        "name": row.name,
                        "precision": row.precision,
                        "recall": row.recall,
                        "f1": row.f1,
                        "support": row.support,
                    }
                    for row in ev.per_class
                ],
                "confusion_matrix": {
                    "classes": ev.confusion.classes,
                    "counts": ev.confusion.counts,
                    "normalized": ev.confusion.normalized,
                },
            }
        return {
            "schema_version": SCHEMA_VERSION,
            "type": "job_report",
            "job": {
                "id": self.job_id,
                "name": self.name,
                "kind": self.kind,
                "state": self.state,
                "error": self.error,
                "created_at": _iso(self.created_at),
                "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at),
                "config": _plain(self.config),
            },
            "summary": _plain(self.summary),
            "final_val_accuracy": self.final_val_accuracy,
            "curves": {
                key: [[point.step, point.value] for point in points]
                for key, points in self.curves.items()
            },
            "epochs": [
                {"epoch": row.epoch, "step": row.step, "values": row.values} for row in self.epochs
            ],
            "evaluation": evaluation,
        }


def build_report(job: Job, metrics: Iterable[Metric]) -> JobReport:
    """The report of `job` with its stored `metrics` (in any order)."""
    curves = learning_curves(metrics)
    evaluation: EvaluationSection | None = None
    with contextlib.suppress(EvaluationMissingError):
        evaluation = evaluation_section(Evaluation.from_result(job.result))
    summary = {
        key: value
        for key, value in job.result.items()
        if key != "evaluation" and isinstance(value, str | int | float | bool)
    }
    return JobReport(
        job_id=job.id,
        name=job.name,
        kind=job.kind,
        state=job.state,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        config=dict(job.spec.config),
        summary=summary,
        curves=curves,
        epochs=epoch_rows(curves),
        evaluation=evaluation,
    )


def learning_curves(metrics: Iterable[Metric]) -> dict[str, list[Point]]:
    """Per key, one point per step ordered by step; where a step was reported by more than one
    attempt (a resumed task), the latest attempt's value wins."""
    latest: dict[str, dict[int, tuple[int, float]]] = {}
    for metric in metrics:
        per_step = latest.setdefault(metric.key, {})
        seen = per_step.get(metric.step)
        if seen is None or metric.attempt >= seen[0]:
            per_step[metric.step] = (metric.attempt, float(metric.value))
    return {
        key: [Point(step, value) for step, (_, value) in sorted(per_step.items())]
        for key, per_step in sorted(latest.items())
    }


def epoch_rows(curves: Mapping[str, Sequence[Point]]) -> list[EpochRow]:
    """One row per point of the "epoch" series, with the EPOCH_KEYS values of the same step."""
    by_key = {key: {p.step: p.value for p in curves.get(key, ())} for key in EPOCH_KEYS}
    rows = []
    for point in curves.get("epoch", ()):
        values = {key: by_key[key][point.step] for key in EPOCH_KEYS if point.step in by_key[key]}
        rows.append(EpochRow(epoch=round(point.value), step=point.step, values=values))
    return rows


def normalize_rows(counts: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each row divided by its sum; a row summing to 0 stays all zeros."""
    normalized = []
    for row in counts:
        total = sum(row)
        normalized.append([cell / total if total else 0.0 for cell in row])
    return normalized


def evaluation_section(evaluation: Evaluation) -> EvaluationSection:
    per_class = [
        ClassRow(
            name=name,
            precision=evaluation.per_class[name].precision,
            recall=evaluation.per_class[name].recall,
            f1=evaluation.per_class[name].f1,
            support=evaluation.per_class[name].support,
        )
        for name in evaluation.classes
        if name in evaluation.per_class
    ]
    counts = [list(row) for row in evaluation.confusion_matrix]
    return EvaluationSection(
        accuracy=evaluation.accuracy,
        macro_f1=evaluation.macro_f1,
        top_k=evaluation.top_k,
        top_k_accuracy=evaluation.top_k_accuracy,
        per_class=per_class,
        confusion=ConfusionMatrix(
            classes=list(evaluation.classes), counts=counts, normalized=normalize_rows(counts)
        ),
    )


def load_schema() -> dict[str, Any]:
    """The JSON Schema of report and comparison documents (shipped with the package)."""
    text = resources.files("matrec.sdk.reports").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_document(document: Mapping[str, Any]) -> None:
    """Raise ReportSchemaError when `document` does not follow report.schema.json."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(document)"
        raise ReportSchemaError(f"report does not follow its schema at {where}: {error.message}")


class ReportSchemaError(ValueError):
    """A report document that does not follow report.schema.json (a bug, not a user error)."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _plain(value: Any) -> Any:
    """JSON-able copy: mappings and sequences recursively, anything unknown as its str."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
