"""The coordinator's gRPC surface seen by standard clients: health, reflection, status codes,
server-side validation (bypassing the SDK's own checks), the agent protocol's preconditions and
the Prometheus endpoint."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import agents_pb2, agents_pb2_grpc, common_pb2, jobs_pb2, jobs_pb2_grpc
from support.datasets import write_minimal_image_folder
from support.scripted_agent import ScriptedAgent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("api")
    with LocalCluster(
        workdir, agents=0, coordinator_args=["--metrics-port", str(metrics_port)]
    ) as c:
        yield c


@pytest.fixture
def channel(cluster: LocalCluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.address) as ch:
        yield ch


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_minimal_image_folder(tmp_path / "data")


def spec(
    config: dict[str, Any], kind: str = "finetune", resources: dict[str, Any] | None = None
) -> jobs_pb2.JobSpec:
    struct = struct_pb2.Struct()
    struct.update(config)
    return jobs_pb2.JobSpec(
        kind=kind, config=struct, resources=common_pb2.Resources(**(resources or {}))
    )


def test_health_reports_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "matrec.v1.JobService", "matrec.v1.AgentService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"matrec.v1.JobService", "matrec.v1.AgentService", "grpc.health.v1.Health"} <= services
    file = database.FindFileContainingSymbol("matrec.v1.JobService")
    assert file.package == "matrec.v1"
    methods = {m.name for s in file.service if s.name == "JobService" for m in s.method}
    assert {"SubmitJob", "GetJob", "ListJobs", "CancelJob", "WatchJob", "ListAgents"} <= methods


@pytest.mark.parametrize(
    ("config", "kind", "field", "resources"),
    [
        ({"model": "resnet999"}, "finetune", "config.model", None),
        ({"dataset_path": "/no/such/dataset"}, "finetune", "config.dataset_path", None),
        ({"epochs": -1}, "finetune", "config.epochs", None),
        ({"learning_rat": 0.1}, "finetune", "config.learning_rat", None),
        ({}, "distill", "kind", None),
        # Memory requests and batch_size auto (issue 22).
        ({"batch_size": "auto", "micro_batch": 4}, "finetune", "config.micro_batch", None),
        ({}, "finetune", "resources.memory_bytes", {"memory_bytes": -1}),
        ({}, "finetune", "resources.memory_bytes", {"memory_bytes": 1 << 60}),
        ({}, "finetune", "resources.gpu_memory_bytes", {"gpus": 1, "gpu_memory_bytes": -1}),
        ({}, "finetune", "resources.gpu_memory_bytes", {"gpus": 1, "gpu_memory_bytes": 1 << 50}),
    ],
)
def test_server_rejects_bad_specs_naming_the_field(
    channel: grpc.Channel,
    dataset: Path,
    config: dict[str, Any],
    kind: str,
    field: str,
    resources: dict[str, Any] | None,
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    before = len(stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5).jobs)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(
                spec=spec({"dataset_path": str(dataset), **config}, kind, resources)
            ),
            timeout=5,
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")
    assert ("matrec-field", field) in tuple(error.trailing_metadata() or ())
    # Nothing was stored for the rejected job.
    assert len(stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5).jobs) == before


def test_status_codes_for_unknown_and_finished_jobs(channel: grpc.Channel, dataset: Path) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetJob(jobs_pb2.GetJobRequest(job_id="job-nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    job = stub.SubmitJob(
        jobs_pb2.SubmitJobRequest(spec=spec({"dataset_path": str(dataset)})), timeout=5
    ).job
    # No agents: the job waits in the queue, and cancelling it is immediate.
    cancelled = stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=5).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    # Without --auth or client certificates every caller is `local`.
    assert (job.owner, cancelled.cancelled_by) == ("local", "local")
    with pytest.raises(grpc.RpcError) as caught:
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_agent_stream_preconditions(channel: grpc.Channel) -> None:
    stub = agents_pb2_grpc.AgentServiceStub(channel)
    hello = agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id="agent-never-registered"))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(iter([hello]), timeout=5))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    heartbeat = agents_pb2.AgentMessage(heartbeat=agents_pb2.Heartbeat())
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(iter([heartbeat]), timeout=5))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        stub.RegisterAgent(agents_pb2.RegisterAgentRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_prometheus_endpoint(channel: grpc.Channel, metrics_port: int, dataset: Path) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    job = stub.SubmitJob(
        jobs_pb2.SubmitJobRequest(spec=spec({"dataset_path": str(dataset)})), timeout=5
    ).job
    try:
        deadline = time.monotonic() + 10
        while True:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
            )
            if "matrec_queue_depth 1.0" in text or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert "matrec_queue_depth 1.0" in text
        assert 'matrec_rpc_latency_seconds_count{method="SubmitJob"}' in text
        assert "matrec_lease_expiries_total" in text
        assert 'matrec_agents{state="connected"}' in text
        # Every state is reported, also the empty ones (no stale values).
        assert 'matrec_tasks{state="running"} 0.0' in text
    finally:
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=5)


def metrics_of(channel: grpc.Channel, job_id: str) -> list[common_pb2.Metric]:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    request = jobs_pb2.ListJobMetricsRequest(job_id=job_id)
    return list(stub.ListJobMetrics(request, timeout=5).metrics)


def test_an_agent_cannot_report_on_or_finish_tasks_it_does_not_hold(
    cluster: LocalCluster, channel: grpc.Channel
) -> None:
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    job = jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(spec=spec({"steps": 1}, kind="diagnostic")), timeout=5
    ).job
    task_id = job.tasks[0].id
    holder = ScriptedAgent(channel, "holder", cpus=2.0)
    rogue = ScriptedAgent(channel, "rogue", cpus=0.0)
    try:
        assignment = next(
            m.assignment
            for m in holder.stream
            if m.HasField("assignment") and m.assignment.task.task_id == task_id
        )
        attempt = assignment.task.attempt

        def point(step: int, key: str, of_task: str = task_id, at: int = attempt) -> Any:
            metric = common_pb2.Metric(task_id=of_task, attempt=at, step=step, key=key, value=1.0)
            return common_pb2.MetricBatch(metrics=[metric])

        # The rogue reports points and a success on the holder's task, a point on an attempt
        # the task has not had (as the holder), and on an unknown task: all dropped.
        rogue.send(agents_pb2.AgentMessage(seq=1, metrics=point(1, "rogue")))
        rogue.send(
            agents_pb2.AgentMessage(
                seq=2,
                result=agents_pb2.TaskResult(
                    task=agents_pb2.TaskRef(task_id=task_id, attempt=attempt),
                    outcome=agents_pb2.TASK_OUTCOME_SUCCEEDED,
                ),
            )
        )
        rogue.send(agents_pb2.AgentMessage(seq=3, metrics=point(1, "x", of_task="no-such-task")))
        holder.send(agents_pb2.AgentMessage(seq=1, metrics=point(1, "future", at=attempt + 1)))
        # Each message is acknowledged once handled, so these acks mean "stored or dropped".
        next(m for m in rogue.stream if m.HasField("ack") and m.ack.seq == 3)
        # A sequence number that goes back ends the rogue's stream.
        rogue.send(agents_pb2.AgentMessage(seq=2, metrics=point(2, "rogue")))
        with pytest.raises(grpc.RpcError) as refused:
            for _ in rogue.stream:
                pass
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "sequence number 2 after 3" in refused.value.details()  # type: ignore[attr-defined]

        # The holder's own point is stored; the job is still running on the holder.
        holder.send(agents_pb2.AgentMessage(seq=2, metrics=point(1, "own")))
        next(m for m in holder.stream if m.HasField("ack") and m.ack.seq == 2)
        assert [m.key for m in metrics_of(channel, job.id)] == ["own"]
        current = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), timeout=5).job
        assert current.state != common_pb2.JOB_STATE_SUCCEEDED
        assert current.tasks[0].agent_id == holder.agent_id

        log = cluster.coordinator_log.read_text()
        assert f"agent {rogue.agent_id} reported on task {task_id}, which it does not hold" in log
        assert f"agent {rogue.agent_id} reported on unknown task no-such-task; dropped" in log
        assert f"agent {holder.agent_id} reported on an attempt task {task_id} has not had" in log
        assert f"agent {rogue.agent_id}: sequence number 2 after 3" in log
    finally:
        holder.close()
        rogue.close()
        jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=5)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_watch_cluster_answers_at_once_on_an_empty_cluster(tmp_path: Path) -> None:
    # An empty cluster's snapshot serialises to no bytes at all; it must still be sent.
    with (
        LocalCluster(tmp_path / "empty", agents=0) as empty,
        grpc.insecure_channel(empty.address) as channel,
    ):
        stream = jobs_pb2_grpc.JobServiceStub(channel).WatchCluster(
            jobs_pb2.WatchClusterRequest(), timeout=5
        )
        first = next(stream)
        stream.cancel()
    assert not first.snapshot.agents and not first.snapshot.active_jobs
    assert first.snapshot.time.seconds > 0
