"""Gangs: the tasks of a multi-host job, placed all at once on distinct agents and stopped all
at once. A gang whose member is lost (its agent died, it failed and was requeued) cannot go on,
so its other members are handed back too; once all are queued again the gang is placed again
and resumes from rank 0's last checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from matrec.coordinator.store import JobRecord, TaskRecord

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
