"""The agent-facing gRPC service: registration and the one bidirectional stream per agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from matrec.common.task_files import SENT_RESULT_FILES
from matrec.common.tls import ROLE_AGENT, peer_common_name, peer_role
from matrec.coordinator import convert
from matrec.coordinator.auth import current_identity
from matrec.coordinator.availability import DATABASE_DOWN_ERRORS, DatabaseAvailability
from matrec.coordinator.gangs import StaleRendezvous
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.rows import new_id
from matrec.coordinator.scheduler import Scheduler
from matrec.coordinator.sessions import AgentSession, AgentSessions
from matrec.coordinator.states import AgentState, TaskOutcome
from matrec.coordinator.store import Store, TaskHolder
from matrec.coordinator.task_files import ReceivedFiles, TaskFileError
from matrec.coordinator.telemetry import CoordinatorTelemetry
from matrec.v1 import agents_pb2, agents_pb2_grpc, artifacts_pb2, common_pb2

log = logging.getLogger(__name__)

DB_RETRY_INITIAL_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 5.0
#: (agent, task) pairs already warned about; forgotten wholesale past this many.
MAX_WARNED = 10_000

T = TypeVar("T", common_pb2.Metric, common_pb2.LogLine)

OUTCOME_FROM_PB = {
    agents_pb2.TASK_OUTCOME_SUCCEEDED: TaskOutcome.SUCCEEDED,
    agents_pb2.TASK_OUTCOME_FAILED: TaskOutcome.FAILED,
    agents_pb2.TASK_OUTCOME_CANCELLED: TaskOutcome.CANCELLED,
    agents_pb2.TASK_OUTCOME_PREEMPTED: TaskOutcome.PREEMPTED,
}


def _cancel(task_id: str, attempt: int, reason: str) -> agents_pb2.CoordinatorMessage:
    return agents_pb2.CoordinatorMessage(
        cancel=agents_pb2.CancelTask(
            task=agents_pb2.TaskRef(task_id=task_id, attempt=attempt), reason=reason
        )
    )


class AgentService(agents_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        store: Store,
        sessions: AgentSessions,
        scheduler: Scheduler,
        notifier: JobNotifier,
        telemetry: CoordinatorTelemetry,
        availability: DatabaseAvailability,
        *,
        heartbeat_interval: float,
        lease_ttl: float,
        artifact_store: artifacts_pb2.ArtifactStoreKind.ValueType = (
            artifacts_pb2.ARTIFACT_STORE_KIND_SHARED
        ),
        received: ReceivedFiles,
    ) -> None:
        self.received = received
        self.store = store
        self.sessions = sessions
        self.scheduler = scheduler
        self.notifier = notifier
        self.telemetry = telemetry
        self.availability = availability
        self.heartbeat_interval = heartbeat_interval
        self.lease_ttl = lease_ttl
        self.artifact_store = artifact_store
        self._warned: set[tuple[str, str]] = set()

    async def RegisterAgent(
        self, request: agents_pb2.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> agents_pb2.RegisterAgentResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: an agent needs a name")
        certified = _certified_agent(context)
        if certified is not None and request.name != certified:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is for agent {certified!r}; it cannot register as "
                f"{request.name!r}",
            )
        identity = current_identity.get()
        if identity is not None:
            # An agent token names the one agent it may act as.
            known = self.store.get_agent(request.agent_id) if request.agent_id else None
            if request.name != identity.name or (known is not None and known.name != identity.name):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this token is for agent {identity.name!r}; it cannot register as "
                    f"{request.name!r}" + (f" ({request.agent_id})" if request.agent_id else ""),
                )
        agent_id = request.agent_id or new_id("agent")
        self.store.upsert_agent(
            agent_id,
            name=request.name,
            hostname=request.hostname,
            version=request.version,
            resources={
                "gpus": request.resources.gpus,
                "cpus": request.resources.cpus,
                "memory_bytes": request.resources.memory_bytes,
            },
            allow_scripts=request.allow_scripts,
            gpus=[
                {"index": g.index, "name": g.name, "memory_bytes": g.memory_bytes, "uuid": g.uuid}
                for g in request.gpus
            ],
        )
        log.info("agent %s (%s) registered", request.name, agent_id)
        heartbeat = duration_pb2.Duration()
        heartbeat.FromMilliseconds(int(self.heartbeat_interval * 1000))
        lease = duration_pb2.Duration()
        lease.FromMilliseconds(int(self.lease_ttl * 1000))
        return agents_pb2.RegisterAgentResponse(
            agent_id=agent_id,
            heartbeat_interval=heartbeat,
            lease_ttl=lease,
            artifact_store=self.artifact_store,
        )

    async def Connect(
        self,
        request_iterator: AsyncIterator[agents_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agents_pb2.CoordinatorMessage]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if not first.HasField("hello"):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the first message on Connect must be hello"
            )
        agent_id = first.hello.agent_id
        agent = self.store.get_agent(agent_id)
        if agent is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"agent {agent_id!r} is not registered; call RegisterAgent first",
            )
        certified = _certified_agent(context)
        if certified is not None and agent is not None and agent.name != certified:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is for agent {certified!r}, not for {agent_id}",
            )
        identity = current_identity.get()
        if identity is not None and agent is not None and agent.name != identity.name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token is for agent {identity.name!r}, not for {agent_id} ({agent.name!r})",
            )
        session = self.sessions.open(agent_id)
        session.context = context
        self.store.set_agent_state(agent_id, AgentState.CONNECTED)
        log.info("agent %s connected (%d tasks running)", agent_id, len(first.hello.running))
        running = [(r.task_id, r.attempt) for r in first.hello.running]
        self._renew(session, running)
        for delivery in self.scheduler.gangs.deliveries_for(agent_id, running):
            session.send(delivery)
        self.scheduler.wake()
        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
            if session.refused:
                await context.abort(session.refused_code, session.refused)
        finally:
            reader.cancel()
            if self.sessions.discard(session):
                with contextlib.suppress(*DATABASE_DOWN_ERRORS):
                    self.store.set_agent_state(agent_id, AgentState.DISCONNECTED)
                log.info("agent %s disconnected; its leases run out unless it comes back", agent_id)

    async def _read(
        self, session: AgentSession, request_iterator: AsyncIterator[agents_pb2.AgentMessage]
    ) -> None:
        try:
            async for message in request_iterator:
                if message.seq:
                    if message.seq <= session.last_seq:
                        # The agent's outbox numbers its messages in order and replays them in
                        # order on a new stream; anything else is a broken or hostile agent.
                        reason = (
                            f"sequence number {message.seq} after {session.last_seq}: an agent "
                            "numbers its messages in increasing order on each stream"
                        )
                        log.warning("agent %s: %s; stream closed", session.agent_id, reason)
                        session.refuse(reason)
                        return
                    session.last_seq = message.seq
                if not await self._handle_until_stored(session, message):
                    continue
                if message.seq:
                    session.send(agents_pb2.CoordinatorMessage(ack=agents_pb2.Ack(seq=message.seq)))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            session.close()

    async def _handle_until_stored(
        self, session: AgentSession, message: agents_pb2.AgentMessage
    ) -> bool:
        """Handle one message, waiting out a database outage (the agent's later messages queue
        behind it, so their order is kept). False if the message itself could not be handled."""
        delay = DB_RETRY_INITIAL_SECONDS
        while True:
            try:
                self._handle(session, message)
            except DATABASE_DOWN_ERRORS as error:
                await self.availability.mark_down(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)
                continue
            except Exception:
                # Not acknowledged: the agent re-sends it after its next reconnect.
                log.exception("could not handle a message from agent %s", session.agent_id)
                return False
            return True

    def _handle(self, session: AgentSession, message: agents_pb2.AgentMessage) -> None:
        agent_id = session.agent_id
        body = message.WhichOneof("body")
        if body == "heartbeat":
            hb = message.heartbeat
            session.draining = hb.draining
            session.usage = common_pb2.ResourceUsage()
            session.usage.CopyFrom(hb.usage)
            state = AgentState.DRAINING if hb.draining else AgentState.CONNECTED
            self.store.set_agent_state(agent_id, state)
            self._renew(session, [(r.task_id, r.attempt) for r in hb.running])
        elif body == "task_started":
            ref = message.task_started.task
            change = self.store.mark_running(ref.task_id, ref.attempt, agent_id)
            if change is not None:
                self.notifier.notify(change.task.job_id)
        elif body == "metrics":
            self._store_metrics(agent_id, message)
        elif body == "logs":
            self._store_logs(agent_id, message)
        elif body == "checkpoint":
            ref = message.checkpoint.task
            self.store.record_checkpoint(
                ref.task_id, ref.attempt, agent_id, message.checkpoint.path
            )
        elif body == "result":
            self._finish(session, message.result)
        elif body == "gang_rendezvous":
            self._pass_on_rendezvous(agent_id, message.gang_rendezvous)
        elif body == "task_file":
            self._store_file_chunk(agent_id, message.task_file)
        elif body == "hello":
            log.warning("agent %s sent a second hello; ignored", agent_id)

    def _store_file_chunk(self, agent_id: str, chunk: agents_pb2.TaskFileChunk) -> None:
        task_id = chunk.task.task_id
        holder = self.store.task_holder(task_id)
        if holder is None or holder.agent_id != agent_id or holder.attempt != chunk.task.attempt:
            self._warn_once(
                agent_id, task_id, "sent a file of task %s, which it does not hold; dropped"
            )
            return
        try:
            done = self.received.store_chunk(holder.job_id, chunk)
        except (TaskFileError, OSError) as error:
            log.warning("agent %s: %s of %s: %s", agent_id, chunk.name, task_id, error)
            return
        if done is not None:
            log.info(
                "received %s of %s attempt %d (%d bytes)",
                chunk.name,
                task_id,
                chunk.task.attempt,
                chunk.size,
            )

    def _pass_on_rendezvous(self, agent_id: str, rendezvous: agents_pb2.GangRendezvous) -> None:
        try:
            deliveries = self.scheduler.gangs.report(agent_id, rendezvous)
        except StaleRendezvous as stale:
            log.info("agent %s reported a rendezvous that is not used: %s", agent_id, stale)
            return
        for member_agent, delivery in deliveries:
            # An agent away now gets it again when it reconnects (Connect above).
            self.sessions.send(member_agent, delivery)
        log.info(
            "gang %s meets at %s:%d (%s); passed on to %d member(s)",
            rendezvous.gang_id,
            rendezvous.address,
            rendezvous.port,
            rendezvous.backend,
            len(deliveries),
        )

    def _renew(self, session: AgentSession, running: list[tuple[str, int]]) -> None:
        stale, cancelled = self.store.renew_leases(session.agent_id, running, self.lease_ttl)
        for task_id, attempt in stale:
            session.send(_cancel(task_id, attempt, "this attempt is no longer assigned to you"))
        for task_id, attempt in cancelled:
            session.send(_cancel(task_id, attempt, "the job was cancelled"))

    def _store_metrics(self, agent_id: str, message: agents_pb2.AgentMessage) -> None:
        rows = self._rows_by_job(
            agent_id,
            message.metrics.metrics,
            lambda m: {
                "task_id": m.task_id,
                "attempt": m.attempt,
                "step": m.step,
                "key": m.key,
                "value": m.value,
                "time": m.time.ToDatetime(tzinfo=UTC),
            },
        )
        for job_id, job_rows in rows.items():
            self.store.add_metrics(job_id, job_rows)
            self.store.add_memory_events(job_id, job_rows)
            self.telemetry.count_metric_points(len(job_rows))
            self.notifier.notify(job_id)

    def _store_logs(self, agent_id: str, message: agents_pb2.AgentMessage) -> None:
        rows = self._rows_by_job(
            agent_id,
            message.logs.lines,
            lambda line: {
                "task_id": line.task_id,
                "attempt": line.attempt,
                "seq": line.seq,
                "time": line.time.ToDatetime(tzinfo=UTC),
                "text": line.text,
            },
        )
        for job_id, job_rows in rows.items():
            self.store.add_logs(job_id, job_rows)
            self.notifier.notify(job_id)

    def _rows_by_job(
        self, agent_id: str, items: Iterable[T], to_row: Callable[[T], dict[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """The points of tasks this agent holds, grouped by their job. Points of unknown tasks,
        of tasks another agent holds (or none: queued again), and of attempts the task has not
        reached are dropped and logged, once per agent and task: a late flush after a lease ran
        out, or an agent that misbehaves. Either way they cannot land in another attempt's
        history."""
        holders: dict[str, TaskHolder | None] = {}
        by_job: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            task_id = item.task_id
            if task_id not in holders:
                holders[task_id] = self.store.task_holder(task_id)
            holder = holders[task_id]
            if holder is None:
                self._warn_once(agent_id, task_id, "reported on unknown task %s; dropped")
            elif holder.agent_id != agent_id:
                self._warn_once(
                    agent_id, task_id, "reported on task %s, which it does not hold; dropped"
                )
            elif not 1 <= item.attempt <= holder.attempt:
                self._warn_once(
                    agent_id, task_id, "reported on an attempt task %s has not had; dropped"
                )
            else:
                by_job.setdefault(holder.job_id, []).append(to_row(item))
        return by_job

    def _warn_once(self, agent_id: str, task_id: str, what: str) -> None:
        key = (agent_id, task_id)
        if key in self._warned:
            return
        if len(self._warned) > MAX_WARNED:
            self._warned.clear()
        self._warned.add(key)
        log.warning("agent %s " + what, agent_id, task_id)

    def _finish(self, session: AgentSession, result: agents_pb2.TaskResult) -> None:
        outcome = OUTCOME_FROM_PB.get(result.outcome)
        if outcome is None:
            log.warning("agent %s sent a result without an outcome; ignored", session.agent_id)
            return
        values = convert.struct_to_dict(result.result) if result.HasField("result") else None
        if values is not None and SENT_RESULT_FILES.keys() & values.keys():
            # The files the agent sent came before the result; name the coordinator's copies.
            holder = self.store.task_holder(result.task.task_id)
            if holder is not None:
                values = self.received.substitute(
                    holder.job_id, result.task.task_id, result.task.attempt, values
                )
        change = self.store.finish_task(
            result.task.task_id,
            result.task.attempt,
            session.agent_id,
            outcome,
            error=result.error,
            result=values,
            checkpoint_path=result.checkpoint_path,
            permanent=result.permanent,
        )
        if change is None:
            log.info(
                "ignored a stale result for %s attempt %d from agent %s",
                result.task.task_id,
                result.task.attempt,
                session.agent_id,
            )
            return
        self.telemetry.task_outcomes.labels(outcome.value).inc()
        log.info(
            "%s attempt %d %s on agent %s; task is now %s",
            change.task.id,
            result.task.attempt,
            outcome.value,
            session.agent_id,
            change.task.state.value,
        )
        self.notifier.notify(change.task.job_id)
        self.scheduler.wake()


def _certified_agent(context: grpc.aio.ServicerContext) -> str | None:
    """Under mutual TLS, the agent name an agent certificate vouches for (else None)."""
    auth = context.auth_context()
    if peer_role(auth) != ROLE_AGENT:
        return None
    return peer_common_name(auth)
