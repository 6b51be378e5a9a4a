"""Reports built from hand-made SDK objects: the model, the JSON schema, PNG and HTML output."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime

import jsonschema
import pytest
from matrec.sdk.evaluation import ClassMetrics, Evaluation
from matrec.sdk.reports import (
    build_report,
    compare,
    export_comparison,
    export_report,
    load_schema,
    validate_document,
)
from matrec.sdk.reports.charts import DPI, PNG_SIGNATURE, SUMMARY_SIZE, learning_curves_png
from matrec.sdk.reports.model import ReportSchemaError, normalize_rows
from matrec.sdk.types import Job, JobSpec, Metric, Resources
from PIL import Image

CLASSES = ["brick", "wood<b>", "metal"]
MATRIX = [[3, 1, 0], [0, 4, 0], [0, 0, 0]]


def make_job(*, state: str = "succeeded", name: str = "wood & <metal>") -> Job:
    evaluation = Evaluation(
        accuracy=7 / 8,
        macro_f1=0.6,
        top_k_accuracy=1.0,
        top_k=2,
        classes=CLASSES,
        per_class={
            "brick": ClassMetrics(1.0, 0.75, 0.857, 4),
            "wood<b>": ClassMetrics(0.8, 1.0, 0.889, 4),
            "metal": ClassMetrics(0.0, 0.0, 0.0, 0),
        },
        confusion_matrix=MATRIX,
    )
    result = (
        {}
        if state != "succeeded"
        else {
            "val_accuracy": 0.875,
            "val_loss": 0.4,
            "epochs": 2.0,
            "model_type": "cnn",
            "strategy": "full",
            "classes": CLASSES,
            "evaluation": evaluation.to_dict(),
        }
    )
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Job(
        id="job-abc",
        spec=JobSpec(
            name=name,
            kind="finetune",
            config={"model": "resnet18", "epochs": 2.0, "dataset_path": "/data/x"},
            resources=Resources(),
            max_attempts=3,
            labels={},
        ),
        state=state,
        created_at=when,
        started_at=when,
        finished_at=when if state == "succeeded" else None,
        error="",
        tasks=[],
        result=result,
        cancel_requested=False,
    )


def make_metrics() -> list[Metric]:
    metrics = [Metric("t", 1, step, "train/loss", 2.0 / step, None) for step in range(1, 7)]
    for epoch, step in ((1, 3), (2, 6)):
        values = {
            "train/loss_epoch": 1.0 / epoch,
            "train/accuracy": 0.4 * epoch,
            "val/loss": 1.2 / epoch,
            "val/accuracy": 0.3 + 0.3 * epoch,
            "val/macro_f1": 0.25 * epoch,
            "lr": 0.01,
            "epoch": float(epoch),
        }
        metrics += [Metric("t", 1, step, key, value, None) for key, value in values.items()]
    # A resumed attempt reported step 6 again: its value wins.
    metrics.append(Metric("t", 2, 6, "train/loss", 0.25, None))
    return metrics


def test_report_model() -> None:
    report = build_report(make_job(), make_metrics())
    assert [p.step for p in report.curves["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert report.curves["train/loss"][-1].value == 0.25
    assert [(row.epoch, row.step) for row in report.epochs] == [(1, 3), (2, 6)]
    assert report.epochs[1].values["val/accuracy"] == pytest.approx(0.9)
    assert report.final_val_accuracy == 0.875
    assert report.evaluation is not None
    assert [row.name for row in report.evaluation.per_class] == CLASSES
    assert report.evaluation.confusion.counts == MATRIX


def test_confusion_normalisation_by_hand() -> None:
    assert normalize_rows([[3, 1, 0], [0, 4, 0], [0, 0, 0]]) == [
        [0.75, 0.25, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0],
    ]
    assert normalize_rows([[1, 1], [2, 6]]) == [[0.5, 0.5], [0.25, 0.75]]


def test_json_validates_against_the_schema() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for job in (make_job(), make_job(state="running")):
        document = json.loads(export_report(build_report(job, make_metrics()), "json"))
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    running = json.loads(export_report(build_report(make_job(state="running"), []), "json"))
    assert running["job"]["state"] == "running"
    assert running["evaluation"] is None and running["final_val_accuracy"] is None
    document = json.loads(export_report(build_report(make_job(), make_metrics()), "json"))
    assert document["evaluation"]["confusion_matrix"]["normalized"][0] == [0.75, 0.25, 0.0]
    assert document["curves"]["val/accuracy"] == [[3, 0.6], [6, pytest.approx(0.9)]]


def test_schema_rejects_a_broken_document() -> None:
    document = build_report(make_job(), make_metrics()).to_json_dict()
    document["evaluation"]["confusion_matrix"]["counts"][0][0] = -1
    with pytest.raises(ReportSchemaError, match="confusion_matrix"):
        validate_document(document)


def decode_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_report() -> None:
    image = decode_png(export_report(build_report(make_job(), make_metrics()), "png"))
    assert image.size == (int(SUMMARY_SIZE[0] * DPI), int(SUMMARY_SIZE[1] * DPI))
    assert len(image.convert("L").getcolors(256) or []) > 10  # drawn, not blank
    # Charts also draw for a job with nothing stored yet.
    empty = build_report(make_job(state="queued"), [])
    decode_png(export_report(empty, "png"))
    decode_png(learning_curves_png(empty))


def test_html_is_self_contained_and_escaped() -> None:
    html = export_report(build_report(make_job(), make_metrics()), "html").decode()
    images = re.findall(r'<img id="([\w-]+)" alt="[^"]*" src="data:image/png;base64,', html)
    assert images == ["chart-curves", "chart-confusion-counts", "chart-confusion-normalized"]
    assert not re.search(r"https?://", html)
    assert "<script" not in html
    assert "wood &amp; &lt;metal&gt;" in html and "<metal>" not in html
    assert "wood&lt;b&gt;" in html and "wood<b>" not in html


def test_comparison() -> None:
    first = build_report(make_job(), make_metrics())
    second = build_report(make_job(state="running", name="second"), make_metrics()[:10])
    comparison = compare([first, second])
    # The running job has no result yet: its last stored val/accuracy stands in.
    assert [row.final_val_accuracy for row in comparison.rows] == [0.875, 0.6]
    assert comparison.rows[1].epochs == 0  # its "epoch" point is not stored yet
    assert comparison.rows[0].epochs == 2 and comparison.rows[0].model == "resnet18"
    assert comparison.rows[0].macro_f1 == 0.6
    document = json.loads(export_comparison([first, second], "json"))
    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)
    html = export_comparison([first, second], "html").decode()
    assert 'id="chart-comparison"' in html and not re.search(r"https?://", html)
    decode_png(export_comparison([first, second], "png"))
