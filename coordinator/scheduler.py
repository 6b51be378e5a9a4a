"""Places queued tasks on connected agents whose free resources fit, and reaps expired leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from matrec.coordinator import convert
from matrec.coordinator.availability import DATABASE_DOWN_ERRORS, DatabaseAvailability
from matrec.coordinator.gangs import GangMember, GangRendezvousBook, gang_size, place_gang
from matrec.coordinator.limits import LimitStore, TokenLimits, TokenUsage
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.rows import new_id
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.states import FINAL_JOB_STATES, TaskState
from matrec.coordinator.store import JobRecord, Store, TaskChange, TaskRecord
from matrec.coordinator.telemetry import CoordinatorTelemetry
from matrec.v1 import agents_pb2, common_pb2

log = logging.getLogger(__name__)

RESOURCE_KEYS = ("gpus", "cpus", "memory_bytes")
NO_SCRIPT_HOST = (
    "waiting: no connected agent runs script tasks (start one with --allow-scripts or "
    "MATREC_ALLOW_SCRIPTS=1)"
)


def free_resources(total: Mapping[str, Any], used: Mapping[str, float]) -> dict[str, float]:
    return {k: float(total.get(k, 0)) - used.get(k, 0.0) for k in RESOURCE_KEYS}


def fits(request: Mapping[str, Any], free: Mapping[str, float]) -> bool:
    for key in RESOURCE_KEYS:
        wanted = float(request.get(key, 0) or 0)
        # Agents that report no memory accept any memory request.
        if key == "memory_bytes" and free.get(key, 0.0) <= 0 and wanted > 0:
            continue
        if wanted > free.get(key, 0.0) + 1e-9:
            return False
    return True


def gpu_memory_free(
    gpus: list[dict[str, Any]], usage: common_pb2.ResourceUsage | None
) -> list[int]:
    """Each GPU's memory less what the agent's latest heartbeat says is in use (bytes)."""
    in_use = list(usage.gpu_memory_used_bytes) if usage is not None else []
    return [
        int(gpu.get("memory_bytes", 0) or 0) - (in_use[i] if i < len(in_use) else 0)
        for i, gpu in enumerate(gpus)
    ]


def gpu_memory_misfit(
    request: Mapping[str, Any], gpus: list[dict[str, Any]], usage: common_pb2.ResourceUsage | None
) -> str | None:
    """Why an agent's GPUs cannot give the task `gpus` GPUs with `gpu_memory_bytes` free each
    (total memory, less what its latest heartbeat says is in use); None when they can."""
    wanted = int(request.get("gpu_memory_bytes", 0) or 0)
    count = int(request.get("gpus", 0) or 0)
    if wanted <= 0 or count <= 0:
        return None
    free = gpu_memory_free(gpus, usage)
    enough = sum(1 for value in free if value >= wanted)
    if enough >= count:
        return None
    return (
        f"needs {count} GPU(s) with {_mib(wanted)} MiB free, has {enough} "
        f"(most free on one GPU: {_mib(max(free, default=0))} MiB)"
    )


def misfit(
    request: Mapping[str, Any],
    total: Mapping[str, Any],
    free: Mapping[str, float],
    gpus: list[dict[str, Any]],
    usage: common_pb2.ResourceUsage | None,
) -> str | None:
    """Why a task does not fit on an agent now, None when it does. A request larger than the
    agent's total says so (it will never fit there), so the reason does not change with load."""
    if not fits(request, free):
        wanted = {key: float(request.get(key, 0) or 0) for key in RESOURCE_KEYS}
        short = [key for key in RESOURCE_KEYS if not fits({key: wanted[key]}, free)]
        return ", ".join(
            _shortfall(key, wanted[key], float(total.get(key, 0) or 0), free.get(key, 0.0))
            for key in short
        )
    return gpu_memory_misfit(request, gpus, usage)


def _shortfall(key: str, wanted: float, total: float, free: float) -> str:
    if key == "memory_bytes":
        need, total_text, free_text = (
            f"{_mib(wanted)} MiB host memory",
            _mib_text(total),
            _mib_text(free),
        )
    else:
        need, total_text, free_text = f"{wanted:g} {key}", f"{total:g}", f"{free:g}"
    if wanted > total:
        return f"needs {need}, has {total_text} in all"
    return f"needs {need}, {free_text} unreserved now"


def _mib(value: float) -> int:
    return int(value) >> 20


def _mib_text(value: float) -> str:
    return str(_mib(value))


#: How an agent's failure reason starts when the worker ran out of memory (agent/task_runner.py
#: and agent/memory_report.py write it).
OUT_OF_MEMORY = "out of memory"


