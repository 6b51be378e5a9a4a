"""Training reports: learning curves, confusion matrices, per-class metrics and comparisons of
several jobs, and reports of hyperparameter studies (optimisation history, objective by
hyperparameter, intermediate values, trials best first), as self-contained HTML, JSON
(``report.schema.json``) or PNG.

>>> from matrec.sdk import Client
>>> from matrec.sdk.reports import fetch_report, export_report
>>> with Client() as client:
...     Path("report.html").write_bytes(export_report(fetch_report(client, job_id), "html"))
...     Path("study.html").write_bytes(export_study_report(fetch_study_report(client, sid), "html"))

matplotlib and jsonschema are imported only when a chart is drawn or a document validated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrec.sdk.reports.compare import Comparison, ComparisonRow, compare
from matrec.sdk.reports.model import (
    JobReport,
    ReportSchemaError,
    build_report,
    load_schema,
    validate_document,
)
from matrec.sdk.reports.study import StudyReport, build_study_report

if TYPE_CHECKING:
    from matrec.sdk.client import Client

FORMATS: tuple[str, ...] = ("html", "json", "png")

__all__ = [
    "FORMATS",
    "Comparison",
    "ComparisonRow",
    "JobReport",
    "ReportSchemaError",
    "StudyReport",
    "build_report",
    "build_study_report",
    "compare",
    "export_comparison",
    "export_report",
    "export_study_report",
    "fetch_report",
    "fetch_study_report",
    "load_schema",
    "validate_document",
    "write_reports",
]


def fetch_report(client: Client, job_id: str) -> JobReport:
    """The report of a job as the coordinator stores it now (raises JobNotFoundError)."""
    job = client.get_job(job_id)
    return build_report(job, client.job_metrics(job_id))


def export_report(report: JobReport, fmt: str) -> bytes:
    """The report as a file's bytes: "html", "json" (validated against the schema) or "png"
    (learning curves and the normalised confusion matrix side by side)."""
    if fmt == "json":
        return _json_bytes(report.to_json_dict())
    if fmt == "html":
        from matrec.sdk.reports.html import report_html

        return report_html(report).encode("utf-8")
    if fmt == "png":
        from matrec.sdk.reports.charts import summary_png

        return summary_png(report)
    raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")


def write_reports(
    client: Client, folder: Path, job_id: str, study_id: str | None = None
) -> tuple[Path, Path, Path | None]:
    """report.html and report.json of a job (and study.html, study.json of a study) in
    `folder`, created if needed; their paths (the study's HTML None without a study). Raises
    OSError when a file cannot be written, ValueError when a report does not validate."""
    folder.mkdir(parents=True, exist_ok=True)
    report = fetch_report(client, job_id)
    html, document = folder / "report.html", folder / "report.json"
    html.write_bytes(export_report(report, "html"))
    document.write_bytes(export_report(report, "json"))
    if study_id is None:
        return html, document, None
    study = fetch_study_report(client, study_id)
    study_html = folder / "study.html"
    study_html.write_bytes(export_study_report(study, "html"))
    (folder / "study.json").write_bytes(export_study_report(study, "json"))
    return html, document, study_html


def export_comparison(reports: Sequence[JobReport], fmt: str) -> bytes:
    """The comparison of several jobs as a file's bytes (see export_report for the formats)."""
    comparison = compare(reports)
    if fmt == "json":
        return _json_bytes(comparison.to_json_dict())
    if fmt == "html":
        from matrec.sdk.reports.html import comparison_html

        return comparison_html(comparison).encode("utf-8")
    if fmt == "png":
        from matrec.sdk.reports.charts import comparison_png

        return comparison_png(comparison)
    raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")


def fetch_study_report(client: Client, study_id: str) -> StudyReport:
    """The report of a study as the coordinator stores it now, every trial with its intermediate
    values (raises StudyNotFoundError)."""
    return build_study_report(client.get_study(study_id))


def export_study_report(report: StudyReport, fmt: str) -> bytes:
    """The study's report as a file's bytes: "html", "json" (validated against the schema) or
    "png" (history and intermediate values on top, the objective by hyperparameter below)."""
    if fmt == "json":
        return _json_bytes(report.to_json_dict())
    if fmt == "html":
        from matrec.sdk.reports.html import study_html

        return study_html(report).encode("utf-8")
    if fmt == "png":
        from matrec.sdk.reports.charts import study_summary_png

        return study_summary_png(report)
    raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _json_bytes(document: dict[str, Any]) -> bytes:
    validate_document(document)
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")
