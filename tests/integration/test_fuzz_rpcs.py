"""Fuzzing: every RPC of every matrec service gets random and mutated requests (hypothesis,
derandomized so CI is repeatable) on a real coordinator. No answer may be UNKNOWN or INTERNAL
(the gRPC equivalents of a 5xx), no unary call may hang, and the coordinator stays healthy.
`benchmarks/fuzz_rpcs.py` runs the same for longer, with fresh randomness."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import agents_pb2, auth_pb2, jobs_pb2, studies_pb2
from support.fuzz import messages

SERVICES = [
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    studies_pb2.DESCRIPTOR.services_by_name["StudyService"],
    agents_pb2.DESCRIPTOR.services_by_name["AgentService"],
    auth_pb2.DESCRIPTOR.services_by_name["TokenService"],
]
METHODS = [method for service in SERVICES for method in service.methods]
#: Answers that mean the coordinator itself broke (or hung), not that the request was bad.
BROKEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
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


def answer(channel: grpc.Channel, method: MethodDescriptor, request: object) -> grpc.StatusCode:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    codec = {
        "request_serializer": request_class.SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, **codec)(iter([request, request]), timeout=5)
            next(stream, None)
            stream.cancel()
        elif method.server_streaming:
            stream = channel.unary_stream(path, **codec)(request, timeout=5)
            next(stream, None)
            stream.cancel()
        else:
            channel.unary_unary(path, **codec)(request, timeout=5)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK  # we cancelled a stream that was still going
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return grpc.StatusCode.OK  # a watch with nothing to say yet
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


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
