"""Placement: tasks go only to connected, non-draining agents whose free resources fit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.coordinator.availability import DatabaseAvailability
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.scheduler import Scheduler, fits, free_resources
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.states import JobState, TaskOutcome
from matrec.coordinator.store import Store
from matrec.coordinator.telemetry import CoordinatorTelemetry


def test_fits_checks_every_resource() -> None:
    free = free_resources({"gpus": 1, "cpus": 4, "memory_bytes": 8}, {"cpus": 3.5})
    assert free == {"gpus": 1.0, "cpus": 0.5, "memory_bytes": 8.0}
    assert fits({"cpus": 0.5, "gpus": 1}, free)
    assert not fits({"cpus": 1}, free)
    assert not fits({"gpus": 2}, free)
    assert not fits({"memory_bytes": 9}, free)
    # An agent that reports no memory accepts any memory request.
    assert fits({"memory_bytes": 10**12}, {"gpus": 0, "cpus": 1, "memory_bytes": 0})


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    yield opened
    opened.close()


def submit(store: Store, tmp_path: Path, **resources: float) -> str:
    return store.create_job(
        name="j",
        kind="finetune",
        spec={"config": {"dataset_path": "/d"}},
        resources={"cpus": 1.0, "gpus": 0, **resources},
        max_attempts=3,
        artifact_root=tmp_path,
    ).id


def test_schedule_spreads_fitting_tasks_and_holds_the_rest(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        sessions = AgentSessions()
        for name in ("a", "b", "c"):
            store.upsert_agent(
                f"agent-{name}",
                name=name,
                hostname="h",
                version="t",
                resources={"cpus": 1.0, "gpus": 0, "memory_bytes": 0},
                gpus=[],
            )
        sessions.open("agent-a")
        sessions.open("agent-b")
        sessions.open("agent-c").draining = True
        telemetry = CoordinatorTelemetry()
        availability = DatabaseAvailability(object(), (), telemetry)
        scheduler = Scheduler(store, sessions, JobNotifier(), telemetry, availability, lease_ttl=30)
        jobs = [submit(store, tmp_path) for _ in range(3)]
        gpu_job = submit(store, tmp_path, gpus=1)

        assert scheduler.schedule_once() == 2
        placed = {t.agent_id for t in store.active_tasks()}
        assert placed == {"agent-a", "agent-b"}
        queued = {t.job_id for t in store.queued_tasks()}
        assert queued == {jobs[2], gpu_job}
        for agent_id in ("agent-a", "agent-b"):
            session = sessions.get(agent_id)
            assert session is not None
            message = session.outbox.get_nowait()
            assert message is not None and message.HasField("assignment")
            assert message.assignment.task.attempt == 1
        # Nothing fits any more: a second pass assigns nothing.
        assert scheduler.schedule_once() == 0

    asyncio.run(scenario())


def test_a_gang_is_placed_all_at_once_and_stopped_all_at_once(store: Store, tmp_path: Path) -> None:
    """Two members on two distinct agents, or none; when one is queued again (its agent was
    lost), the other is handed back (requeue); when the job ends (a member failed for good), the
    rest are cancelled (no requeue)."""

    async def scenario() -> None:
        sessions = AgentSessions()
        for name in ("a", "b"):
            store.upsert_agent(
                f"agent-{name}", name=name, hostname="h", version="t",
                resources={"cpus": 2.0, "gpus": 0, "memory_bytes": 0}, gpus=[],
            )  # fmt: skip
        sessions.open("agent-a")
        telemetry = CoordinatorTelemetry()
        availability = DatabaseAvailability(object(), (), telemetry)
        scheduler = Scheduler(store, sessions, JobNotifier(), telemetry, availability, lease_ttl=30)
        job_id = store.create_job(
            name="gang", kind="finetune",
            spec={"config": {"dataset_path": "/d", "hosts": 2}},
            resources={"cpus": 1.0, "gpus": 0}, max_attempts=3, artifact_root=tmp_path,
            num_tasks=2,
        ).id  # fmt: skip
        # One agent has room for both tasks, but a gang needs two agents.
        assert scheduler.schedule_once() == 0
        sessions.open("agent-b")
        assert scheduler.schedule_once() == 2
        tasks = sorted(store.active_tasks(), key=lambda t: t.index)
        assert {t.agent_id for t in tasks} == {"agent-a", "agent-b"}
        gangs = []
        for task in tasks:
            session = sessions.get(task.agent_id or "")
            assert session is not None
            assignment = session.outbox.get_nowait().assignment
            gangs.append((assignment.gang.id, assignment.gang.member, assignment.gang.size))
        assert gangs[0][0] == gangs[1][0] and gangs[0][0].startswith("gang-")
        assert [(m, s) for _, m, s in gangs] == [(0, 2), (1, 2)]

        # Member 1 fails and is retried: member 0 is handed back, once.
        store.mark_running(tasks[0].id, 1, tasks[0].agent_id or "")
        store.mark_running(tasks[1].id, 1, tasks[1].agent_id or "")
        store.finish_task(tasks[1].id, 1, tasks[1].agent_id or "", TaskOutcome.FAILED, error="boom")
        scheduler.supervise_gangs()
        scheduler.supervise_gangs()
        session_a = sessions.get(tasks[0].agent_id or "")
        assert session_a is not None
        stop = session_a.outbox.get_nowait()
        assert stop.cancel.task.task_id == tasks[0].id and stop.cancel.requeue
        assert session_a.outbox.empty(), "told twice"
        # While member 0 still runs, member 1 is not placed alone.
        assert scheduler.schedule_once() == 0
        store.finish_task(tasks[0].id, 1, tasks[0].agent_id or "", TaskOutcome.PREEMPTED)
        assert scheduler.schedule_once() == 2
        retried = sorted(store.active_tasks(), key=lambda t: t.index)
        assert [t.attempt for t in retried] == [2, 2]
        for task in retried:
            session = sessions.get(task.agent_id or "")
            assert session is not None
            assert session.outbox.get_nowait().assignment.task.task_id == task.id
            store.mark_running(task.id, 2, task.agent_id or "")

        # Member 1 now fails for good: the job ends, and member 0 is told to stop for good.
        member0, member1 = retried
        store.finish_task(
            member1.id, 2, member1.agent_id or "", TaskOutcome.FAILED, error="bad", permanent=True
        )
        job = store.get_job(job_id)
        assert job is not None and job.state == JobState.FAILED
        scheduler.supervise_gangs()
        scheduler.supervise_gangs()
        session_0 = sessions.get(member0.agent_id or "")
        assert session_0 is not None
        assert not session_0.outbox.empty(), "member 0 of an ended gang was not told to stop"
        stop = session_0.outbox.get_nowait()
        assert stop.WhichOneof("body") == "cancel", stop
        assert (stop.cancel.task.task_id, stop.cancel.task.attempt) == (member0.id, 2)
        assert stop.cancel.requeue is False, "a member of an ended job must not be requeued"
        assert "failed" in stop.cancel.reason
        assert session_0.outbox.empty(), "told twice"

    asyncio.run(scenario())
