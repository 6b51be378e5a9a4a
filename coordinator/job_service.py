"""The user-facing gRPC service: submit, inspect, cancel and watch jobs; list agents."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from matrec.common.specs import SpecError, check_dataset_path, parse_job_spec, task_count
from matrec.common.wire import job_spec_to_dict
from matrec.coordinator import convert
from matrec.coordinator.artifact_files import (
    ArtifactUnavailable,
    pick_artifact,
    read_chunks,
    readable_path,
)
from matrec.coordinator.artifact_records import ArtifactObject, ArtifactObjects
from matrec.coordinator.auth import (
    caller,
    current_identity,
    refuse_foreign_cancel,
    refuse_scripts_unless_allowed,
)
from matrec.coordinator.cancellation import cancel_job
from matrec.coordinator.limits import LimitStore
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.coordinator.scheduler import Scheduler, free_resources, used_by_agent
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.states import (
    ACTIVE_TASK_STATES,
    FINAL_JOB_STATES,
    AgentState,
    JobState,
    TaskState,
)
from matrec.coordinator.store import JobRecord, MetricRecord, Store
from matrec.coordinator.telemetry import CoordinatorTelemetry
from matrec.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

WATCH_POLL_SECONDS = 1.0
CLUSTER_INTERVAL_SECONDS = 2.0
CLUSTER_MIN_INTERVAL_SECONDS = 0.2
#: Longest a WatchCluster snapshot is shared among watchers (at most half their interval).
SNAPSHOT_SHARE_SECONDS = 0.5
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000


@dataclass(frozen=True)
class SubmitPolicy:
    artifact_root: Path
    # Dataset paths must be visible to the coordinator (shared storage); turn off otherwise.
    check_paths: bool = True
    # SubmitJob is refused while this many jobs wait in the queue (0: no bound).
    max_queued_jobs: int = 0


def _state_signature(job: jobs_pb2.Job) -> bytes:
    """What watchers care about; lease renewals alone do not make a new snapshot."""
    copy = jobs_pb2.Job()
    copy.CopyFrom(job)
    for task in copy.tasks:
        task.ClearField("lease_expires_at")
    return copy.SerializeToString(deterministic=True)


def _cluster_signature(snapshot: jobs_pb2.ClusterSnapshot) -> bytes:
    """What changes a cluster view; the clock, heartbeat times and leases alone do not."""
    copy = jobs_pb2.ClusterSnapshot()
    copy.CopyFrom(snapshot)
    copy.ClearField("time")
    for agent in copy.agents:
        agent.ClearField("last_seen")
        agent.ClearField("usage")
    for job in copy.active_jobs:
        for task in job.tasks:
            task.ClearField("lease_expires_at")
    return copy.SerializeToString(deterministic=True)


def effective_metrics(records: list[MetricRecord]) -> list[MetricRecord]:
    """One point per (task, step, key): a retried attempt's value replaces the earlier one's."""
    latest: dict[tuple[str, int, str], MetricRecord] = {}
    for record in records:
        key = (record.task_id, record.step, record.key)
        current = latest.get(key)
        if current is None or record.attempt >= current.attempt:
            latest[key] = record
    return sorted(latest.values(), key=lambda r: (r.task_id, r.step, r.key))


async def job_states_or_abort(
    context: grpc.aio.ServicerContext, values: Iterable[int]
) -> list[JobState]:
    """The job states a request names; INVALID_ARGUMENT (field `states`) for an unknown one."""
    states = []
    for value in values:
        state = convert.JOB_STATE_FROM_PB.get(value)
        if state is None:
            await abort_invalid(context, SpecError("states", f"unknown job state {value}"))
        states.append(state)
    return states


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: Store,
        sessions: AgentSessions,
        scheduler: Scheduler,
        notifier: JobNotifier,
        telemetry: CoordinatorTelemetry,
        policy: SubmitPolicy,
        limits: LimitStore | None = None,
        *,
        objects: ArtifactObjects | None = None,
    ) -> None:
        self.limits = limits
        self.objects = objects
        self.telemetry = telemetry
        self.store = store
        self.sessions = sessions
        self.scheduler = scheduler
        self.notifier = notifier
        self.policy = policy
        self._snapshot: tuple[float, jobs_pb2.ClusterSnapshot] | None = None

    async def _job_or_abort(self, job_id: str, context: grpc.aio.ServicerContext) -> JobRecord:
        if not job_id:
            await abort_invalid(context, SpecError("job_id", "required"))
        job = self.store.get_job(job_id)
        if job is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"job {job_id!r} not found; `matrec-ctl jobs` lists the known jobs",
            )
        assert job is not None
        return job

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        try:
            spec, config = parse_job_spec(job_spec_to_dict(request.spec))
            if self.policy.check_paths:
                check_dataset_path(config)
        except SpecError as error:
            # Strictly before anything is stored: a rejected job leaves no trace.
            await abort_invalid(context, error)
        await refuse_scripts_unless_allowed(context, spec.kind)
        limit = self.policy.max_queued_jobs
        if limit and self.store.count_jobs(JobState.QUEUED) >= limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the queue is full: {limit} jobs are waiting (the coordinator's "
                "--max-queued-jobs); submit again once some have started, or cancel queued ones",
            )
        who = caller(context)
        if who.token_id is not None and self.limits is not None:
            own_limit = self.limits.get(who.token_id).max_queued_jobs
            if own_limit and self.store.count_queued_jobs_of_token(who.token_id) >= own_limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"token {who.name!r} already has {own_limit} queued jobs, its limit "
                    "max_queued_jobs (matrec-ctl tokens limit); submit again once some have "
                    "started, or cancel queued ones",
                )
        stored_spec = spec.model_dump()
        stored_spec["config"] = config.model_dump()
        stored_spec["resources"] = spec.resources.placement()
        job = self.store.create_job(
            name=spec.name or f"{spec.kind}",
            kind=spec.kind,
            spec=stored_spec,
            resources=spec.resources.placement(),
            max_attempts=spec.max_attempts,
            artifact_root=self.policy.artifact_root,
            num_tasks=task_count(config),
            owner=who.name,
            owner_token_id=who.token_id,
        )
        log.info("job %s submitted (%s) by %s", job.id, job.kind, who.name)
        self.scheduler.wake()
        return jobs_pb2.SubmitJobResponse(job=convert.job(job))

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        job = await self._job_or_abort(request.job_id, context)
        history = [convert.event(e) for e in self.store.history(job.id)]
        return jobs_pb2.GetJobResponse(job=convert.job(job), history=history)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        states = await job_states_or_abort(context, request.states)
        if request.limit < 0:
            await abort_invalid(context, SpecError("limit", "must be >= 0"))
        limit = min(request.limit or LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)
        owner = caller(context).name if request.mine else request.owner or None
        jobs = self.store.list_jobs(states, limit, owner)
        return jobs_pb2.ListJobsResponse(jobs=[convert.job(j) for j in jobs])

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        job = await self._job_or_abort(request.job_id, context)
        if job.state in FINAL_JOB_STATES:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job.id} already {job.state.value}; there is nothing to cancel",
            )
        await refuse_foreign_cancel(context, f"job {job.id}", job.owner)
        who = caller(context).name
        cancel_job(
            self.store,
            self.sessions,
            self.notifier,
            job.id,
            request.reason or f"cancelled by {who}",
            cancelled_by=who,
        )
        updated = self.store.get_job(job.id)
        assert updated is not None
        return jobs_pb2.CancelJobResponse(job=convert.job(updated))

    async def ListJobMetrics(
        self, request: jobs_pb2.ListJobMetricsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobMetricsResponse:
        job = await self._job_or_abort(request.job_id, context)
        points = effective_metrics(self.store.metrics(job.id))
        return jobs_pb2.ListJobMetricsResponse(metrics=[convert.metric(m) for m in points])

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        job = await self._job_or_abort(request.job_id, context)
        snapshot = convert.job(job)
        last_signature = _state_signature(snapshot)
        yield jobs_pb2.WatchJobResponse(job=snapshot)
        event_seq = metric_id = log_id = 0
        while True:
            events = self.store.history(job.id, event_seq)
            for event in events:
                event_seq = event.seq
                yield jobs_pb2.WatchJobResponse(history=convert.event(event))
            metrics = self.store.metrics(job.id, metric_id)
            if metrics:
                metric_id = metrics[-1].id
                yield jobs_pb2.WatchJobResponse(
                    metrics=common_pb2.MetricBatch(metrics=[convert.metric(m) for m in metrics])
                )
            logs = self.store.logs(job.id, log_id) if request.include_logs else []
            if logs:
                log_id = logs[-1].id
                yield jobs_pb2.WatchJobResponse(
                    logs=common_pb2.LogBatch(lines=[convert.log_line(r) for r in logs])
                )
            current = self.store.get_job(job.id)
            if current is None:
                return
            snapshot = convert.job(current)
            signature = _state_signature(snapshot)
            if signature != last_signature:
                last_signature = signature
                yield jobs_pb2.WatchJobResponse(job=snapshot)
            if current.state in FINAL_JOB_STATES:
                if not (events or metrics or logs):
                    return
                continue  # drain what is left without waiting a poll interval
            await self.notifier.wait(job.id, WATCH_POLL_SECONDS)

    async def ListAgents(
        self, request: jobs_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListAgentsResponse:
        return jobs_pb2.ListAgentsResponse(agents=self._agents())

    def _agents(self) -> list[jobs_pb2.Agent]:
        """Every known agent; state and resource use come from the live sessions."""
        active = self.store.active_tasks()
        used = used_by_agent(active)
        agents = []
        for record in self.store.list_agents():
            session = self.sessions.get(record.id)
            if session is None:
                state = AgentState.DISCONNECTED
            else:
                state = AgentState.DRAINING if session.draining else AgentState.CONNECTED
            running = [t.id for t in active if t.agent_id == record.id]
            free = free_resources(record.resources, used[record.id])
            usage = session.usage if session is not None else None
            agents.append(convert.agent(record, state, free, running, usage))
        return agents

    async def WatchCluster(
        self, request: jobs_pb2.WatchClusterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchClusterResponse]:
        interval = request.interval.ToTimedelta().total_seconds() or CLUSTER_INTERVAL_SECONDS
        if interval < CLUSTER_MIN_INTERVAL_SECONDS:
            await abort_invalid(
                context,
                SpecError("interval", f"must be at least {CLUSTER_MIN_INTERVAL_SECONDS} s"),
            )
        # None, not b"": an empty cluster's snapshot serialises to b"", and the first one is due.
        last_signature: bytes | None = None
        points = self.telemetry.metric_points_total
        clock = time.monotonic()
        while True:
            now_points, now_clock = self.telemetry.metric_points_total, time.monotonic()
            snapshot = self._shared_snapshot(max_age=min(SNAPSHOT_SHARE_SECONDS, interval / 2))
            snapshot.metric_points_per_second = (now_points - points) / max(now_clock - clock, 1e-6)
            points, clock = now_points, now_clock
            signature = _cluster_signature(snapshot)
            # An idle cluster sends nothing new; a busy one at most one snapshot per interval.
            if signature != last_signature or snapshot.metric_points_per_second > 0:
                last_signature = signature
                yield jobs_pb2.WatchClusterResponse(snapshot=snapshot)
            await asyncio.sleep(interval)

    def _shared_snapshot(self, max_age: float) -> jobs_pb2.ClusterSnapshot:
        """A copy of a snapshot at most `max_age` seconds old: watchers whose intervals line
        up share one build instead of each reading every agent and job (the build is the
        coordinator's largest cost under many watchers; benchmarks/coordinator_load.py)."""
        now = time.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > max_age:
            self._snapshot = (now, self._cluster_snapshot())
        copy = jobs_pb2.ClusterSnapshot()
        copy.CopyFrom(self._snapshot[1])
        return copy

    def _cluster_snapshot(self) -> jobs_pb2.ClusterSnapshot:
        active_states = [JobState.QUEUED, JobState.RUNNING]
        active = sorted(
            self.store.list_jobs(active_states, LIST_LIMIT_MAX), key=lambda j: j.created_at
        )
        snapshot = jobs_pb2.ClusterSnapshot(
            agents=self._agents(),
            active_jobs=[convert.job(j) for j in active],
            queue_depth=self.store.count_tasks_by_state().get(TaskState.QUEUED, 0),
            jobs_by_state=self.store.count_jobs_by_state(),
        )
        snapshot.time.GetCurrentTime()
        return snapshot

    async def ListArtifacts(
        self, request: jobs_pb2.ListArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListArtifactsResponse:
        job = await self._job_or_abort(request.job_id, context)
        uploaded = self._uploaded(job.id)
        artifacts = []
        for row in self.store.artifacts(job.id):
            path = Path(row["uri"])
            size = path.stat().st_size if path.is_file() else -1
            recorded = uploaded.get(row["uri"])
            artifacts.append(
                jobs_pb2.Artifact(
                    task_id=row["task_id"],
                    kind=row["kind"],
                    uri=row["uri"],
                    size_bytes=size,
                    created_at=convert.timestamp(row["created_at"]),
                    sha256=recorded.sha256 if recorded is not None else "",
                )
            )
        return jobs_pb2.ListArtifactsResponse(artifacts=artifacts)

    async def _refuse_agents_not_running(
        self, job: JobRecord, context: grpc.aio.ServicerContext
    ) -> None:
        """An agent token downloads only from jobs it runs a task of (its resume checkpoint)."""
        identity = current_identity.get()
        if identity is None or identity.role != "agent":
            return
        holders = {t.agent_id for t in job.tasks if t.state in ACTIVE_TASK_STATES}
        agents = {a.id for a in self.store.list_agents() if a.name == identity.name}
        if not holders & agents:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"agent {identity.name!r} runs no task of job {job.id}; it cannot download its "
                "artifacts",
            )

    def _fall_back_from(self, corrupt: ArtifactObject) -> None:
        """A corrupt checkpoint stops being its task's resume point: the one before takes over
        (none: the task starts over), so the next attempt resumes from intact bytes."""
        if corrupt.kind != "checkpoint" or self.objects is None:
            return
        previous = self.objects.previous_checkpoint(corrupt)
        to = previous.uri if previous is not None else ""
        if self.store.replace_checkpoint(corrupt.task_id, corrupt.uri, to):
            log.warning(
                "task %s resumes from %s instead of the corrupt %s",
                corrupt.task_id, to or "the start", corrupt.uri,
            )  # fmt: skip

    def _uploaded(self, job_id: str) -> dict[str, ArtifactObject]:
        objects = self.objects.of_job(job_id) if self.objects is not None else []
        return {o.uri: o for o in objects}

    async def DownloadArtifact(
        self, request: jobs_pb2.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.ArtifactChunk]:
        job = await self._job_or_abort(request.job_id, context)
        await self._refuse_agents_not_running(job, context)
        if request.offset < 0:
            await abort_invalid(context, SpecError("offset", "must be >= 0"))
        uploaded = self._uploaded(job.id)
        # Uploaded objects not (yet) in a result too: the checkpoint a requeued task resumes from.
        candidates = [
            *self.store.artifacts(job.id),
            *({"uri": o.uri, "kind": o.kind} for o in uploaded.values()),
        ]
        found = pick_artifact(candidates, request.uri, request.kind)
        if found is None:
            what = repr(request.uri) if request.uri else f"{request.kind or 'model'} artifact"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"job {job.id} has no {what}; `matrec-ctl artifacts {job.id}` lists its files",
            )
        assert found is not None
        recorded = uploaded.get(found["uri"])
        try:
            path = readable_path(found["uri"], self.policy.artifact_root)
            chunks = read_chunks(path, request.offset)
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return
                if recorded is not None and chunk.sha256 and chunk.sha256 != recorded.sha256:
                    log.error("artifact %s is corrupt: %s", found["uri"], chunk.sha256)
                    self._fall_back_from(recorded)
                    await context.abort(
                        grpc.StatusCode.DATA_LOSS,
                        f"artifact {found['uri']} is corrupt on the coordinator: its bytes hash "
                        f"to {chunk.sha256}, but {recorded.sha256} was recorded when agent "
                        f"{recorded.agent_id} uploaded it; the file changed on disk since",
                    )
                yield jobs_pb2.ArtifactChunk(
                    uri=found["uri"],
                    offset=chunk.offset,
                    data=chunk.data,
                    total_size=chunk.total_size,
                    sha256=chunk.sha256,
                )
        except ArtifactUnavailable as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except ValueError as error:
            await abort_invalid(context, SpecError("offset", str(error)))
