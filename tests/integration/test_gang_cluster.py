"""Multi-host fine-tunes: a job with `hosts: 2` is one gang of two tasks, placed all at once on
two agents whose ranks train together (no SSH, no shared folder: member 0's agent reports the
rendezvous to the coordinator, which passes it on to the other member's agent). Two agents x one
rank take the same steps as one process; killing one agent of the gang stops the other's ranks
and the gang resumes from rank 0's checkpoint on the agents left."""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import Job
from support.cluster_jobs import FAST_LEASES, finetune_spec, job_log_lines, wait_until
from support.sample_trace import SAMPLE_TRACE_DIR_ENV, assert_ranks_split_each_batch, read_trace


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


LAYOUTS = {
    "2 agents x 1 rank": {"hosts": 2, "network_interface": "lo"},
    "1 agent x 2 ranks": {"workers_per_host": 2},
}


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the cluster's ranks record the images they train on (one job at a time)."""
    return tmp_path_factory.mktemp("samples") / "trace"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, trace_dir: Path) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("gangs")
    env = {SAMPLE_TRACE_DIR_ENV: str(trace_dir)}
    with LocalCluster(root / "cluster", agents=2, agent_cpus=2, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def single(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, trace_dir: Path
) -> tuple[Job, dict[int, list[int]]]:
    """The one-process job, and the batch it trained on at each step."""
    shutil.rmtree(trace_dir, ignore_errors=True)
    with cluster.client() as client:
        job = client.wait(client.submit_job(exact_spec(small_dataset)).id, 180)
    assert job.state == "succeeded", job.error
    return job, read_trace(trace_dir)[0]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("backend", ["torch", "horovod"])
def test_distributed_jobs_take_the_same_steps_as_one_process(
    backend: str,
    layout: str,
    cluster: LocalCluster,
    single: tuple[Job, dict[int, list[int]]],
    small_dataset: DemoDatasetInfo,
    trace_dir: Path,
) -> None:
    single_job, single_batches = single
    shutil.rmtree(trace_dir, ignore_errors=True)
    spec = exact_spec(small_dataset, backend=backend, **LAYOUTS[layout])
    spec["resources"] = {"cpus": 2 if "workers_per_host" in LAYOUTS[layout] else 1}
    with cluster.client() as client:
        job = client.wait(client.submit_job(spec).id, 240)
        assert job.state == "succeeded", job.error
        metrics = [m for m in client.job_metrics(job.id) if m.key == "train/loss"]
        single_metrics = [m for m in client.job_metrics(single_job.id) if m.key == "train/loss"]
    if "hosts" in LAYOUTS[layout]:
        assert len({t.agent_id for t in job.tasks}) == 2, "both members on one agent"
    # One result (rank 0's), one series of global steps.
    assert job.result["steps"] == single_job.result["steps"] == 9
    # Each rank trained on its own half of every global batch of 16, not on the whole batch.
    assert_ranks_split_each_batch(
        read_trace(trace_dir), single_batches, size=2, train_size=144, batch_size=16
    )
    assert [m.step for m in metrics] == list(range(1, 10))
    for mine, theirs in zip(metrics, single_metrics, strict=True):
        assert mine.value == pytest.approx(theirs.value, rel=1e-4)
    assert_same_weights(single_job, job)


def assert_same_weights(single_job: Job, job: Job) -> None:
    ones, twos = weights(single_job.result["model_path"]), weights(job.result["model_path"])
    for name, tensor in ones.items():
        torch.testing.assert_close(twos[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_a_two_host_gang_meets_through_the_coordinator_not_a_folder(
    cluster: LocalCluster, single: tuple[Job, dict[int, list[int]]], small_dataset: DemoDatasetInfo
) -> None:
    """The members' agents each keep a private data dir; the rendezvous travels over their
    streams: no file of it is written anywhere, and the gang still matches one process."""
    single_job, _ = single
    spec = exact_spec(small_dataset, backend="torch", hosts=2, network_interface="lo")
    spec["resources"] = {"cpus": 1}
    log_before = len(cluster.coordinator_log.read_text())
    with cluster.client() as client:
        job = client.wait(client.submit_job(spec).id, 240)
        lines = job_log_lines(client, job.id)
    assert job.state == "succeeded", job.error
    assert len({t.agent_id for t in job.tasks}) == 2, "both members on one agent"
    folders = [cluster.workdir / "agent-0", cluster.workdir / "agent-1", cluster.artifact_root]
    for one, other in itertools.permutations(folders, 2):
        assert not other.is_relative_to(one), f"{other} lies in {one}"
    written = [p for p in cluster.workdir.rglob("*") if "rendezvous" in p.name]
    assert not written, f"a rendezvous was written to disk: {written}"
    # The coordinator passed member 0's rendezvous on; member 1 used member 0's choice.
    log = cluster.coordinator_log.read_text()[log_before:]
    assert re.search(r"gang gang-\S+ meets at 127\.0\.0\.1:\d+ \(torch\); passed on to 1 ", log)
    assert any("member 1 of 2 hosts" in line and "chosen by member 0" in line for line in lines)
    assert_same_weights(single_job, job)


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
        lines = job_log_lines(client, job.id)
    assert final.state == "succeeded", final.error
    assert stopped_after < 60
    # Placed again on the two agents left, and resumed rather than restarted.
    assert {t.agent_id for t in final.tasks}.isdisjoint({victim_task.agent_id})
    kinds = {(e.task_id, e.attempt, e.kind) for e in final.history}
    assert (victim_task.id, 1, "lease_expired") in kinds
    assert {(t.id, 2, "assigned") for t in final.tasks} <= kinds  # placed again, together
    assert any(line.startswith("resuming from") and "last.pt" in line for line in lines), lines
    assert final.result["epochs"] == 6
