"""Multi-host fine-tunes: a job with `hosts: 2` is one gang of two tasks, placed all at once on
two agents whose ranks train together (no SSH: the rendezvous goes through the shared artifact
storage). Two agents x one rank take the same steps as one process; killing one agent of the
gang stops the other's ranks and the gang resumes from rank 0's checkpoint on the agents left."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import LogsEvent
from support.cluster_jobs import FAST_LEASES, finetune_spec, wait_until


def exact_spec(dataset: DemoDatasetInfo, **extra: Any) -> dict[str, Any]:
    # Frozen BatchNorm and no augmentation: the ranks' slices give one process's gradients.
    return finetune_spec(dataset, 1, strategy="head_only", augmentation="none", seed=0, **extra)


def weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model_state"]


def rank_pids(task_id: str) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "matrec.agent.worker" in " ".join(p.info["cmdline"] or [])
        and task_id in " ".join(p.info["cmdline"] or [])
    ]


@pytest.mark.parametrize("backend", ["torch", "horovod"])
def test_two_agents_one_rank_each_match_one_process(
    backend: str, tmp_path: Path, small_dataset: DemoDatasetInfo
) -> None:
    with LocalCluster(tmp_path / "cluster", agents=2) as cluster, cluster.client() as client:
        single = client.wait(client.submit_job(exact_spec(small_dataset)).id, 180)
        spec = exact_spec(small_dataset, hosts=2, backend=backend, network_interface="lo")
        gang = client.wait(client.submit_job(spec).id, 240)
        assert single.state == "succeeded", single.error
        assert gang.state == "succeeded", gang.error
        assert len(gang.tasks) == 2
        assert len({t.agent_id for t in gang.tasks}) == 2, "both members on one agent"
        metrics = [m for m in client.job_metrics(gang.id) if m.key == "train/loss"]
        single_metrics = [m for m in client.job_metrics(single.id) if m.key == "train/loss"]
    # One result (member 0's), one series of global steps.
    assert gang.result["steps"] == single.result["steps"] == 9
    assert [m.step for m in metrics] == list(range(1, 10))
    for mine, theirs in zip(metrics, single_metrics, strict=True):
        assert mine.value == pytest.approx(theirs.value, rel=1e-4)
    ones, twos = weights(single.result["model_path"]), weights(gang.result["model_path"])
    for name, tensor in ones.items():
        torch.testing.assert_close(twos[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_killing_one_agent_of_a_gang_stops_the_other_and_the_gang_resumes(
    tmp_path: Path, small_dataset: DemoDatasetInfo
) -> None:
    spec = finetune_spec(
        small_dataset, 6, hosts=2, backend="torch", network_interface="lo", strategy="head_only"
    )
    with (
        LocalCluster(tmp_path / "cluster", agents=3, coordinator_args=FAST_LEASES) as cluster,
        cluster.client() as client,
    ):
        job = client.submit_job(spec)
        wait_until(
            lambda: bool(client.get_job(job.id).tasks[0].checkpoint_path), 240, "a checkpoint"
        )
        running = client.get_job(job.id)
        names = {a.id: a.name for a in client.list_agents()}
        victim_task, survivor_task = running.tasks[1], running.tasks[0]
        victim = next(i for i in range(3) if cluster.agent_name(i) == names[victim_task.agent_id])
        survivors = rank_pids(survivor_task.id)
        assert survivors, "member 0's rank is not running"
        killed_at = time.monotonic()
        cluster.kill_agent(victim)
        wait_until(
            lambda: not any(psutil.pid_exists(p) for p in survivors), 60, "the other ranks to stop"
        )
        stopped_after = time.monotonic() - killed_at
        final = client.wait(job.id, 300)
        lines = [
            line.text
            for event in client.watch(job.id, include_logs=True)
            if isinstance(event, LogsEvent)
            for line in event.lines
        ]
    assert final.state == "succeeded", final.error
    assert stopped_after < 60
    # Placed again on the two agents left, and resumed rather than restarted.
    assert {t.agent_id for t in final.tasks}.isdisjoint({victim_task.agent_id})
    kinds = {(e.task_id, e.attempt, e.kind) for e in final.history}
    assert (victim_task.id, 1, "lease_expired") in kinds
    assert {(t.id, 2, "assigned") for t in final.tasks} <= kinds  # placed again, together
    assert any(line.startswith("resuming from") and "last.pt" in line for line in lines), lines
    assert final.result["epochs"] == 6
