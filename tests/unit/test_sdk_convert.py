"""Protobuf messages of matrec.v1 to the SDK's plain types, and a spec to its wire form."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from matrec.common.specs import parse_job_spec
from matrec.common.wire import job_spec_to_proto
from matrec.sdk.convert import (
    agent_from_proto,
    job_from_proto,
    job_state_to_proto,
    watch_event_from_proto,
)
from matrec.sdk.errors import InvalidSpecError
from matrec.sdk.types import HistoryEntry, JobUpdate, LogsEvent, MetricsEvent
from matrec.v1 import common_pb2, jobs_pb2

CREATED = datetime(2026, 11, 26, 10, 0, 0, 500_000, tzinfo=UTC)


def _job_message() -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        id="job-1",
        state=common_pb2.JOB_STATE_RUNNING,
        spec=jobs_pb2.JobSpec(
            name="wood",
            kind="finetune",
            resources=common_pb2.Resources(gpus=1, cpus=2.5, memory_bytes=1024),
            max_attempts=3,
            labels={"team": "vision"},
        ),
        tasks=[
            jobs_pb2.Task(
                id="task-1",
                job_id="job-1",
                index=0,
                state=common_pb2.TASK_STATE_ASSIGNED,
                attempt=2,
                max_attempts=3,
                agent_id="agent-a",
            )
        ],
        cancel_requested=True,
    )
    job.created_at.FromDatetime(CREATED)
    job.spec.config.update({"dataset_path": "/data/wood", "epochs": 5, "strategy": "head_only"})
    job.result.update({"val_accuracy": 0.875, "classes": ["oak", "pine"]})
    return job


def test_job_fields_states_and_times() -> None:
    history = [jobs_pb2.JobEvent(seq=1, kind="submitted", message="queued")]
    job = job_from_proto(_job_message(), history)

    assert job.id == "job-1"
    assert job.state == "running"
    assert job.name == "wood" and job.kind == "finetune"
    assert job.created_at == CREATED
    assert job.created_at is not None and job.created_at.tzinfo is not None
    assert job.started_at is None and job.finished_at is None
    assert job.cancel_requested is True
    assert not job.finished
    assert job.spec.resources.gpus == 1 and job.spec.resources.cpus == 2.5
    assert job.spec.labels == {"team": "vision"}
    assert [task.state for task in job.tasks] == ["assigned"]
    assert job.tasks[0].lease_expires_at is None
    assert job.attempts == 2
    assert [(event.seq, event.kind, event.time) for event in job.history] == [
        (1, "submitted", None)
    ]


def test_struct_numbers_come_back_as_floats() -> None:
    job = job_from_proto(_job_message())
    assert job.spec.config == {"dataset_path": "/data/wood", "epochs": 5.0, "strategy": "head_only"}
    assert job.result == {"val_accuracy": 0.875, "classes": ["oak", "pine"]}


def test_unknown_enum_value_is_kept_visible() -> None:
    job = job_from_proto(jobs_pb2.Job(id="x", state=common_pb2.JobState.ValueType(42)))
    assert job.state == "unknown(42)"


def test_agent() -> None:
    message = jobs_pb2.Agent(
        id="a1",
        name="gpu-1",
        hostname="host",
        state=jobs_pb2.AGENT_STATE_DRAINING,
        total=common_pb2.Resources(gpus=8, cpus=64),
        free=common_pb2.Resources(gpus=2, cpus=10),
        gpus=[jobs_pb2.GpuInfo(index=0, name="H100", memory_bytes=80 << 30, uuid="GPU-0")],
        running_task_ids=["t1", "t2"],
        version="0.1.0",
    )
    message.last_seen.FromDatetime(CREATED)
    agent = agent_from_proto(message)
    assert agent.state == "draining"
    assert agent.total.gpus == 8 and agent.free.cpus == 10
    assert agent.gpus[0].name == "H100"
    assert agent.running_task_ids == ["t1", "t2"]
    assert agent.last_seen == CREATED


def test_watch_events() -> None:
    job_event = watch_event_from_proto(jobs_pb2.WatchJobResponse(job=_job_message()))
    assert isinstance(job_event, JobUpdate) and job_event.job.id == "job-1"

    history = watch_event_from_proto(
        jobs_pb2.WatchJobResponse(history=jobs_pb2.JobEvent(seq=4, kind="requeued"))
    )
    assert isinstance(history, HistoryEntry) and history.event.kind == "requeued"

    batch = common_pb2.MetricBatch(
        metrics=[common_pb2.Metric(task_id="t", attempt=1, step=30, key="val/accuracy", value=0.5)]
    )
    metrics = watch_event_from_proto(jobs_pb2.WatchJobResponse(metrics=batch))
    assert isinstance(metrics, MetricsEvent)
    assert [(m.key, m.step, m.value) for m in metrics.metrics] == [("val/accuracy", 30, 0.5)]

    lines = common_pb2.LogBatch(lines=[common_pb2.LogLine(task_id="t", seq=1, text="hello")])
    logs = watch_event_from_proto(jobs_pb2.WatchJobResponse(logs=lines))
    assert isinstance(logs, LogsEvent) and logs.lines[0].text == "hello"

    assert watch_event_from_proto(jobs_pb2.WatchJobResponse()) is None


def test_job_spec_to_proto() -> None:
    spec, config = parse_job_spec(
        {
            "name": "n",
            "config": {"dataset_path": "/d", "epochs": 2},
            "resources": {"gpus": 1},
            "max_attempts": 2,
            "labels": {"k": "v"},
        }
    )
    message = job_spec_to_proto(spec, config.model_dump(mode="json", exclude_none=True))
    assert message.name == "n" and message.kind == "finetune"
    assert message.resources.gpus == 1 and message.resources.cpus == 1.0
    assert message.max_attempts == 2 and dict(message.labels) == {"k": "v"}
    assert message.config["epochs"] == 2
    assert message.config["model"] == "resnet18"  # defaults are sent explicitly
    assert "pretrained_path" not in message.config


def test_job_state_filter() -> None:
    assert job_state_to_proto("running") == common_pb2.JOB_STATE_RUNNING
    assert job_state_to_proto("Cancelled") == common_pb2.JOB_STATE_CANCELLED
    with pytest.raises(InvalidSpecError) as caught:
        job_state_to_proto("done")
    assert caught.value.field == "states"
