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
