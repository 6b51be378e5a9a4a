"""Store records to protocol messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from matrec.coordinator.states import AgentState, JobState, TaskState
from matrec.coordinator.store import (
    AgentRecord,
    EventRecord,
    JobRecord,
    LogRecord,
    MetricRecord,
    TaskRecord,
)
from matrec.v1 import common_pb2, jobs_pb2

JOB_STATE_TO_PB = {s: getattr(common_pb2, f"JOB_STATE_{s.name}") for s in JobState}
JOB_STATE_FROM_PB = {v: k for k, v in JOB_STATE_TO_PB.items()}
TASK_STATE_TO_PB = {s: getattr(common_pb2, f"TASK_STATE_{s.name}") for s in TaskState}
AGENT_STATE_TO_PB = {s: getattr(jobs_pb2, f"AGENT_STATE_{s.name}") for s in AgentState}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(value)


def resources(value: Mapping[str, Any]) -> common_pb2.Resources:
    return common_pb2.Resources(
        gpus=int(value.get("gpus", 0)),
        cpus=float(value.get("cpus", 0.0)),
        memory_bytes=int(value.get("memory_bytes", 0)),
        gpu_memory_bytes=int(value.get("gpu_memory_bytes", 0) or 0),
    )


def task(record: TaskRecord) -> jobs_pb2.Task:
    return jobs_pb2.Task(
        id=record.id,
        job_id=record.job_id,
        index=record.index,
        state=TASK_STATE_TO_PB[record.state],
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        agent_id=record.agent_id or "",
        error=record.error,
        lease_expires_at=timestamp(record.lease_expires_at),
        artifact_dir=record.artifact_dir,
        checkpoint_path=record.checkpoint_path,
    )


def job(record: JobRecord) -> jobs_pb2.Job:
    spec = record.spec
    return jobs_pb2.Job(
        id=record.id,
        spec=jobs_pb2.JobSpec(
            name=record.name,
            kind=record.kind,
            config=struct(spec.get("config", {})),
            resources=resources(spec.get("resources", {})),
            max_attempts=record.max_attempts,
            labels=spec.get("labels", {}),
        ),
        state=JOB_STATE_TO_PB[record.state],
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        error=record.error,
        tasks=[task(t) for t in record.tasks],
        result=struct(record.result),
        cancel_requested=record.cancel_requested,
        owner=record.owner,
        cancelled_by=record.cancelled_by or "",
    )


def event(record: EventRecord) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(
        seq=record.seq,
        time=timestamp(record.time),
        task_id=record.task_id,
        attempt=record.attempt,
        kind=record.kind,
        message=record.message,
    )


def metric(record: MetricRecord) -> common_pb2.Metric:
    return common_pb2.Metric(
        task_id=record.task_id,
        attempt=record.attempt,
        step=record.step,
        key=record.key,
        value=record.value,
        time=timestamp(record.time),
    )


def log_line(record: LogRecord) -> common_pb2.LogLine:
    return common_pb2.LogLine(
        task_id=record.task_id,
        attempt=record.attempt,
        seq=record.seq,
        time=timestamp(record.time),
        text=record.text,
    )


def agent(
    record: AgentRecord,
    state: AgentState,
    free: Mapping[str, Any],
    running: list[str],
    usage: common_pb2.ResourceUsage | None,
) -> jobs_pb2.Agent:
    return jobs_pb2.Agent(
        id=record.id,
        name=record.name,
        hostname=record.hostname,
        state=AGENT_STATE_TO_PB[state],
        total=resources(record.resources),
        free=resources(free),
        gpus=[jobs_pb2.GpuInfo(**g) for g in record.gpus],
        last_seen=timestamp(record.last_seen_at),
        running_task_ids=running,
        version=record.version,
        usage=usage,
        allow_scripts=record.allow_scripts,
    )
