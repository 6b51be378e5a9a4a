"""Prometheus metrics of an agent host: resource use and running tasks."""

from __future__ import annotations

from matrec.agent.resources import Usage
from prometheus_client import CollectorRegistry, Gauge, start_http_server


class AgentTelemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cpu_percent = Gauge(
            "matrec_agent_cpu_percent", "Host CPU use in percent.", registry=self.registry
        )
        self.memory_used = Gauge(
            "matrec_agent_memory_used_bytes", "Host memory in use.", registry=self.registry
        )
        self.gpu_utilization = Gauge(
            "matrec_agent_gpu_utilization_percent",
            "GPU use in percent.",
            ["gpu"],
            registry=self.registry,
        )
        self.gpu_memory_used = Gauge(
            "matrec_agent_gpu_memory_used_bytes",
            "GPU memory in use.",
            ["gpu"],
            registry=self.registry,
        )
        self.running_tasks = Gauge(
            "matrec_agent_running_tasks", "Tasks running on this agent.", registry=self.registry
        )

    def serve(self, host: str, port: int) -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    def observe(self, usage: Usage, running: int) -> None:
        self.cpu_percent.set(usage.cpu_percent)
        self.memory_used.set(usage.memory_used_bytes)
        for index, value in enumerate(usage.gpu_utilization):
            self.gpu_utilization.labels(str(index)).set(value)
        for index, used in enumerate(usage.gpu_memory_used_bytes):
            self.gpu_memory_used.labels(str(index)).set(used)
        self.running_tasks.set(running)