def memory_headroom(
    request: Mapping[str, Any],
    total: Mapping[str, Any],
    gpus: list[dict[str, Any]],
    usage: common_pb2.ResourceUsage | None,
) -> tuple[int, int]:
    """(the most GPU memory free on one GPU when the task uses GPUs, host memory free), from
    the agent's latest heartbeat, else its totals: the order in which to prefer agents for a
    task that ran out of memory."""
    gpu_free = max(gpu_memory_free(gpus, usage), default=0)
    host_used = usage.memory_used_bytes if usage is not None else 0
    host_free = int(total.get("memory_bytes", 0) or 0) - host_used
    return (gpu_free if int(request.get("gpus", 0) or 0) > 0 else 0, host_free)


def used_by_agent(active: list[TaskRecord]) -> dict[str, dict[str, float]]:
    used: defaultdict[str, dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(RESOURCE_KEYS, 0.0)
    )
    for task in active:
        if task.agent_id is None:
            continue
        for key in RESOURCE_KEYS:
            used[task.agent_id][key] += float(task.resources.get(key, 0) or 0)
    return used


def assignment_message(
    task: TaskRecord,
    job: JobRecord,
    gang: agents_pb2.Gang | None = None,
    *,
    share_nothing: bool = False,
) -> agents_pb2.CoordinatorMessage:
    """With `share_nothing`, the agent gets no folder of the coordinator's: it writes locally
    and uploads (resume_from is then an artifact uri to download, not a path to read)."""
    return agents_pb2.CoordinatorMessage(
        assignment=agents_pb2.Assignment(
            task=agents_pb2.TaskRef(task_id=task.id, attempt=task.attempt),
            job_id=job.id,
            kind=job.kind,
            config=convert.struct(job.spec.get("config", {})),
            resources=convert.resources(task.resources),
            artifact_dir="" if share_nothing else task.artifact_dir,
            resume_from=task.checkpoint_path,
            lease_expires_at=convert.timestamp(task.lease_expires_at),
            gang=gang,
        )
    )


