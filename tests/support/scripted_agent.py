"""A hand-driven agent: registers and holds a stream open, sending what a test tells it to."""

from __future__ import annotations

import queue

import grpc
from matrec.v1 import agents_pb2, agents_pb2_grpc, common_pb2


class ScriptedAgent:
    """A hand-driven agent stream: registers, sends hello, then whatever the test sends."""

    def __init__(self, channel: grpc.Channel, name: str, cpus: float) -> None:
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        self.agent_id = stub.RegisterAgent(
            agents_pb2.RegisterAgentRequest(
                name=name, hostname=name, resources=common_pb2.Resources(cpus=cpus)
            ),
            timeout=5,
        ).agent_id
        self._outgoing: queue.Queue[agents_pb2.AgentMessage | None] = queue.Queue()
        self.send(agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id=self.agent_id)))
        self.stream = stub.Connect(iter(self._outgoing.get, None), timeout=30)

    def send(self, message: agents_pb2.AgentMessage) -> None:
        self._outgoing.put(message)

    def close(self) -> None:
        self._outgoing.put(None)
