"""The agent daemon: registers, keeps one stream to the coordinator up, runs assigned tasks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from dataclasses import dataclass

import grpc
from matrec.agent import resources
from matrec.agent.artifact_transfer import ArtifactTransfers
from matrec.agent.outbox import Outbox
from matrec.agent.settings import AgentSettings
from matrec.agent.task_runner import TaskEnvironment, TaskRun
from matrec.agent.telemetry import AgentTelemetry
from matrec.common.tls import channel_credentials
from matrec.common.tls_mismatch import diagnose
from matrec.v1 import agents_pb2, agents_pb2_grpc, artifacts_pb2, common_pb2

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
GRPC_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
#: Seconds an agent whose starter has ended gives its tasks to checkpoint: with the waits after
#: it, well under the 10 s in which an embedded cluster must be gone after its starter.
PARENT_GONE_GRACE = 3.0


@dataclass
class Backoff:
    """Exponential reconnect delay: 0.5 s doubling up to 10 s, reset after a good session."""

    initial: float = 0.5
    maximum: float = 10.0
    current: float = 0.5

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class AgentDaemon:
    def __init__(self, settings: AgentSettings, telemetry: AgentTelemetry | None = None) -> None:
        self.settings = settings
        self.host = resources.detect(settings.cpus, settings.gpus)
        self.telemetry = telemetry
        self.outbox = Outbox()
        self.runs: dict[tuple[str, int], TaskRun] = {}
        self.run_tasks: set[asyncio.Task[None]] = set()
        self.gpus_in_use: dict[tuple[str, int], tuple[int, ...]] = {}
        self.draining = False
        self.heartbeat_interval = 5.0
        self._stopped = asyncio.Event()
        self._id_file = settings.data_dir / "agent_id"
        self.agent_id = self._id_file.read_text().strip() if self._id_file.exists() else ""
        #: Set once the coordinator says hosts share nothing (checkpoints travel as uploads).
        self.transfers: ArtifactTransfers | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `shutdown()` completes."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        connection = asyncio.create_task(self._stay_connected())
        await self._stopped.wait()
        connection.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connection
        if self.transfers is not None:
            await self.transfers.close()

    async def shutdown(self, *, parent_gone: bool = False) -> None:
        """Take no new work, let running tasks checkpoint and hand them back, then stop.

        `parent_gone`: the process that started this agent (an embedded cluster's) has ended,
        and the coordinator with it, so nobody waits for an orderly hand-back: tasks get
        PARENT_GONE_GRACE seconds to checkpoint, the last messages two more. A shutdown already
        under way then kills its tasks' workers at once."""
        if self.draining:
            if parent_gone:
                for run in self.runs.values():
                    run.kill()
            return
        self.draining = True
        grace, kill_wait, ack_wait = (
            (PARENT_GONE_GRACE, 1.0, 2.0) if parent_gone else (self.settings.stop_grace, 5.0, 10.0)
        )
        if parent_gone:
            log.info("the process that started this agent has ended; stopping")
        log.info("shutting down: %d task(s) will checkpoint and be handed back", len(self.runs))
        self._send_heartbeat()
        for run in self.runs.values():
            run.preempt()
        if self.run_tasks:
            _done, pending = await asyncio.wait(self.run_tasks, timeout=grace)
            for run in self.runs.values():
                run.kill()
            if pending:
                await asyncio.wait(pending, timeout=kill_wait)
        if not await self.outbox.wait_empty(timeout=ack_wait):
            log.warning("%d message(s) were not acknowledged before exit", self.outbox.pending)
        self._stopped.set()

    # ---- connection ---------------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        s = self.settings
        if s.tls_ca is None:
            return grpc.aio.insecure_channel(s.coordinator, options=GRPC_CHANNEL_OPTIONS)
        credentials = channel_credentials(s.tls_ca, s.tls_cert, s.tls_key)
        return grpc.aio.secure_channel(s.coordinator, credentials, options=GRPC_CHANNEL_OPTIONS)

    async def _stay_connected(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with self._channel() as channel:
                    stub = agents_pb2_grpc.AgentServiceStub(channel)
                    await self._register(stub)
                    await self._session(stub, backoff)
            except grpc.aio.AioRpcError as error:
                details = error.details() or ""
                mismatch = diagnose(details, client_tls=self.settings.tls_ca is not None)
                log.warning(
                    "coordinator %s: %s (%s); reconnecting",
                    self.settings.coordinator,
                    error.code().name,
                    details if mismatch is None else f"{mismatch.problem}; {mismatch.fix}",
                )
            delay = backoff.next()
            log.info("reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _register(self, stub: agents_pb2_grpc.AgentServiceStub) -> None:
        h = self.host
        response = await stub.RegisterAgent(
            agents_pb2.RegisterAgentRequest(
                agent_id=self.agent_id,
                name=self.settings.name,
                hostname=socket.gethostname(),
                allow_scripts=self.settings.allow_scripts,
                resources=common_pb2.Resources(
                    gpus=len(h.gpus), cpus=h.cpus, memory_bytes=h.memory_bytes
                ),
                gpus=[
                    agents_pb2.GpuInfo(
                        index=g.index, name=g.name, memory_bytes=g.memory_bytes, uuid=g.uuid
                    )
                    for g in h.gpus
                ],
                version=AGENT_VERSION,
            ),
            timeout=10,
            metadata=self.settings.call_metadata,
        )
        if response.agent_id != self.agent_id:
            self.agent_id = response.agent_id
            self._id_file.write_text(self.agent_id)
        log.info(
            "registered as %s: %g CPUs, %d GPU(s), ImageNet weights (matrec[imagenet]) %s",
            self.agent_id,
            h.cpus,
            len(h.gpus),
            "installed" if h.imagenet_weights else "not installed",
        )
        self.heartbeat_interval = max(0.1, response.heartbeat_interval.ToMilliseconds() / 1000)
        share_nothing = response.artifact_store == artifacts_pb2.ARTIFACT_STORE_KIND_COORDINATOR
        if share_nothing and self.transfers is None:
            # A channel of its own, outliving reconnects of the stream: uploads carry on.
            self.transfers = ArtifactTransfers(
                self._channel(), self.agent_id, self.settings.call_metadata
            )
            log.info("hosts share nothing: checkpoints and models are uploaded to the coordinator")

    async def _session(self, stub: agents_pb2_grpc.AgentServiceStub, backoff: Backoff) -> None:
        hello = agents_pb2.AgentMessage(
            hello=agents_pb2.Hello(
                agent_id=self.agent_id, running=[run.ref for run in self.runs.values()]
            )
        )
        stream = self.outbox.attach(hello)

        async def requests() -> object:
            while True:
                message = await stream.get()
                if message is None:
                    return
                yield message

        heartbeats = asyncio.create_task(self._heartbeat_loop())
        try:
            call = stub.Connect(requests(), metadata=self.settings.call_metadata)
            first = True
            async for message in call:
                if first:
                    log.info(
                        "connected to coordinator %s as %s",
                        self.settings.coordinator,
                        self.agent_id,
                    )
                    backoff.reset()
                    first = False
                self._handle(message)
        finally:
            heartbeats.cancel()
            self.outbox.detach()

    async def _heartbeat_loop(self) -> None:
        while True:
            self._send_heartbeat()
            await asyncio.sleep(self.heartbeat_interval)

    def _send_heartbeat(self) -> None:
        usage = resources.sample_usage(len(self.host.gpus))
        if self.telemetry is not None:
            self.telemetry.observe(usage, len(self.runs))
        self.outbox.send_unacknowledged(
            agents_pb2.AgentMessage(
                heartbeat=agents_pb2.Heartbeat(
                    running=[run.ref for run in self.runs.values()],
                    draining=self.draining,
                    usage=common_pb2.ResourceUsage(
                        cpu_percent=usage.cpu_percent,
                        memory_used_bytes=usage.memory_used_bytes,
                        gpu_utilization=usage.gpu_utilization,
                        gpu_memory_used_bytes=usage.gpu_memory_used_bytes,
                    ),
                )
            )
        )

    # ---- coordinator messages -----------------------------------------------------------------

    def _handle(self, message: agents_pb2.CoordinatorMessage) -> None:
        body = message.WhichOneof("body")
        if body == "ack":
            self.outbox.ack(message.ack.seq)
        elif body == "assignment":
            self._start(message.assignment)
        elif body == "gang_rendezvous":
            ref = message.gang_rendezvous.task
            member = self.runs.get((ref.task_id, ref.attempt))
            if member is not None:
                member.deliver_rendezvous(message.gang_rendezvous)
        elif body == "cancel":
            key = (message.cancel.task.task_id, message.cancel.task.attempt)
            run = self.runs.get(key)
            if run is not None and message.cancel.requeue:
                log.info("handing back task %s attempt %d: %s", *key, message.cancel.reason)
                run.preempt()
            elif run is not None:
                log.info("cancelling task %s attempt %d: %s", *key, message.cancel.reason)
                run.cancel(message.cancel.reason)

    def _start(self, assignment: agents_pb2.Assignment) -> None:
        key = (assignment.task.task_id, assignment.task.attempt)
        if key in self.runs:
            return
        if self.draining:
            self.outbox.add(
                agents_pb2.AgentMessage(
                    result=agents_pb2.TaskResult(
                        task=assignment.task,
                        outcome=agents_pb2.TASK_OUTCOME_PREEMPTED,
                        error="agent is shutting down",
                    )
                )
            )
            return
        if assignment.kind == "script" and not self.settings.allow_scripts:
            # The coordinator sends none; this guards against one that does (an older one).
            log.warning("task %s attempt %d refused: this agent does not run scripts", *key)
            self.outbox.add(
                agents_pb2.AgentMessage(
                    result=agents_pb2.TaskResult(
                        task=assignment.task,
                        outcome=agents_pb2.TASK_OUTCOME_FAILED,
                        error=f"agent {self.settings.name} does not run script tasks (it was "
                        "not started with --allow-scripts)",
                        permanent=True,
                    )
                )
            )
            return
        gpus = self._claim_gpus(key, assignment.resources.gpus)
        run = TaskRun(
            assignment,
            TaskEnvironment(
                python=self.settings.python,
                work_root=self.settings.data_dir / "tasks",
                cpus=assignment.resources.cpus or 1.0,
                gpu_indices=gpus,
                allowed_paths=self.settings.allowed_paths,
                script_user=self.settings.script_user,
                transfers=self.transfers,
                artifact_home=self.settings.data_dir / "artifacts",
            ),
            self.outbox.add,
        )
        self.runs[key] = run
        log.info("task %s attempt %d assigned", *key)
        task = asyncio.create_task(run.run())
        self.run_tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, key))

    def _finished(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        self.runs.pop(key, None)
        self.gpus_in_use.pop(key, None)
        self.run_tasks.discard(task)

    def _claim_gpus(self, key: tuple[str, int], count: int) -> tuple[int, ...]:
        busy = {i for claimed in self.gpus_in_use.values() for i in claimed}
        free = [g.index for g in self.host.gpus if g.index not in busy]
        claimed = tuple(free[:count])
        self.gpus_in_use[key] = claimed
        return claimed
