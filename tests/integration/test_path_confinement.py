"""An agent started with --allowed-path runs tasks whose data lies under its roots and refuses,
at once and without retrying, tasks that name anything else: a dataset, a pretrained model or
an image listed in a scoring manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

CONFIG = {"model": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 16}


def test_the_agent_runs_only_tasks_under_its_allowed_paths(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    inside = allowed / "materials"
    shutil.copytree(small_dataset.path, inside)
    outside = small_dataset.path
    cluster_dir = tmp_path / "cluster"
    # The artifact root is allowed too: scoring reads the trained model from it.
    roots = ["--allowed-path", str(allowed), "--allowed-path", str(cluster_dir / "artifacts")]
    with (
        LocalCluster(cluster_dir, agents=1, agent_args=roots) as cluster,
        cluster.client() as client,
    ):
        trained = client.wait(
            client.submit_job({"config": {"dataset_path": str(inside), **CONFIG}}).id, 300
        )
        assert trained.state == "succeeded", trained.error

        refused = client.wait(
            client.submit_job({"config": {"dataset_path": str(outside), **CONFIG}}).id, 120
        )
        assert refused.state == "failed"
        assert "config.dataset_path" in refused.error and "allowed paths" in refused.error
        assert refused.tasks[0].attempt == 1  # not retried: another attempt would fail the same

        manifest = allowed / "pool.txt"
        outside_image = next((outside / "val").glob("*/*.png"))
        manifest.write_text(f"{next((inside / 'val').glob('*/*.png'))}\n{outside_image}\n")
        score = {"model_path": trained.result["model_path"], "pool_path": str(manifest)}
        scored = client.wait(client.submit_job({"kind": "score", "config": score}).id, 120)
        assert scored.state == "failed"
        assert "pool image" in scored.error and str(outside_image) in scored.error
