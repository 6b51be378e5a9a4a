"""Whether the database answers, as the coordinator's health and metrics report it.

While the database is unreachable the coordinator keeps running: agent messages wait (and are
retried with backoff, unacknowledged), and the gRPC health of the services turns NOT_SERVING
while the server itself ("") stays SERVING, so a liveness probe does not restart a coordinator
that is only waiting for its database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2
from matrec.coordinator.telemetry import CoordinatorTelemetry

log = logging.getLogger(__name__)

#: Errors that mean "the database is not reachable right now", worth retrying.
DATABASE_DOWN_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)


class DatabaseAvailability:
    def __init__(
        self, health: object, service_names: tuple[str, ...], telemetry: CoordinatorTelemetry
    ) -> None:
        self._health = health
        self._services = service_names
        self._telemetry = telemetry
        self.up = True
        self.outages = 0
        telemetry.database_up.set(1)

    async def mark_down(self, error: BaseException) -> None:
        if self.up:
            self.up = False
            self.outages += 1
            log.error("database unreachable: %s; retrying with backoff", error)
            self._telemetry.database_up.set(0)
            await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def mark_up(self) -> bool:
        """Record that the database answered; True if it had been down."""
        if self.up:
            return False
        self.up = True
        log.warning("database reachable again")
        self._telemetry.database_up.set(1)
        await self._set(health_pb2.HealthCheckResponse.SERVING)
        return True

    async def _set(self, status: int) -> None:
        for name in self._services:
            await self._health.set(name, status)  # type: ignore[attr-defined]


class DatabaseErrorInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAVAILABLE (retry later) instead of UNKNOWN when the database is unreachable."""

    MESSAGE = "the coordinator's database is unreachable right now; retry shortly"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def guarded_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await unary(request, context)  # type: ignore[arg-type]
                except DATABASE_DOWN_ERRORS:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, self.MESSAGE)

            return grpc.unary_unary_rpc_method_handler(
                guarded_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def guarded_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for item in stream(request, context):  # type: ignore[arg-type,attr-defined]
                        yield item
                except DATABASE_DOWN_ERRORS:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, self.MESSAGE)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
