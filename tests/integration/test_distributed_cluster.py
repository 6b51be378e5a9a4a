"""Distributed fine-tunes through the whole platform: a job with workers_per_host 2 runs as two
ranks on one agent, reports like any job, and survives its agent being killed mid-task (the
ranks die with it; the task resumes from rank 0's checkpoint on the other agent)."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from support.cluster_jobs import (
    FAST_LEASES,
    assert_complete_series,
    checkpoint_written,
    finetune_spec,
    job_log_lines,
    wait_until,
)


def distributed_spec(dataset: DemoDatasetInfo, epochs: int) -> dict[str, object]:
    spec = finetune_spec(dataset, epochs, workers_per_host=2, strategy="head_only")
    spec["resources"] = {"cpus": 2}
    return spec


def rank_pids(task_id: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "matrec.agent.worker" in cmdline and task_id in cmdline:
            found.append(process.pid)
    return found


def test_two_rank_job_runs_and_reports(tmp_path: Path, small_dataset: DemoDatasetInfo) -> None:
    with (
        LocalCluster(tmp_path / "cluster", agents=1, agent_cpus=2) as cluster,
        cluster.client() as client,
    ):
        job = client.wait(client.submit_job(distributed_spec(small_dataset, 2)).id, 240)
        assert job.state == "succeeded", job.error
        # Steps are global batches: 144 images / 16 = 9 per epoch, as for one process.
        assert_complete_series(client, job, small_dataset, epochs=2)
        lines = job_log_lines(client, job.id)
    assert Path(job.result["model_path"]).is_file()
    assert any("2 ranks on this host" in line for line in lines), lines[:5]
    assert any("2 ranks (" in line and "8 images per rank" in line for line in lines)


def test_agent_killed_mid_task_takes_its_ranks_and_the_task_resumes(
    tmp_path: Path, small_dataset: DemoDatasetInfo
) -> None:
    with (
        LocalCluster(
            tmp_path / "cluster", agents=2, agent_cpus=2, coordinator_args=FAST_LEASES
        ) as cluster,
        cluster.client() as client,
    ):
        job = client.submit_job(distributed_spec(small_dataset, 4))
        wait_until(lambda: checkpoint_written(client, job.id), 180, "a checkpoint")
        task = client.get_job(job.id).tasks[0]
        ranks = rank_pids(task.id)
        assert len(ranks) == 2
        agent = next(i for i in range(2) if cluster.agent_name(i) in {
                a.name for a in client.list_agents() if a.id == task.agent_id
            })  # fmt: skip
        cluster.kill_agent(agent)
        wait_until(lambda: not any(psutil.pid_exists(p) for p in ranks), 30, "ranks to die")
        final = client.wait(job.id, 300)
        lines = job_log_lines(client, job.id)
        assert final.state == "succeeded", final.error
        assert_complete_series(client, final, small_dataset, epochs=4)
    assert final.tasks[0].attempt == 2
    assert any(e.kind == "requeued" or "requeued" in e.message for e in final.history)
    assert final.tasks[0].agent_id != task.agent_id, "attempt 2 ran on the killed agent"
    # Resumed from rank 0's last checkpoint (an epoch end: 9 steps per epoch), not from scratch.
    resumed = [
        int(m[1]) for line in lines if (m := re.search(r"^resuming from .* at step (\d+)", line))
    ]
    assert len(resumed) == 1, lines
    assert resumed[0] >= 9 and resumed[0] % 9 == 0, resumed
