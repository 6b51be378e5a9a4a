"""Runs one task attempt in a worker subprocess and turns what it says into agent messages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from matrec.agent.artifact_transfer import ArtifactTransfers, TransferError
from matrec.agent.memory_report import killed_by_oom_killer, memory_cgroup_limit, oom_kills
from matrec.agent.path_policy import ALLOWED_PATHS_ENV
from matrec.agent.remote_artifacts import RemoteArtifacts
from matrec.agent.script_user import SCRIPT_USER_ENV
from matrec.agent.worker_protocol import (
    EXIT_INVALID_TASK,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_PREEMPTED,
    PARENT_PID_ENV,
    CheckpointEvent,
    LogEvent,
    MetricsEvent,
    RendezvousEvent,
    ResultEvent,
    WorkerTask,
    encode_event,
    parse_event,
)
from matrec.common.task_files import SENDING_KINDS, SENT_RESULT_FILES, TASK_FILE_CHUNK_BYTES
from matrec.v1 import agents_pb2, common_pb2

log = logging.getLogger(__name__)

#: Seconds a worker gets to checkpoint and exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 60.0
ERROR_TAIL_LINES = 30
LOG_FLUSH_SECONDS = 0.5
LOG_BATCH_LINES = 200


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


@dataclass(frozen=True)
class TaskEnvironment:
    python: str
    work_root: Path
    cpus: float
    gpu_indices: tuple[int, ...]
    allowed_paths: tuple[Path, ...] = ()
    script_user: str = ""
    #: Set when hosts share nothing: checkpoints and models are uploaded through these, and the
    #: worker writes under `artifact_home` (this agent's own folder) instead of a shared one.
    transfers: ArtifactTransfers | None = None
    artifact_home: Path | None = None


class TaskRun:
    """One attempt of one task. `emit` receives every message to send (through the outbox)."""

    def __init__(
        self,
        assignment: agents_pb2.Assignment,
        env: TaskEnvironment,
        emit: Callable[[agents_pb2.AgentMessage], None],
    ) -> None:
        self.assignment = assignment
        self.ref = agents_pb2.TaskRef(
            task_id=assignment.task.task_id, attempt=assignment.task.attempt
        )
        self.env = env
        self.emit = emit
        self.process: asyncio.subprocess.Process | None = None
        self.cancel_reason = ""
        self.preempting = False
        self.checkpoint_path = assignment.resume_from
        self._log_seq = 0
        self._log_lines: list[common_pb2.LogLine] = []
        self._tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
        self._oom_kills_at_start: int | None = None
        self._result: dict[str, Any] | None = None
        self.remote = (
            RemoteArtifacts(env.transfers, assignment, env.artifact_home)
            if env.transfers is not None and env.artifact_home is not None
            else None
        )
        # Member 0's rendezvous for this gang member's launcher, once the coordinator sent it.
        self._rendezvous: RendezvousEvent | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.ref.task_id, self.ref.attempt)

    def cancel(self, reason: str) -> None:
        """Stop the worker; the attempt ends as cancelled."""
        if not self.cancel_reason:
            self.cancel_reason = reason or "cancelled"
            self._signal(signal.SIGTERM)

    def preempt(self) -> None:
        """Ask the worker to checkpoint and stop; the attempt is handed back to the coordinator."""
        self.preempting = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    @property
    def _awaits_rendezvous(self) -> bool:
        return self.assignment.gang.size > 1 and self.assignment.gang.member != 0

    def deliver_rendezvous(self, message: agents_pb2.GangRendezvous) -> None:
        """Member 0's rendezvous, passed on by the coordinator: to this member's launcher, which
        waits for it on its standard input. One for another placement is ignored."""
        if not self._awaits_rendezvous or message.gang_id != self.assignment.gang.id:
            log.info(
                "task %s attempt %d: ignored a rendezvous of gang %s", *self.key, message.gang_id
            )
            return
        if self._rendezvous is not None:
            return  # sent again after a reconnect
        self._rendezvous = RendezvousEvent(
            message.gang_id, message.backend, message.address, message.port
        )
        self._pass_rendezvous()

    def _pass_rendezvous(self) -> None:
        process = self.process
        if self._rendezvous is None or process is None or process.stdin is None:
            return  # the launcher gets it when it starts
        with contextlib.suppress(OSError):  # it has exited already
            process.stdin.write((encode_event(self._rendezvous) + "\n").encode())

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    async def run(self) -> None:
        permanent = False
        try:
            code = await self._run_worker()
            outcome, error = self._outcome(code)
            permanent = code == EXIT_INVALID_TASK and not self.cancel_reason
            if outcome == agents_pb2.TASK_OUTCOME_SUCCEEDED:
                self._send_result_files()
            if self.remote is not None:
                outcome, error = await self._publish(outcome, error)
        except Exception as exc:
            log.exception("task %s attempt %d could not run", *self.key)
            outcome, error = agents_pb2.TASK_OUTCOME_FAILED, f"agent could not run the task: {exc}"
        finally:
            if self.remote is not None:
                await self.remote.close()
        self._flush_logs()
        result = agents_pb2.TaskResult(
            task=self.ref,
            outcome=outcome,
            error=error,
            checkpoint_path=self.checkpoint_path,
            permanent=permanent,
        )
        if self._result is not None and outcome == agents_pb2.TASK_OUTCOME_SUCCEEDED:
            struct = struct_pb2.Struct()
            json_format.ParseDict(self._result, struct)
            result.result.CopyFrom(struct)
        self.emit(agents_pb2.AgentMessage(result=result))

    async def _publish(self, outcome: int, error: str) -> tuple[int, str]:
        """Hosts share nothing: wait for the checkpoint uploads, upload the model, and make the
        result name the uploaded files."""
        assert self.remote is not None
        await self.remote.settle()
        self.checkpoint_path = self.remote.recorded_checkpoint
        if outcome == agents_pb2.TASK_OUTCOME_SUCCEEDED and self._result is not None:
            try:
                self._result = await self.remote.publish(self._result)
            except (TransferError, OSError) as exc:
                return agents_pb2.TASK_OUTCOME_FAILED, f"could not upload the model: {exc}"
        return outcome, error

    def _send_result_files(self) -> None:
        """Send the files the result names (a score job's scores) to the coordinator, in
        chunks, ahead of the result: hosts share no folder."""
        if self.assignment.kind not in SENDING_KINDS:
            return
        for key, name in SENT_RESULT_FILES.items():
            path = (self._result or {}).get(key)
            if not isinstance(path, str):
                continue
            digest, size, offset = hashlib.sha256(), Path(path).stat().st_size, 0
            with open(path, "rb") as file:
                while True:
                    data = file.read(TASK_FILE_CHUNK_BYTES)
                    digest.update(data)
                    last = offset + len(data) >= size or not data  # not data: it shrank
                    self.emit(
                        agents_pb2.AgentMessage(
                            task_file=agents_pb2.TaskFileChunk(
                                task=self.ref,
                                name=name,
                                offset=offset,
                                data=data,
                                last=last,
                                size=size if last else 0,
                                sha256=digest.hexdigest() if last else "",
                            )
                        )
                    )
                    offset += len(data)
                    if last:
                        break

    async def _run_worker(self) -> int:
        a = self.assignment
        work_dir = self.env.work_root / f"{self.ref.task_id}-a{self.ref.attempt}"
        work_dir.mkdir(parents=True, exist_ok=True)
        artifact_dir = str(self.remote.dir) if self.remote is not None else a.artifact_dir
        resume_from = await self.remote.prepare() if self.remote is not None else a.resume_from
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        task_file = work_dir / "task.json"
        config = json_format.MessageToDict(a.config)
        task_file.write_text(
            WorkerTask(
                task_id=self.ref.task_id,
                attempt=self.ref.attempt,
                job_id=a.job_id,
                kind=a.kind,
                config=config,
                artifact_dir=artifact_dir,
                resume_from=resume_from or None,
                gang_id=a.gang.id,
                gang_member=a.gang.member,
                gang_size=max(1, a.gang.size),
            ).to_json()
        )
        # A distributed task runs as N ranks under a launcher; the events come from rank 0.
        ranks = int(config.get("workers_per_host", 1) or 1)
        distributed = ranks > 1 or a.gang.size > 1
        program = "matrec.agent.launcher" if distributed else "matrec.agent.worker"
        env = dict(os.environ)
        threads = max(1, int(self.env.cpus))
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        # NVML numbers GPUs by PCI bus; make CUDA use the same order so the indices agree.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.env.gpu_indices)
        env["PYTHONUNBUFFERED"] = "1"
        env[PARENT_PID_ENV] = str(os.getpid())
        # The worker checks the task's paths against the agent's roots (agent/path_policy.py).
        env[ALLOWED_PATHS_ENV] = os.pathsep.join(str(p) for p in self.env.allowed_paths)
        # A script task's program drops to this account (agent/script_user.py).
        env[SCRIPT_USER_ENV] = self.env.script_user
        read_fd, write_fd = os.pipe()
        self._oom_kills_at_start = oom_kills()
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.env.python,
                "-m",
                program,
                "--task-file",
                str(task_file),
                "--events-fd",
                str(write_fd),
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.PIPE
                if self._awaits_rendezvous
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=work_dir,
                env=env,
                # Its own process group, so that stopping it reaches its DataLoader workers too.
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        log.info("task %s attempt %d started as pid %d", *self.key, self.process.pid)
        self.emit(agents_pb2.AgentMessage(task_started=agents_pb2.TaskStarted(task=self.ref)))
        self._pass_rendezvous()
        if self.cancel_reason or self.preempting:
            self._signal(signal.SIGTERM)
        assert self.process.stdout is not None
        flusher = asyncio.create_task(self._flush_logs_periodically())
        try:
            await asyncio.gather(self._read_events(read_fd), self._read_output(self.process.stdout))
            code = await self.process.wait()
        finally:
            flusher.cancel()
        log.info("task %s attempt %d worker exited with %d", *self.key, code)
        return code

    def _outcome(self, code: int) -> tuple[int, str]:
        if code == EXIT_OK and self._result is not None:
            return agents_pb2.TASK_OUTCOME_SUCCEEDED, ""
        if self.cancel_reason:
            return agents_pb2.TASK_OUTCOME_CANCELLED, self.cancel_reason
        if code == EXIT_PREEMPTED:
            return agents_pb2.TASK_OUTCOME_PREEMPTED, "stopped after a checkpoint"
        if self.preempting:
            # Asked to hand the task back; whatever it died of (a rank stuck in a collective
            # is killed), the next attempt resumes from the last checkpoint.
            return agents_pb2.TASK_OUTCOME_PREEMPTED, f"handed back (worker exit code {code})"
        tail = "\n".join(self._tail).strip()
        oom_killed = (
            killed_by_oom_killer(self._oom_kills_at_start, oom_kills(), memory_cgroup_limit())
            if code == -signal.SIGKILL
            else None
        )
        if oom_killed is not None:
            reason = oom_killed
        elif code < 0:
            reason = f"worker killed by signal {signal.Signals(-code).name}"
        elif code == EXIT_OUT_OF_MEMORY:
            reason = "out of memory (worker exit code 3)"
        elif code == EXIT_OK:
            reason = "worker exited without reporting a result"
        else:
            reason = f"worker exited with code {code}"
        return agents_pb2.TASK_OUTCOME_FAILED, f"{reason}\n{tail}" if tail else reason

    async def _read_events(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb")
        )
        try:
            async for raw in reader:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self._handle_event(line)
        finally:
            transport.close()

    def _handle_event(self, line: str) -> None:
        try:
            event = parse_event(line)
        except ValueError as exc:
            log.warning("task %s: malformed worker event: %s", self.ref.task_id, exc)
            return
        match event:
            case MetricsEvent(step=step, values=values):
                now = _now()
                batch = common_pb2.MetricBatch(
                    metrics=[
                        common_pb2.Metric(
                            task_id=self.ref.task_id,
                            attempt=self.ref.attempt,
                            step=step,
                            key=key,
                            value=value,
                            time=now,
                        )
                        for key, value in values.items()
                    ]
                )
                self.emit(agents_pb2.AgentMessage(metrics=batch))
            case CheckpointEvent(path=path, step=step) if self.remote is not None:
                self.remote.checkpoint_written(path, step)  # recorded once uploaded
            case CheckpointEvent(path=path):
                self.checkpoint_path = path
                self.emit(
                    agents_pb2.AgentMessage(
                        checkpoint=agents_pb2.TaskCheckpoint(task=self.ref, path=path)
                    )
                )
            case LogEvent(text=text):
                self._add_log(text)
            case ResultEvent(result=result):
                self._result = result
            case RendezvousEvent(gang_id=gang_id, backend=backend, address=address, port=port):
                # Member 0's launcher opened it: the coordinator passes it on.
                self.emit(
                    agents_pb2.AgentMessage(
                        gang_rendezvous=agents_pb2.GangRendezvous(
                            task=self.ref,
                            gang_id=gang_id,
                            backend=backend,
                            address=address,
                            port=port,
                        )
                    )
                )

    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self._add_log(raw.decode("utf-8", "replace").rstrip("\n"))

    def _add_log(self, text: str) -> None:
        self._tail.append(text)
        self._log_seq += 1
        self._log_lines.append(
            common_pb2.LogLine(
                task_id=self.ref.task_id,
                attempt=self.ref.attempt,
                seq=self._log_seq,
                time=_now(),
                text=text,
            )
        )
        if len(self._log_lines) >= LOG_BATCH_LINES:
            self._flush_logs()

    def _flush_logs(self) -> None:
        if self._log_lines:
            lines, self._log_lines = self._log_lines, []
            self.emit(agents_pb2.AgentMessage(logs=common_pb2.LogBatch(lines=lines)))

    async def _flush_logs_periodically(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_SECONDS)
            self._flush_logs()
