"""Prometheus metrics of the coordinator, served on their own HTTP port."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class CoordinatorTelemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge(
            "matrec_queue_depth", "Tasks waiting for an agent.", registry=self.registry
        )
        self.tasks_by_state = Gauge(
            "matrec_tasks", "Tasks by state.", ["state"], registry=self.registry
        )
        self.agents = Gauge(
            "matrec_agents", "Known agents by state.", ["state"], registry=self.registry
        )
        self.task_outcomes = Counter(
            "matrec_task_outcomes",
            "Task attempts that ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.lease_expiries = Counter(
            "matrec_lease_expiries",
            "Task leases that expired (agent lost).",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "matrec_database_up",
            "1 while the database answers, 0 during an outage.",
            registry=self.registry,
        )
        self.metric_points = Counter(
            "matrec_metric_points",
            "Metric points stored (before deduplication).",
            registry=self.registry,
        )
        #: The same count, readable without Prometheus internals (for throughput figures).
        self.metric_points_total = 0
        self.rpc_latency = Histogram(
            "matrec_rpc_latency_seconds",
            "Latency of unary RPCs.",
            ["method"],
            registry=self.registry,
        )

    def count_metric_points(self, count: int) -> None:
        self.metric_points.inc(count)
        self.metric_points_total += count

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


class LatencyInterceptor(grpc.aio.ServerInterceptor):
    """Times every unary RPC into the telemetry histogram."""

    def __init__(self, telemetry: CoordinatorTelemetry) -> None:
        self._telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        histogram = self._telemetry.rpc_latency.labels(method)

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                return await inner(request, context)  # type: ignore[arg-type]
            finally:
                histogram.observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