class Scheduler:
    def __init__(
        self,
        store: Store,
        sessions: AgentSessions,
        notifier: JobNotifier,
        telemetry: CoordinatorTelemetry,
        availability: DatabaseAvailability,
        *,
        lease_ttl: float,
        tick: float = 1.0,
        limits: LimitStore | None = None,
        share_nothing: bool = False,
    ) -> None:
        self.availability = availability
        self.share_nothing = share_nothing
        self.limits = limits
        self._outages_handled = 0
        self.store = store
        self.sessions = sessions
        self.notifier = notifier
        self.telemetry = telemetry
        self.lease_ttl = lease_ttl
        self.tick = tick
        self._wake = asyncio.Event()
        # Gang members already told to stop, so that they are told once.
        self._stopping: set[tuple[str, int]] = set()
        # Why a queued job waits, as last written to its history (written once per reason).
        self._waiting: dict[str, str] = {}
        # Each gang's placement and member 0's rendezvous (the agent service passes it on).
        self.gangs = GangRendezvousBook()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self._recover_from_outages()
                self.reap_expired_leases()
                self.supervise_gangs()
                self.schedule_once()
                self.update_gauges()
            except DATABASE_DOWN_ERRORS as error:
                await self.availability.mark_down(error)
            except Exception:
                log.exception("scheduler pass failed; retrying on the next tick")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()

    async def _recover_from_outages(self) -> None:
        """No lease could be renewed while the database was down: before reaping, give every
        agent one lease period to report in again."""
        if self.availability.outages > self._outages_handled:
            renewed = self.store.extend_all_leases(self.lease_ttl)
            self._outages_handled = self.availability.outages
            log.info("database back: extended %d leases by one period", renewed)
        await self.availability.mark_up()

    def schedule_once(self) -> int:
        """Assign as many queued tasks as fit. Returns how many were assigned."""
        sessions = self.sessions.available()
        if not sessions:
            return 0
        queued = self.store.queued_tasks()
        if not queued:
            return 0
        queued_jobs = {task.job_id for task in queued}
        self._waiting = {job: why for job, why in self._waiting.items() if job in queued_jobs}
        active = self.store.active_tasks()
        used = used_by_agent(active)
        running = Counter(t.agent_id for t in active)
        available = {session.agent_id for session in sessions}
        agents = [a for a in self.store.list_agents() if a.id in available]
        totals = {a.id: a.resources for a in agents}
        # Script tasks run arbitrary programs: only on hosts whose agent allows them.
        script_totals = {a.id: a.resources for a in agents if a.allow_scripts}
        limits = self.limits.all() if self.limits is not None else {}
        usage = TokenUsage()
        if limits:
            usage = TokenUsage.of(active, self.store.job_owner_tokens(t.job_id for t in active))
        gpus = {a.id: a.gpus for a in agents}
        names = {a.id: a.name for a in agents}
        usages = {s.agent_id: s.usage for s in sessions}
        jobs: dict[str, JobRecord | None] = {}
        assigned = 0
        gangs: defaultdict[str, list[TaskRecord]] = defaultdict(list)
        for task in queued:
            if task.job_id not in jobs:
                jobs[task.job_id] = self.store.get_job(task.job_id)
            owner = jobs[task.job_id]
            if owner is not None and gang_size(owner) > 1:
                gangs[task.job_id].append(task)
                continue
            if owner is not None and not self._within_limits(owner, [task], limits, usage):
                continue
            hosts = self._hosts_for(owner, totals, script_totals)
            misfits = {
                aid: misfit(
                    task.resources,
                    total,
                    free_resources(total, used[aid]),
                    gpus.get(aid, []),
                    usages.get(aid),
                )
                for aid, total in hosts.items()
            }
            candidates = [aid for aid, why in misfits.items() if why is None]
            if not candidates:
                self._note_wait(task, misfits, names)
                continue
            if task.error.startswith(OUT_OF_MEMORY):
                # Its last attempt ran out of memory: the agent with the most memory free.
                agent_id = max(
                    candidates,
                    key=lambda aid: memory_headroom(
                        task.resources, totals[aid], gpus[aid], usages[aid]
                    ),
                )
            else:
                # Spread work: the agent with the least in use gets the task.
                agent_id = min(
                    candidates, key=lambda aid: (sum(used[aid].values()), running[aid], aid)
                )
            claimed = self.store.assign_task(task.id, agent_id, self.lease_ttl)
            if claimed is None:
                continue
            job = jobs[task.job_id]
            if job is None:
                continue
            if job.owner_token_id is not None:
                usage.add(job.owner_token_id, [claimed])
            self._send_assignment(claimed, job, agent_id, used, running)
            assigned += 1
        for job_id, members in gangs.items():
            job = jobs[job_id]
            if job is None or len(members) < gang_size(job):
                continue  # members still running are being handed back (supervise_gangs)
            if not self._within_limits(job, members, limits, usage):
                continue
            hosts = self._hosts_for(job, totals, script_totals)
            free = {aid: free_resources(total, used[aid]) for aid, total in hosts.items()}
            # Each member needs what any member needs, GPU memory included: only agents that
            # fit one member are candidates.
            misfits = {
                aid: misfit(members[0].resources, total, free[aid], gpus.get(aid, []),
                            usages.get(aid))
                for aid, total in hosts.items()
            }  # fmt: skip
            fitting = {aid: free[aid] for aid, why in misfits.items() if why is None}
            load = {aid: sum(used[aid].values()) + running[aid] for aid in hosts}
            placement = place_gang(members, fitting, fits, load)
            if placement is None:
                self._note_gang_wait(job, members, misfits, names)
                continue
            gang_id = new_id("gang")
            if job.owner_token_id is not None:
                usage.add(job.owner_token_id, members)
            placed: list[GangMember] = []
            for task in members:
                claimed = self.store.assign_task(task.id, placement[task.id], self.lease_ttl)
                if claimed is None:
                    continue
                placed.append(GangMember(task.id, claimed.attempt, placement[task.id], task.index))
                gang = agents_pb2.Gang(id=gang_id, member=task.index, size=len(members))
                self._send_assignment(claimed, job, placement[task.id], used, running, gang)
                assigned += 1
            self.gangs.placed(job_id, gang_id, placed)
        return assigned

    def _hosts_for(
        self,
        job: JobRecord | None,
        totals: dict[str, dict[str, Any]],
        script_totals: dict[str, dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        """The agents that may run `job`'s tasks; notes in its history why it waits when
        none may."""
        if job is None or job.kind != "script":
            return totals
        if not script_totals:
            self._note_waiting(job.id, NO_SCRIPT_HOST)
        return script_totals

    def _within_limits(
        self,
        job: JobRecord,
        tasks: list[TaskRecord],
        limits: dict[str, TokenLimits],
        usage: TokenUsage,
    ) -> bool:
        """Whether `tasks` of `job` may start under its token's limits; notes why not."""
        token = job.owner_token_id
        if token is None or token not in limits:
            return True
        refusal = usage.refusal(token, limits[token], tasks)
        if refusal is None:
            return True
        self._note_waiting(job.id, f"waiting: {refusal} (matrec-ctl tokens limit)")
        return False

    def _note_wait(
        self, task: TaskRecord, misfits: Mapping[str, str | None], names: Mapping[str, str]
    ) -> None:
        """A `waiting` event saying why no agent takes the task, when the reason changes."""
        if not misfits:
            return  # no agent at all, or _hosts_for said why
        reasons = "; ".join(f"agent {names[aid]}: {why}" for aid, why in sorted(misfits.items()))
        self._note_waiting(
            task.job_id, f"no agent can take it now ({reasons})", task.id, task.attempt
        )

    def _note_gang_wait(
        self,
        job: JobRecord,
        members: list[TaskRecord],
        misfits: Mapping[str, str | None],
        names: Mapping[str, str],
    ) -> None:
        """A `waiting` event saying why a gang cannot start: how many agents can take a member
        now, and what is short on the others; when the reason changes."""
        if not misfits:
            return
        fitting = sum(1 for why in misfits.values() if why is None)
        short = "; ".join(
            f"agent {names[aid]}: {why}" for aid, why in sorted(misfits.items()) if why is not None
        )
        self._note_waiting(
            job.id,
            f"waiting for {len(members)} agents at once (hosts {len(members)}); {fitting} can "
            f"take a member now" + (f" ({short})" if short else ""),
        )

    def _note_waiting(self, job_id: str, reason: str, task_id: str = "", attempt: int = 0) -> None:
        if self._waiting.get(job_id) == reason:
            return
        self._waiting[job_id] = reason
        self.store.add_job_event(job_id, "waiting", reason, task_id, attempt)
        self.notifier.notify(job_id)

    def _send_assignment(
        self,
        task: TaskRecord,
        job: JobRecord,
        agent_id: str,
        used: dict[str, dict[str, float]],
        running: Counter[str | None],
        gang: agents_pb2.Gang | None = None,
    ) -> None:
        for key in RESOURCE_KEYS:
            used[agent_id][key] += float(task.resources.get(key, 0) or 0)
        running[agent_id] += 1
        self._waiting.pop(job.id, None)
        self.sessions.send(
            agent_id, assignment_message(task, job, gang, share_nothing=self.share_nothing)
        )
        log.info("assigned %s attempt %d to agent %s", task.id, task.attempt, agent_id)
        self.notifier.notify(task.job_id)

    def supervise_gangs(self) -> None:
        """Stop the running members of a gang that cannot go on: hand them back when another
        member is queued again (lost or failed and retried), cancel them when the job ended."""
        jobs: dict[str, JobRecord | None] = {}
        active = self.store.active_tasks()
        self._stopping &= {(t.id, t.attempt) for t in active}
        self.gangs.retain({t.job_id for t in active})
        for task in active:
            if task.job_id not in jobs:
                jobs[task.job_id] = self.store.get_job(task.job_id)
            job = jobs[task.job_id]
            if job is None or gang_size(job) <= 1 or not task.agent_id:
                continue
            if job.state in FINAL_JOB_STATES or job.cancel_requested:
                requeue, reason = False, f"its gang's job is {job.state.value}"
            elif any(t.state == TaskState.QUEUED for t in job.tasks):
                requeue, reason = True, "another member of its gang was lost; the gang restarts"
            else:
                continue
            if (task.id, task.attempt) in self._stopping:
                continue
            self._stopping.add((task.id, task.attempt))
            log.warning("stopping gang member %s attempt %d: %s", task.id, task.attempt, reason)
            self.sessions.send(
                task.agent_id,
                agents_pb2.CoordinatorMessage(
                    cancel=agents_pb2.CancelTask(
                        task=agents_pb2.TaskRef(task_id=task.id, attempt=task.attempt),
                        reason=reason,
                        requeue=requeue,
                    )
                ),
            )

    def reap_expired_leases(self) -> list[TaskChange]:
        changes = self.store.expire_leases()
        for change in changes:
            self.telemetry.lease_expiries.inc()
            log.warning(
                "lease of %s attempt %d expired; task is now %s",
                change.task.id,
                change.task.attempt,
                change.task.state.value,
            )
            self.notifier.notify(change.task.job_id)
        if changes:
            self.wake()
        return changes

    def update_gauges(self) -> None:
        counts = self.store.count_tasks_by_state()
        self.telemetry.queue_depth.set(counts.get(TaskState.QUEUED, 0))
        for state in TaskState:
            self.telemetry.tasks_by_state.labels(state.value).set(counts.get(state.value, 0))
        by_state: defaultdict[str, int] = defaultdict(int)
        for agent in self.store.list_agents():
            by_state[agent.state.value] += 1
        for state in ("connected", "draining", "disconnected"):
            self.telemetry.agents.labels(state).set(by_state.get(state, 0))
