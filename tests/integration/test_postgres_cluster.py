"""The whole platform on a real PostgreSQL server: a fine-tune end to end, and a database outage
of 10 s in the middle of a running job."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from support.cluster_jobs import FAST_LEASES, assert_complete_series, finetune_spec, wait_until
from support.postgres import PostgresServer

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 10


@pytest.fixture
def cluster(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[LocalCluster]:
    url = postgres_server.create_database(f"matrec_{uuid.uuid4().hex[:10]}")
    with LocalCluster(
        tmp_path / "cluster", agents=2, database_url=url, coordinator_args=FAST_LEASES
    ) as running:
        yield running


def service_health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_finetune_on_postgres(cluster: LocalCluster, small_dataset: DemoDatasetInfo) -> None:
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, 2))
        final = client.wait(job.id, timeout=300)
        assert final.state == "succeeded", final.error
        assert final.tasks[0].attempt == 1
        assert_complete_series(client, final, small_dataset, 2)


def test_database_outage_mid_job_loses_nothing(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, postgres_server: PostgresServer
) -> None:
    epochs = 6
    serving = health_pb2.HealthCheckResponse.SERVING
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, epochs))
        wait_until(lambda: len(client.job_metrics(job.id)) > 5, 120, "the first metrics")
        postgres_server.stop()
        try:
            # The coordinator notices, says so in its health, and keeps running.
            wait_until(
                lambda: service_health(cluster.address, "matrec.v1.JobService") != serving,
                OUTAGE_SECONDS,
                "the JobService health to turn NOT_SERVING",
            )
            assert service_health(cluster.address, "") == serving
            time.sleep(OUTAGE_SECONDS)
        finally:
            postgres_server.start()
        final = client.wait(job.id, timeout=300)
        assert final.state == "succeeded", final.error
        # The agent's lease was not lost to the outage: the same attempt finished the job.
        assert final.tasks[0].attempt == 1
        assert "lease_expired" not in [e.kind for e in final.history]
        # Every metric the agent produced, during the outage included, was stored once.
        assert_complete_series(client, final, small_dataset, epochs)
        assert service_health(cluster.address, "matrec.v1.JobService") == serving
