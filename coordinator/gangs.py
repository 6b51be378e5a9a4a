"""Gangs: the tasks of a multi-host job, placed all at once on distinct agents and stopped all
at once. A gang whose member is lost (its agent died, it failed and was requeued) cannot go on,
so its other members are handed back too; once all are queued again the gang is placed again
and resumes from rank 0's last checkpoint. Member 0 hosts the gang's rendezvous and reports it
over its stream; the coordinator passes it on to the other members (GangRendezvousBook)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from matrec.coordinator.store import JobRecord, TaskRecord
from matrec.v1 import agents_pb2

Fits = Callable[[Mapping[str, Any], Mapping[str, float]], bool]


def gang_size(job: JobRecord) -> int:
    """How many hosts the job spans (1: not a gang)."""
    if job.kind not in ("finetune", "script"):
        return 1
    return int(job.spec.get("config", {}).get("hosts", 1) or 1)


def place_gang(
    members: list[TaskRecord],
    free: Mapping[str, Mapping[str, float]],
    fits: Fits,
    load: Mapping[str, float],
) -> dict[str, str] | None:
    """One distinct agent per member, each with room for it (the least loaded first); None when
    the gang does not fit now. `fits(request, free)` says whether a request fits."""
    request = members[0].resources
    candidates = sorted((a for a in free if fits(request, free[a])), key=lambda a: (load[a], a))
    if len(candidates) < len(members):
        return None
    ordered = sorted(members, key=lambda t: t.index)
    return {task.id: agent for task, agent in zip(ordered, candidates, strict=False)}


@dataclass(frozen=True)
class GangMember:
    """One task attempt of a placed gang, and the agent it went to."""

    task_id: str
    attempt: int
    agent_id: str
    member: int


@dataclass
class _Placement:
    job_id: str
    members: list[GangMember]
    rendezvous: agents_pb2.GangRendezvous | None = None


class GangRendezvousBook:
    """Each job's current gang placement and, once its member 0 has reported it, where the
    gang's ranks meet. Hosts share no folder, so member 0's agent reports the rendezvous over
    its stream and the coordinator passes it on to the other members' agents. Only the job's
    latest placement is kept: a report or a delivery for an earlier gang id is never used.

    Kept in memory: a coordinator restarted meanwhile has forgotten it, and the members waiting
    for it time out and fail as when member 0 never reports; the gang is then placed again."""

    def __init__(self) -> None:
        self._gangs: dict[str, _Placement] = {}  # gang id -> placement
        self._current: dict[str, str] = {}  # job id -> its latest gang id

    def placed(self, job_id: str, gang_id: str, members: list[GangMember]) -> None:
        earlier = self._current.get(job_id)
        if earlier is not None:
            self._gangs.pop(earlier, None)
        self._current[job_id] = gang_id
        self._gangs[gang_id] = _Placement(job_id, members)

    def retain(self, job_ids: set[str]) -> None:
        """Forget the gangs of jobs that have no task running any more."""
        for job_id in [j for j in self._current if j not in job_ids]:
            self._gangs.pop(self._current.pop(job_id), None)

    def report(
        self, agent_id: str, rendezvous: agents_pb2.GangRendezvous
    ) -> list[tuple[str, agents_pb2.CoordinatorMessage]]:
        """Record member 0's rendezvous; the (agent, message) pairs that pass it on. Raises
        StaleRendezvous when it is not the current member 0 of a current gang that reports."""
        placement = self._gangs.get(rendezvous.gang_id)
        if placement is None:
            raise StaleRendezvous(f"gang {rendezvous.gang_id!r} is not a current placement")
        sender = GangMember(rendezvous.task.task_id, rendezvous.task.attempt, agent_id, 0)
        if sender not in placement.members:
            raise StaleRendezvous(
                f"task {sender.task_id} attempt {sender.attempt} on agent {agent_id} is not "
                f"member 0 of gang {rendezvous.gang_id}"
            )
        placement.rendezvous = rendezvous
        return [(m.agent_id, _delivery(rendezvous, m)) for m in placement.members if m.member]

    def deliveries_for(
        self, agent_id: str, running: list[tuple[str, int]]
    ) -> list[agents_pb2.CoordinatorMessage]:
        """The known rendezvous of the gangs that `agent_id`'s running attempts are members of:
        sent again when an agent reconnects, in case it missed them while away."""
        held = set(running)
        return [
            _delivery(placement.rendezvous, member)
            for placement in self._gangs.values()
            if placement.rendezvous is not None
            for member in placement.members
            if member.member
            and member.agent_id == agent_id
            and (member.task_id, member.attempt) in held
        ]


class StaleRendezvous(Exception):
    """A rendezvous report that belongs to no current gang's member 0; it is ignored."""


def _delivery(
    rendezvous: agents_pb2.GangRendezvous, member: GangMember
) -> agents_pb2.CoordinatorMessage:
    return agents_pb2.CoordinatorMessage(
        gang_rendezvous=agents_pb2.GangRendezvous(
            task=agents_pb2.TaskRef(task_id=member.task_id, attempt=member.attempt),
            gang_id=rendezvous.gang_id,
            backend=rendezvous.backend,
            address=rendezvous.address,
            port=rendezvous.port,
        )
    )
