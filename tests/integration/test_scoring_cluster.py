"""The `score` job kind through a real coordinator and agent: a finetune's model.pt scores a pool
folder, and the scores come back as a recorded "scores" artifact: sent over the agent's stream
into the coordinator's own folder, not read from where the agent wrote them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matrec.common.active_learning.pool_scores import SCORES_FILE, PoolScores
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from support.cluster_jobs import finetune_spec

pytestmark = pytest.mark.slow


def _score_spec(model_path: str, pool: Path) -> dict[str, Any]:
    return {
        "name": "score-integration",
        "kind": "score",
        "config": {
            "model_path": model_path,
            "pool_path": str(pool),
            "batch_size": 16,
            "mc_dropout_passes": 2,
        },
    }


def test_a_score_job_scores_a_finetunes_model_over_a_pool(
    tmp_path: Path, small_dataset: DemoDatasetInfo
) -> None:
    pool = small_dataset.path / "val"
    pool_size = sum(small_dataset.val_counts.values())
    with LocalCluster(tmp_path / "cluster", agents=1) as cluster, cluster.client() as client:
        trained = client.submit_job(finetune_spec(small_dataset, epochs=1, dropout_rate=0.3))
        trained = client.wait(trained.id, 180)
        assert trained.state == "succeeded", trained.error
        model_path = trained.result["model_path"]

        scored = client.wait(client.submit_job(_score_spec(model_path, pool)).id, 180)
        assert scored.state == "succeeded", scored.error
        result = scored.result
        assert result["samples"] == pool_size and result["skipped_images"] == 0
        assert result["classes"] == sorted(small_dataset.val_counts)
        assert result["embedding_dim"] == 512 and result["mc_dropout_passes"] == 2
        assert result["scored_model_path"] == model_path
        assert Path(result["scores_path"]).name == SCORES_FILE
        task = scored.tasks[0]
        received = cluster.artifact_root / scored.id / "received" / f"{task.id}-a{task.attempt}"
        assert result["scores_path"] == str(received / SCORES_FILE)
        written = Path(task.artifact_dir) / SCORES_FILE  # where the agent's worker wrote them
        assert written.read_bytes() == Path(result["scores_path"]).read_bytes()

        # The scores file is the job's only artifact: the model it ran is an input.
        assert [a.kind for a in client.list_artifacts(scored.id)] == ["scores"]
        artifacts = client.list_artifacts(scored.id)
        assert [a.uri for a in artifacts] == [result["scores_path"]]
        assert artifacts[0].size_bytes == Path(result["scores_path"]).stat().st_size > 0
        scores = PoolScores.load(Path(artifacts[0].uri))
        assert len(scores.sample_ids) == pool_size == scores.probabilities.shape[0]
        assert sorted(scores.sample_ids) == sorted(
            path.relative_to(pool).as_posix() for path in pool.rglob("*.png")
        )
        np.testing.assert_allclose(scores.probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert scores.mc_probabilities is not None
        assert scores.mc_probabilities.shape == (2, pool_size, len(result["classes"]))

        done = [m.value for m in client.job_metrics(scored.id) if m.key == "score/done"]
        assert done and done[-1] == float(pool_size)
        assert any(m.key == "score/mean_entropy" for m in client.job_metrics(scored.id))

        # A model file that is not there fails the job at once, with a message that says so.
        missing_model = str(tmp_path / "missing.pt")
        missing = client.wait(client.submit_job(_score_spec(missing_model, pool)).id, 120)
        assert missing.state == "failed"
        assert "missing.pt" in missing.error and "is not a file" in missing.error
        assert missing.tasks[0].attempt == 1, "an invalid input was retried"
