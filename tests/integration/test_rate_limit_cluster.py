"""A coordinator with --rate-limit: a caller over its rate gets RESOURCE_EXHAUSTED with the time
to wait, other callers are not slowed, the SDK waits and retries, and health checks are never
limited."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from matrec.sdk import Client
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import jobs_pb2, jobs_pb2_grpc

pytestmark = pytest.mark.slow

RATE, BURST = 5, 5


def calls(stub: jobs_pb2_grpc.JobServiceStub, token: str, count: int) -> list[grpc.RpcError | None]:
    outcomes: list[grpc.RpcError | None] = []
    for _ in range(count):
        try:
            stub.ListJobs(
                jobs_pb2.ListJobsRequest(), metadata=[("authorization", f"Bearer {token}")]
            )
            outcomes.append(None)
        except grpc.RpcError as error:
            outcomes.append(error)
    return outcomes


def test_each_caller_gets_its_rate(tmp_path: Path) -> None:
    args = ["--rate-limit", str(RATE), "--rate-burst", str(BURST)]
    with LocalCluster(tmp_path, agents=0, coordinator_args=args) as cluster:
        with grpc.insecure_channel(cluster.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            flood = calls(stub, "caller-a", 3 * BURST)
            refused = [e for e in flood if e is not None]
            assert flood[:BURST] == [None] * BURST and refused
            first = refused[0]
            assert first.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "rate limit" in first.details()  # type: ignore[attr-defined]
            trailing = dict(first.trailing_metadata())  # type: ignore[attr-defined]
            assert 0 < int(trailing["retry-after-ms"]) <= 1000 // RATE + 1

            assert calls(stub, "caller-b", BURST) == [None] * BURST  # not slowed by caller-a

            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(3 * BURST):
                assert health.Check(health_pb2.HealthCheckRequest()).status == 1  # SERVING

        # The SDK waits as told and retries: every call succeeds, at the allowed rate.
        with Client(cluster.address, token="caller-c") as client:
            started = time.monotonic()
            for _ in range(BURST + 2 * RATE):
                client.list_jobs()
            assert time.monotonic() - started >= 1.5  # 2 s of calls beyond the burst
