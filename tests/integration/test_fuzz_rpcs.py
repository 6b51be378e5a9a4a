"""Fuzzing: every RPC of every matrec service gets random and mutated requests (hypothesis,
derandomized so CI is repeatable) on a real coordinator. No answer may be UNKNOWN or INTERNAL
(the gRPC equivalents of a 5xx), no unary call may hang, and the coordinator stays healthy.
`benchmarks/fuzz_rpcs.py` runs the same for longer, with fresh randomness."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from matrec.sdk.local_cluster import LocalCluster
from support.fuzz import messages
from support.rpcs import BROKEN, METHODS, answer

EXAMPLES_PER_RPC = 25


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    root = tmp_path_factory.mktemp("fuzz")
    with (
        LocalCluster(root / "cluster", agents=0) as cluster,
        grpc.insecure_channel(cluster.address) as opened,
    ):
        yield opened
        health = health_pb2_grpc.HealthStub(opened).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_random_requests_never_break_the_coordinator(
    channel: grpc.Channel, method: MethodDescriptor
) -> None:
    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(request=messages(method.input_type))
    def check(request: object) -> None:
        code = answer(channel, method, request)
        assert code not in BROKEN, f"{method.full_name} answered {code.name} to {request!r}"

    check()
