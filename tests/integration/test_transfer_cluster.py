"""`transfer_learn` against a real coordinator and agent: the evaluation survives the trip.

The job's evaluation as `transfer_learn` returns it, as `Client.evaluation` reads it back and as
`matrec-ctl show --json` prints it must be one and the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk import Client, Evaluation, JobFailedError, JobStateError, transfer_learn
from matrec.sdk.ctl.app import app
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), agents=1) as running:
        yield running


def test_transfer_learn_on_the_cluster(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    reports: list[tuple[int, dict[str, float]]] = []
    result = transfer_learn(
        small_dataset.path,
        model_type="cnn",
        epochs=1,
        batch_size=16,
        coordinator=cluster.address,
        timeout=300,
        progress=lambda step, values: reports.append((step, values)),
        model="resnet18",
        image_size=32,
        name="transfer-integration",
    )
    assert result.job_id is not None
    evaluation = result.evaluation
    assert evaluation.classes == sorted(small_dataset.val_counts)
    assert evaluation.support == sum(small_dataset.val_counts.values())
    assert evaluation.accuracy == pytest.approx(result.val_accuracy)
    assert isinstance(evaluation.confusion_matrix[0][0], int)
    assert Path(result.model_path).is_file()
    assert any(values.get("epoch") == 1.0 for _, values in reports), reports

    with cluster.client() as client:
        assert client.evaluation(result.job_id) == evaluation

    shown = CliRunner().invoke(app, ["-c", cluster.address, "show", "--json", result.job_id])
    assert shown.exit_code == 0, shown.output
    assert Evaluation.from_result(json.loads(shown.stdout)["result"]) == evaluation

    table = CliRunner().invoke(app, ["-c", cluster.address, "show", result.job_id])
    assert table.exit_code == 0, table.output
    assert "confusion matrix" in table.stdout and "macro-F1" in table.stdout


def test_a_failed_job_raises_with_its_error(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(JobFailedError) as caught:
        transfer_learn(
            small_dataset.path,
            garbage,
            epochs=1,
            batch_size=16,
            coordinator=cluster.address,
            timeout=300,
            progress=lambda step, values: None,
            image_size=32,
        )
    failed = caught.value
    assert failed.job_id is not None and failed.state == "failed"
    assert "weights.pt" in str(failed)
    with Client(cluster.address) as client, pytest.raises(JobStateError, match="failed"):
        client.evaluation(failed.job_id)
