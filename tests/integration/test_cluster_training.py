"""A real coordinator process and real agent processes on loopback run real fine-tunes.

Covers the happy path (metrics complete, ordered, unique), an agent killed with SIGKILL mid-task,
a coordinator restarted mid-task, an agent shut down with SIGTERM mid-task, cancellation and a
task that fails for good.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk import Client
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import JobUpdate, MetricsEvent, Task
from support.cluster_jobs import (
    FAST_LEASES,
    assert_complete_series,
    checkpoint_written,
    finetune_spec,
    wait_until,
    worker_processes,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster", agents=2, coordinator_args=FAST_LEASES) as running:
        yield running


def test_finetune_runs_to_success_with_complete_metrics(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    epochs = 3
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, epochs))
        seen_states: list[str] = []
        streamed: list[tuple[str, int, int, str]] = []
        for event in client.watch(job.id):
            if isinstance(event, JobUpdate):
                seen_states.append(event.job.state)
            elif isinstance(event, MetricsEvent):
                streamed += [(m.task_id, m.attempt, m.step, m.key) for m in event.metrics]
        final = client.get_job(job.id)
        assert final.state == "succeeded", final.error
        assert seen_states[-1] == "succeeded"
        assert "running" in seen_states
        assert final.tasks[0].attempt == 1
        # What the watch stream delivered is exactly what was stored: nothing twice.
        assert len(streamed) == len(set(streamed))
        assert len(streamed) == len(client.job_metrics(job.id))
        assert_complete_series(client, final, small_dataset, epochs)
        result = final.result
        assert Path(result["model_path"]).is_file()
        # Chance is 1/6; a real fine-tune on real textures does much better.
        assert result["val_accuracy"] > 0.4
        kinds = [e.kind for e in final.history]
        assert kinds[:2] == ["submitted", "assigned"]
        assert "started" in kinds and kinds[-1] == "job_state"


def running_after_checkpoint(client: Client, job_id: str) -> tuple[Task, int]:
    """Once the job's task has checkpointed: the task, and the index of the agent running it."""
    wait_until(lambda: checkpoint_written(client, job_id), 120, "the first checkpoint")
    task = client.get_job(job_id).tasks[0]
    agent = next(a for a in client.list_agents() if a.id == task.agent_id)
    return task, int(agent.name.rsplit("-", 1)[1])


def test_agent_killed_mid_task_requeues_and_resumes_elsewhere(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    epochs = 6
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, epochs))
        first, victim = running_after_checkpoint(client, job.id)
        cluster.kill_agent(victim)
        # The killed agent's worker dies with it instead of training on unsupervised.
        wait_until(lambda: not worker_processes(first.id, 1), 10, "the orphaned worker to die")

        final = client.wait(job.id, timeout=300)
        assert final.state == "succeeded", final.error
        task = final.tasks[0]
        assert task.attempt == 2
        assert task.agent_id != first.agent_id
        kinds = [e.kind for e in final.history]
        assert "lease_expired" in kinds
        metrics = client.job_metrics(job.id)
        second = [m for m in metrics if m.attempt == 2 and m.key == "train/loss"]
        # Attempt 2 resumed from the checkpoint: it did not start again at step 1.
        assert second and min(m.step for m in second) > 1
        assert_complete_series(client, final, small_dataset, epochs)


def test_coordinator_restart_mid_task_keeps_history(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    epochs = 5
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, epochs))
        wait_until(lambda: client.get_job(job.id).state == "running", 60, "the job to run")
        wait_until(lambda: len(client.job_metrics(job.id)) > 3, 60, "the first metrics")
        before = client.get_job(job.id)
        # The coordinator dies (SIGKILL) and comes back while this client is waiting on the job;
        # what the job had done just before the kill is noted, to prove the kill was mid-task.
        at_kill: list[tuple[str, int]] = []

        def kill_and_restart() -> None:
            with cluster.client() as observer:
                state = observer.get_job(job.id).state
                at_kill.append((state, len(observer.job_metrics(job.id))))
            cluster.restart_coordinator(kill=True)

        restart = threading.Timer(1.0, kill_and_restart)
        restart.start()
        final = client.wait(job.id, timeout=300)
        restart.join()
        assert final.state == "succeeded", final.error
        assert at_kill, "the coordinator was not restarted"
        ((state_at_kill, metrics_at_kill),) = at_kill
        assert state_at_kill == "running", f"the job was {state_at_kill} when the coordinator died"
        assert len(client.job_metrics(job.id)) > metrics_at_kill, "no metrics after the restart"
        assert final.tasks[0].attempt == 1, "the running task was not kept across the restart"
        assert final.tasks[0].agent_id == before.tasks[0].agent_id
        # The history before the restart is still there, unchanged, and continues after it.
        assert [(e.seq, e.kind) for e in final.history[: len(before.history)]] == [
            (e.seq, e.kind) for e in before.history
        ]
        assert "lease_expired" not in [e.kind for e in final.history]
        assert_complete_series(client, final, small_dataset, epochs)


def test_agent_sigterm_hands_task_back_after_checkpoint(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    epochs = 6
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, epochs))
        first, victim = running_after_checkpoint(client, job.id)
        cluster.stop_agent(victim)

        final = client.wait(job.id, timeout=300)
        assert final.state == "succeeded", final.error
        kinds = [e.kind for e in final.history]
        assert "preempted" in kinds and "lease_expired" not in kinds
        assert final.tasks[0].agent_id != first.agent_id
        assert_complete_series(client, final, small_dataset, epochs)


def test_cancel_running_job_stops_worker(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, 50))
        wait_until(lambda: len(client.job_metrics(job.id)) > 0, 60, "the first metrics")
        client.cancel_job(job.id, reason="test cancel")
        final = client.wait(job.id, timeout=60)
        assert final.state == "cancelled"
        assert final.tasks[0].state == "cancelled"
        assert "cancel_requested" in [e.kind for e in final.history]
        count = len(client.job_metrics(job.id))
        time.sleep(2)
        assert len(client.job_metrics(job.id)) == count, "the worker kept training"
        # Agents are free again.
        agents = client.list_agents()
        assert all(not a.running_task_ids for a in agents)


def test_worker_failure_is_retried_then_fails_with_its_error(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    # A pretrained file that exists (so the spec is valid) but holds no usable weights.
    bogus = tmp_path / "not-weights.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    spec = finetune_spec(small_dataset, 1, pretrained_path=str(bogus))
    spec["max_attempts"] = 2
    with cluster.client() as client:
        job = client.submit_job(spec)
        final = client.wait(job.id, timeout=120)
        assert final.state == "failed"
        assert final.tasks[0].attempt == 2
        assert "not-weights.pt" in final.error or "pretrained" in final.error.lower(), final.error
        assert Counter(e.kind for e in final.history)["failed"] == 2
