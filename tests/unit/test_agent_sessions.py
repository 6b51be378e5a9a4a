"""An agent session's outbox is bounded: an agent that leaves its messages unread is
disconnected (its Connect call ends with RESOURCE_EXHAUSTED) instead of growing the
coordinator's memory."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from matrec.coordinator.sessions import OUTBOX_LIMIT, AgentSession
from matrec.v1 import agents_pb2


def ack(seq: int) -> agents_pb2.CoordinatorMessage:
    return agents_pb2.CoordinatorMessage(ack=agents_pb2.Ack(seq=seq))


class StuckStream(health_pb2_grpc.HealthServicer):
    """A server stream whose handler, like a Connect call stuck sending to an agent that does
    not read, never takes anything from its session's outbox."""

    def __init__(self) -> None:
        self.session: AgentSession | None = None

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.session = AgentSession("agent-stuck", context=context)
        await asyncio.sleep(3600)
        yield health_pb2.HealthCheckResponse()


def test_an_unread_outbox_ends_the_agents_call(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[AgentSession, grpc.aio.AioRpcError]:
        servicer = StuckStream()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                while servicer.session is None:
                    await asyncio.sleep(0.01)
                session = servicer.session
                for seq in range(1, OUTBOX_LIMIT + 1):
                    session.send(ack(seq))
                assert not session.refused
                session.send(ack(OUTBOX_LIMIT + 1))
                session.send(ack(OUTBOX_LIMIT + 2))  # ignored: the session is ending
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await asyncio.wait_for(call.read(), 10)
                return session, ended.value
        finally:
            await server.stop(None)

    session, error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{OUTBOX_LIMIT} messages waited unread" in (error.details() or "")
    assert session.outbox.qsize() == OUTBOX_LIMIT + 1  # the bound, then the end-of-stream mark
    assert "agent agent-stuck does not read its stream" in caplog.text


def test_a_reading_agent_is_never_cut_off() -> None:
    async def scenario() -> AgentSession:
        session = AgentSession("agent-ok")
        for seq in range(1, 3 * OUTBOX_LIMIT):
            session.send(ack(seq))
            assert (await session.outbox.get()) is not None
        return session

    assert not asyncio.run(scenario()).refused
