"""`matrec-ctl show` renders a finetune job's evaluation: summary, per-class table, confusion."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from matrec.sdk.ctl.render import job_detail, to_json
from matrec.sdk.evaluation import Evaluation
from matrec.sdk.types import Job, JobSpec, Resources
from rich.console import Console

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CLASSES = ["brick", "fur", "gravel"]


def _struct_evaluation() -> dict[str, Any]:
    """An evaluation as it comes back through the coordinator: every number a float."""
    return {
        "accuracy": 0.8,
        "macro_f1": 0.7917,
        "top_k_accuracy": 1.0,
        "top_k": 3.0,
        "classes": CLASSES,
        "per_class": {
            "brick": {"precision": 0.8, "recall": 1.0, "f1": 0.8889, "support": 4.0},
            "fur": {"precision": 1.0, "recall": 0.75, "f1": 0.8571, "support": 4.0},
            "gravel": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2.0},
        },
        "confusion_matrix": [[4.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 1.0]],
    }


def _job(result: dict[str, Any]) -> Job:
    return Job(
        id="job-1",
        spec=JobSpec(
            name="wood",
            kind="finetune",
            config={"dataset_path": "/d", "model_type": "hybrid"},
            resources=Resources(cpus=1.0),
            max_attempts=3,
            labels={},
        ),
        state="succeeded",
        created_at=T0,
        started_at=T0,
        finished_at=T0,
        error="",
        tasks=[],
        result=result,
        cancel_requested=False,
    )


def _text(job: Job) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(job_detail(job))
    # Without the panels' borders, so that rows can be matched from their start.
    return "\n".join(line.strip("│ ").rstrip() for line in console.export_text().splitlines())


def test_show_prints_the_evaluation() -> None:
    text = _text(_job({"val_accuracy": 0.8, "evaluation": _struct_evaluation()}))
    assert "evaluation" in text
    assert "macro-F1        0.7917" in text
    assert "top-3 accuracy  1.0000" in text
    assert ["brick", "0.800", "1.000", "0.889", "4"] in [line.split() for line in text.splitlines()]
    assert "TRUE \\ PREDICTED" in text
    confusion_rows = [line.split() for line in text.splitlines() if line.strip()]
    assert ["fur", "0", "3", "1"] in confusion_rows
    assert ["gravel", "1", "0", "1"] in confusion_rows
    # The nested dict is not dumped into the result panel as well.
    assert "'per_class'" not in text


def test_show_without_evaluation_is_unchanged() -> None:
    text = _text(_job({"val_accuracy": 0.8}))
    assert "val_accuracy" in text
    assert "confusion matrix" not in text


def test_malformed_evaluation_stays_raw() -> None:
    text = _text(_job({"evaluation": {"accuracy": 0.5}}))
    assert "confusion matrix" not in text
    assert "accuracy" in text


def test_json_round_trips_to_the_same_evaluation() -> None:
    import json

    job = _job({"evaluation": _struct_evaluation()})
    shown = json.loads(to_json(job))
    assert Evaluation.from_result(shown["result"]) == Evaluation.from_result(job.result)
