"""Placement: tasks go only to connected, non-draining agents whose free resources fit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.coordinator.availability import DatabaseAvailability
from matrec.coordinator.gangs import StaleRendezvous
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.scheduler import Scheduler, fits, free_resources
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.states import JobState, TaskOutcome
from matrec.coordinator.store import Store
from matrec.coordinator.telemetry import CoordinatorTelemetry
from matrec.v1 import agents_pb2, common_pb2


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


def test_member_0s_rendezvous_reaches_the_other_members_of_the_current_gang_only(
    store: Store, tmp_path: Path
) -> None:
    """Member 0's report is passed on to member 1's agent for member 1's attempt, and again when
    that agent reconnects; a report of an earlier placement, or from another member, is not."""

    async def scenario() -> None:
        sessions = AgentSessions()
        for name in ("a", "b"):
            store.upsert_agent(
                f"agent-{name}", name=name, hostname="h", version="t",
                resources={"cpus": 1.0, "gpus": 0, "memory_bytes": 0}, gpus=[],
            )  # fmt: skip
            sessions.open(f"agent-{name}")
        telemetry = CoordinatorTelemetry()
        availability = DatabaseAvailability(object(), (), telemetry)
        scheduler = Scheduler(store, sessions, JobNotifier(), telemetry, availability, lease_ttl=30)
        store.create_job(
            name="gang", kind="finetune",
            spec={"config": {"dataset_path": "/d", "hosts": 2}},
            resources={"cpus": 1.0, "gpus": 0}, max_attempts=3, artifact_root=tmp_path,
            num_tasks=2,
        )  # fmt: skip
        assert scheduler.schedule_once() == 2
        first, second = sorted(store.active_tasks(), key=lambda t: t.index)
        a0, a1 = first.agent_id or "", second.agent_id or ""
        gang_1 = sessions.get(a0).outbox.get_nowait().assignment.gang.id  # type: ignore[union-attr]

        def report(
            task_id: str, attempt: int, gang_id: str, port: int
        ) -> agents_pb2.GangRendezvous:
            return agents_pb2.GangRendezvous(
                task=agents_pb2.TaskRef(task_id=task_id, attempt=attempt),
                gang_id=gang_id, backend="torch", address="10.0.0.7", port=port,
            )  # fmt: skip

        with pytest.raises(StaleRendezvous):  # member 1 does not host the rendezvous
            scheduler.gangs.report(a1, report(second.id, 1, gang_1, 4001))
        [(to, delivery)] = scheduler.gangs.report(a0, report(first.id, 1, gang_1, 4000))
        assert to == a1
        passed = delivery.gang_rendezvous
        assert (passed.task.task_id, passed.task.attempt) == (second.id, 1)
        assert (passed.gang_id, passed.backend, passed.address, passed.port) == (
            gang_1, "torch", "10.0.0.7", 4000,
        )  # fmt: skip
        assert scheduler.gangs.deliveries_for(a1, [(second.id, 1)]) == [delivery]
        assert scheduler.gangs.deliveries_for(a0, [(first.id, 1)]) == []

        # Member 1 is lost; the gang is placed again with a new id.
        store.mark_running(first.id, 1, a0)
        store.mark_running(second.id, 1, a1)
        store.finish_task(second.id, 1, a1, TaskOutcome.FAILED, error="boom")
        scheduler.supervise_gangs()
        store.finish_task(first.id, 1, a0, TaskOutcome.PREEMPTED)
        for session in sessions.all():
            while not session.outbox.empty():
                session.outbox.get_nowait()
        assert scheduler.schedule_once() == 2
        again = sorted(store.active_tasks(), key=lambda t: t.index)
        holder = {t.index: t.agent_id or "" for t in again}
        gang_2 = sessions.get(holder[0]).outbox.get_nowait().assignment.gang.id  # type: ignore[union-attr]
        assert gang_2 != gang_1
        # The earlier placement's rendezvous is neither accepted nor delivered again.
        with pytest.raises(StaleRendezvous):
            scheduler.gangs.report(a0, report(first.id, 1, gang_1, 4000))
        assert scheduler.gangs.deliveries_for(a1, [(second.id, 1)]) == []
        assert scheduler.gangs.deliveries_for(holder[1], [(second.id, 2)]) == []  # not yet known
        [(to, delivery)] = scheduler.gangs.report(holder[0], report(first.id, 2, gang_2, 5000))
        assert to == holder[1]
        assert (delivery.gang_rendezvous.gang_id, delivery.gang_rendezvous.port) == (gang_2, 5000)
        assert delivery.gang_rendezvous.task.attempt == 2

        # Once the gang's tasks have ended, it is forgotten.
        for task in again:
            store.mark_running(task.id, 2, holder[task.index])
            store.finish_task(task.id, 2, holder[task.index], TaskOutcome.SUCCEEDED)
        scheduler.supervise_gangs()
        assert scheduler.gangs.deliveries_for(holder[1], [(second.id, 2)]) == []

    asyncio.run(scenario())


GIB = 1 << 30


def memory_cluster(store: Store, names: tuple[str, ...]) -> tuple[AgentSessions, Scheduler]:
    """Connected agents, each with 4 CPUs, 8 GiB of host memory and one 16 GiB GPU."""
    sessions = AgentSessions()
    for name in names:
        store.upsert_agent(
            f"agent-{name}", name=name, hostname="h", version="t",
            resources={"cpus": 4.0, "gpus": 1, "memory_bytes": 8 * GIB},
            gpus=[{"index": 0, "name": "g", "memory_bytes": 16 * GIB, "uuid": f"u-{name}"}],
        )  # fmt: skip
        sessions.open(f"agent-{name}")
    telemetry = CoordinatorTelemetry()
    availability = DatabaseAvailability(object(), (), telemetry)
    return sessions, Scheduler(
        store, sessions, JobNotifier(), telemetry, availability, lease_ttl=30
    )


def placed_on(store: Store, job_id: str) -> str | None:
    (task,) = store.get_job(job_id).tasks  # type: ignore[union-attr]
    return task.agent_id


def waiting(store: Store, job_id: str) -> list[str]:
    return [e.message for e in store.history(job_id) if e.kind == "waiting"]


def test_memory_requests_place_tasks_where_they_fit_and_say_why_others_wait(
    store: Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        _, scheduler = memory_cluster(store, ("a", "b"))
        too_big = submit(store, tmp_path, memory_bytes=64 * GIB)
        big_gpu = submit(store, tmp_path, gpus=1, gpu_memory_bytes=24 * GIB)
        first = submit(store, tmp_path, memory_bytes=6 * GIB)
        second = submit(store, tmp_path, memory_bytes=6 * GIB)

        assert scheduler.schedule_once() == 2
        # Room for both by CPUs on either agent; by memory, one each.
        assert {placed_on(store, first), placed_on(store, second)} == {"agent-a", "agent-b"}
        assert placed_on(store, too_big) is None and placed_on(store, big_gpu) is None
        assert waiting(store, too_big) == [
            "no agent can take it now (agent a: needs 65536 MiB host memory, has 8192 in all; "
            "agent b: needs 65536 MiB host memory, has 8192 in all)"
        ]
        assert waiting(store, big_gpu) == [
            "no agent can take it now (agent a: needs 1 GPU(s) with 24576 MiB free, has 0 "
            "(most free on one GPU: 16384 MiB); agent b: needs 1 GPU(s) with 24576 MiB free, "
            "has 0 (most free on one GPU: 16384 MiB))"
        ]
        # Another pass with the same reasons records nothing new.
        assert scheduler.schedule_once() == 0
        assert len(waiting(store, too_big)) == 1 and len(waiting(store, big_gpu)) == 1

    asyncio.run(scenario())


def test_memory_requests_that_do_not_fit_together_run_one_after_the_other(
    store: Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        _, scheduler = memory_cluster(store, ("a",))
        first = submit(store, tmp_path, memory_bytes=5 * GIB)
        second = submit(store, tmp_path, memory_bytes=5 * GIB)
        assert scheduler.schedule_once() == 1
        assert placed_on(store, first) == "agent-a" and placed_on(store, second) is None
        assert waiting(store, second) == [
            "no agent can take it now (agent a: needs 5120 MiB host memory, 3072 unreserved now)"
        ]
        task_id = store.get_job(first).tasks[0].id  # type: ignore[union-attr]
        store.mark_running(task_id, 1, "agent-a")
        store.finish_task(task_id, 1, "agent-a", TaskOutcome.SUCCEEDED)
        assert scheduler.schedule_once() == 1
        assert placed_on(store, second) == "agent-a"

    asyncio.run(scenario())


def test_gpu_memory_in_use_by_another_process_counts(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        sessions, scheduler = memory_cluster(store, ("a", "b"))
        busy = sessions.get("agent-a")
        assert busy is not None
        # agent-a's heartbeat: 12 GiB of its GPU taken by something matrec did not place.
        busy.usage = common_pb2.ResourceUsage(gpu_memory_used_bytes=[12 * GIB])
        job = submit(store, tmp_path, gpus=1, gpu_memory_bytes=8 * GIB)
        assert scheduler.schedule_once() == 1
        assert placed_on(store, job) == "agent-b"

    asyncio.run(scenario())


def test_a_task_that_ran_out_of_memory_goes_where_most_memory_is_free(
    store: Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        sessions, scheduler = memory_cluster(store, ("a", "b"))
        for name, used in (("a", 1), ("b", 7)):
            session = sessions.get(f"agent-{name}")
            assert session is not None
            session.usage = common_pb2.ResourceUsage(memory_used_bytes=used * GIB)
        busy = submit(store, tmp_path)
        assert scheduler.schedule_once() == 1 and placed_on(store, busy) == "agent-a"
        job = submit(store, tmp_path)
        assert scheduler.schedule_once() == 1 and placed_on(store, job) == "agent-b"  # spread
        task_id = store.get_job(job).tasks[0].id  # type: ignore[union-attr]
        store.mark_running(task_id, 1, "agent-b")
        error = "out of memory (worker exit code 3)\nmatrec worker: out of memory: ..."
        store.finish_task(task_id, 1, "agent-b", TaskOutcome.FAILED, error=error)
        # Spreading would pick the idle agent-b; 6 GiB free on agent-a against 1 GiB wins.
        assert scheduler.schedule_once() == 1
        assert placed_on(store, job) == "agent-a"

    asyncio.run(scenario())


def test_a_gang_goes_only_to_agents_with_the_gpu_memory_and_says_why_it_waits(
    store: Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        sessions, scheduler = memory_cluster(store, ("a", "b", "c"))
        busy = sessions.get("agent-a")
        assert busy is not None
        # agent-a's GPU: 8 of its 16 GiB held by a process matrec did not place.
        busy.usage = common_pb2.ResourceUsage(gpu_memory_used_bytes=[8 * GIB])

        def gang() -> str:
            return store.create_job(
                name="gang", kind="finetune",
                spec={"config": {"dataset_path": "/d", "hosts": 2}},
                resources={"cpus": 1.0, "gpus": 1, "gpu_memory_bytes": 12 * GIB},
                max_attempts=3, artifact_root=tmp_path, num_tasks=2,
            ).id  # fmt: skip

        first = gang()
        # By load alone agent-a comes first; by GPU memory only b and c can take a member.
        assert scheduler.schedule_once() == 2
        assert {t.agent_id for t in store.active_tasks()} == {"agent-b", "agent-c"}
        second = gang()
        assert scheduler.schedule_once() == 0
        assert waiting(store, second) == [
            "waiting for 2 agents at once (hosts 2); 0 can take a member now (agent a: needs "
            "1 GPU(s) with 12288 MiB free, has 0 (most free on one GPU: 8192 MiB); agent b: "
            "needs 1 gpus, 0 unreserved now; agent c: needs 1 gpus, 0 unreserved now)"
        ]
        assert waiting(store, first) == []

    asyncio.run(scenario())
