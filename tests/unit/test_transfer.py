"""`transfer_learn` in-process, its local validation, and the typed `Evaluation`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matrec.sdk import (
    ClassMetrics,
    Evaluation,
    InvalidSpecError,
    JobFailedError,
    TransferResult,
    transfer_learn,
)
from matrec.sdk.address import ADDRESS_ENV
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.evaluation import EvaluationMissingError

TINY: dict[str, Any] = {"model": "resnet18", "image_size": 32, "num_workers": 0}


@pytest.fixture(autouse=True)
def _no_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)


def _evaluation() -> Evaluation:
    return Evaluation(
        accuracy=0.75,
        macro_f1=0.7,
        top_k_accuracy=1.0,
        top_k=2,
        classes=["brick", "fur"],
        per_class={
            "brick": ClassMetrics(precision=1.0, recall=0.5, f1=0.6667, support=2),
            "fur": ClassMetrics(precision=0.6667, recall=1.0, f1=0.8, support=2),
        },
        confusion_matrix=[[1, 1], [0, 2]],
    )


def _as_struct(value: Any) -> Any:
    """What a protobuf Struct does to a value: every number becomes a float."""
    if isinstance(value, dict):
        return {key: _as_struct(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_struct(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def test_evaluation_round_trips_through_a_struct() -> None:
    evaluation = _evaluation()
    through_struct = _as_struct({"val_accuracy": 0.75, "evaluation": evaluation.to_dict()})
    assert through_struct["evaluation"]["confusion_matrix"] == [[1.0, 1.0], [0.0, 2.0]]
    back = Evaluation.from_result(through_struct)
    assert back == evaluation
    assert isinstance(back.top_k, int) and isinstance(back.confusion_matrix[0][0], int)
    assert isinstance(back.per_class["fur"].support, int)
    assert back.support == 4


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"evaluation": "x"},
        {"evaluation": {"accuracy": 1.0}},
        {"evaluation": {**_evaluation().to_dict(), "confusion_matrix": [[1.5]]}},
        {"evaluation": {**_evaluation().to_dict(), "top_k": True}},
    ],
)
def test_missing_or_malformed_evaluation(result: dict[str, Any]) -> None:
    with pytest.raises(EvaluationMissingError):
        Evaluation.from_result(result)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strategy": "everything"}, "config.strategy"),
        ({"epochs": 0}, "config.epochs"),
        ({"model_type": "transformer"}, "config.model_type"),
        ({"colour": "red"}, "config.colour"),
        ({"optimizer": "lbfgs"}, "config.optimizer"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, kwargs: dict[str, Any], field: str) -> None:
    # Checked before anything else: the dataset does not even exist.
    with pytest.raises(InvalidSpecError) as caught:
        transfer_learn(tmp_path / "nowhere", **kwargs)
    assert caught.value.field == field


def test_missing_dataset_is_an_invalid_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        transfer_learn(tmp_path / "nowhere", epochs=1)
    assert caught.value.field == "config.dataset_path"


def test_not_waiting_needs_a_coordinator(small_dataset: DemoDatasetInfo) -> None:
    with pytest.raises(ValueError, match="coordinator"):
        transfer_learn(small_dataset.path, wait=False, **TINY)


def _check_consistent(result: TransferResult, dataset: DemoDatasetInfo) -> None:
    evaluation = result.evaluation
    val_images = sum(dataset.val_counts.values())
    assert evaluation.classes == sorted(dataset.val_counts)
    assert evaluation.support == val_images
    correct = sum(evaluation.confusion_matrix[i][i] for i in range(len(evaluation.classes)))
    assert evaluation.accuracy == pytest.approx(correct / val_images)
    assert evaluation.accuracy == pytest.approx(result.val_accuracy)
    assert evaluation.top_k_accuracy >= evaluation.accuracy
    for name, row in zip(evaluation.classes, evaluation.confusion_matrix, strict=True):
        assert evaluation.per_class[name].support == sum(row) == dataset.val_counts[name]
    assert Path(result.model_path).is_file()


def test_in_process_transfer_learn(tmp_path: Path, small_dataset: DemoDatasetInfo) -> None:
    reports: list[tuple[int, dict[str, float]]] = []
    result = transfer_learn(
        small_dataset.path,
        epochs=1,
        batch_size=16,
        artifact_dir=tmp_path / "cnn",
        progress=lambda step, values: reports.append((step, values)),
        **TINY,
    )
    assert result.job_id is None
    assert result.result["model_type"] == "cnn"
    assert Path(result.model_path).parent == tmp_path / "cnn"
    _check_consistent(result, small_dataset)
    assert any("val/accuracy" in values for _, values in reports)

    # The seed's positional form: pretrained weights and the hybrid model, head only.
    hybrid = transfer_learn(
        small_dataset.path,
        result.model_path,
        "hybrid",
        1,
        16,
        strategy="head_only",
        artifact_dir=tmp_path / "hybrid",
        progress=lambda step, values: None,
        **TINY,
    )
    assert hybrid.result["model_type"] == "hybrid"
    assert hybrid.result["strategy"] == "head_only"
    _check_consistent(hybrid, small_dataset)


def test_in_process_failure_is_a_job_failed_error(
    tmp_path: Path, small_dataset: DemoDatasetInfo
) -> None:
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(JobFailedError, match=r"weights\.pt") as caught:
        transfer_learn(
            small_dataset.path,
            garbage,
            epochs=1,
            artifact_dir=tmp_path / "run",
            progress=lambda step, values: None,
            **TINY,
        )
    assert caught.value.job_id is None
