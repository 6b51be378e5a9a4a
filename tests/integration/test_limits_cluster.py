"""A coordinator's bounds: --max-queued-jobs refuses submissions while the queue is full (and
nothing of the refused job is stored), --max-concurrent-rpcs refuses calls beyond that many in
flight, streams included, and both recover as soon as there is room."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2
from matrec.sdk import MatrecError
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import jobs_pb2, jobs_pb2_grpc

QUEUED, CONCURRENT = 2, 3
# Wants a GPU no agent has, so it stays queued.
WAITING = {"kind": "diagnostic", "config": {"steps": 1}, "resources": {"gpus": 1}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    args = ["--max-queued-jobs", str(QUEUED), "--max-concurrent-rpcs", str(CONCURRENT)]
    with LocalCluster(tmp_path_factory.mktemp("limits"), agents=0, coordinator_args=args) as c:
        yield c


def test_a_full_queue_refuses_submissions_until_there_is_room(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        waiting = [client.submit_job(WAITING) for _ in range(QUEUED)]
        with pytest.raises(MatrecError) as refused:
            client.submit_job(WAITING)
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        assert f"{QUEUED} jobs are waiting" in str(refused.value)
        assert "--max-queued-jobs" in str(refused.value)
        assert len(client.list_jobs()) == QUEUED  # nothing of the refused one was stored
        client.cancel_job(waiting[0].id)
        client.cancel_job(client.submit_job(WAITING).id)  # room again
        client.cancel_job(waiting[1].id)


def test_calls_beyond_the_concurrency_bound_are_refused(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.WatchClusterRequest(interval=duration_pb2.Duration(seconds=1))
        streams = [stub.WatchCluster(request) for _ in range(CONCURRENT)]
        for stream in streams:
            next(stream)  # each one is open and holding its slot
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        streams.pop().cancel()
        for _ in range(50):  # the slot frees once the server has seen the cancellation
            try:
                stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                time.sleep(0.1)
        else:
            pytest.fail("a call was still refused after a stream ended")
        for stream in streams:
            stream.cancel()
