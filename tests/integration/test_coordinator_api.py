"""The coordinator's gRPC surface seen by standard clients: health, reflection, status codes,
server-side validation (bypassing the SDK's own checks), the agent protocol's preconditions and
the Prometheus endpoint."""

from __future__ import annotations

import contextlib
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


def spec(config: dict[str, Any], kind: str = "finetune") -> jobs_pb2.JobSpec:
    struct = struct_pb2.Struct()
    struct.update(config)
    return jobs_pb2.JobSpec(kind=kind, config=struct)


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
    ("config", "kind", "field"),
    [
        ({"model": "resnet999"}, "finetune", "config.model"),
        ({"dataset_path": "/no/such/dataset"}, "finetune", "config.dataset_path"),
        ({"epochs": -1}, "finetune", "config.epochs"),
        ({"learning_rat": 0.1}, "finetune", "config.learning_rat"),
        ({}, "distill", "kind"),
    ],
)
def test_server_rejects_bad_specs_naming_the_field(
    channel: grpc.Channel, dataset: Path, config: dict[str, Any], kind: str, field: str
) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    before = len(stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5).jobs)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitJob(
            jobs_pb2.SubmitJobRequest(spec=spec({"dataset_path": str(dataset), **config}, kind)),
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


def test_an_agent_reporting_on_tasks_it_does_not_hold_is_logged(
    cluster: LocalCluster, channel: grpc.Channel
) -> None:
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    job = jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(spec=spec({"steps": 1}, kind="diagnostic")), timeout=5
    ).job
    task_id = job.tasks[0].id  # queued, held by no agent
    agents = agents_pb2_grpc.AgentServiceStub(channel)
    registered = agents.RegisterAgent(
        agents_pb2.RegisterAgentRequest(
            name="rogue", hostname="rogue", resources=common_pb2.Resources(cpus=0.0)
        ),
        timeout=5,
    )
    point = common_pb2.Metric(task_id=task_id, attempt=1, step=1, key="loss", value=1.0)
    messages = [
        agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id=registered.agent_id)),
        agents_pb2.AgentMessage(seq=1, metrics=common_pb2.MetricBatch(metrics=[point])),
        agents_pb2.AgentMessage(
            seq=2,
            metrics=common_pb2.MetricBatch(
                metrics=[common_pb2.Metric(task_id="no-such-task", attempt=1, step=1, key="x")]
            ),
        ),
    ]
    # The stream ends when the agent's messages run out (or at the deadline).
    with contextlib.suppress(grpc.RpcError):
        for _ in agents.Connect(iter(messages), timeout=3):
            pass
    log = ""
    for _ in range(50):
        log = cluster.coordinator_log.read_text()
        if "no-such-task" in log:
            break
        time.sleep(0.1)
    assert f"agent {registered.agent_id} reported on task {task_id}, not its own" in log
    assert f"agent {registered.agent_id} reported on unknown task no-such-task; dropped" in log
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
