"""Every RPC of matrec's services, and one way to call any of them from its descriptor: shared
by the fuzzing tests and the access-rule tests."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from matrec.v1 import (
    active_learning_pb2,
    agents_pb2,
    artifacts_pb2,
    auth_pb2,
    dashboard_pb2,
    jobs_pb2,
    studies_pb2,
)


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


SERVICES = [
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    studies_pb2.DESCRIPTOR.services_by_name["StudyService"],
    agents_pb2.DESCRIPTOR.services_by_name["AgentService"],
    auth_pb2.DESCRIPTOR.services_by_name["TokenService"],
    active_learning_pb2.DESCRIPTOR.services_by_name["ActiveLearningService"],
    dashboard_pb2.DESCRIPTOR.services_by_name["DashboardService"],
    artifacts_pb2.DESCRIPTOR.services_by_name["ArtifactService"],
]
METHODS = [method for service in SERVICES for method in service.methods]
#: Answers that mean the coordinator itself broke (or hung), not that the request was bad.
#: UNAVAILABLE too: with its database up, a coordinator answers it only once it is gone (a
#: request crashed it), which must fail the RPC that did it, not only the fixture's teardown.
BROKEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}


def answer(
    channel: grpc.Channel,
    method: MethodDescriptor,
    request: object,
    metadata: Sequence[tuple[str, str]] = (),
) -> grpc.StatusCode:
    """Call `method` with `request` (any RPC shape, 5 s deadline); the status it ends with.
    A stream still going after its first answer counts as OK."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = method_path(method)
    codec = {
        "request_serializer": request_class.SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, **codec)(
                iter([request, request]), metadata=metadata, timeout=5
            )
            next(stream, None)
            stream.cancel()
        elif method.server_streaming:
            stream = channel.unary_stream(path, **codec)(request, metadata=metadata, timeout=5)
            next(stream, None)
            stream.cancel()
        else:
            channel.unary_unary(path, **codec)(request, metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK  # we cancelled a stream that was still going
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return grpc.StatusCode.OK  # a watch with nothing to say yet
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
