"""Live agent streams: who is connected right now, and a queue of messages for each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
from matrec.v1 import agents_pb2, common_pb2

log = logging.getLogger(__name__)

#: Messages waiting unread for one agent (acks, assignments, cancels) before the coordinator
#: gives up on it: a connected agent reads its stream at once, so only a stuck or hostile one
#: lets this many pile up. It is disconnected, and its leases run out unless it comes back.
OUTBOX_LIMIT = 1000


@dataclass(eq=False)
class AgentSession:
    agent_id: str
    draining: bool = False
    usage: common_pb2.ResourceUsage | None = None
    outbox: asyncio.Queue[agents_pb2.CoordinatorMessage | None] = field(
        default_factory=asyncio.Queue
    )
    #: The highest sequence number received on this stream (messages that want an ack).
    last_seq: int = 0
    #: Why the coordinator ends this stream on a protocol violation ("" while there is none).
    refused: str = ""
    refused_code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    #: The agent's Connect call, ended from outside when its outbox overflows.
    context: grpc.aio.ServicerContext | None = None
    _ending: asyncio.Task[None] | None = None

    def send(self, message: agents_pb2.CoordinatorMessage) -> None:
        if self.refused:
            return
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            log.warning(
                "agent %s does not read its stream (%d messages waiting); disconnected",
                self.agent_id,
                OUTBOX_LIMIT,
            )
            reason = f"{OUTBOX_LIMIT} messages waited unread on this stream"
            self.refuse(reason, grpc.StatusCode.RESOURCE_EXHAUSTED)
            # Its Connect call may be stuck sending to it: end the call itself.
            if self.context is not None:
                self._ending = asyncio.get_running_loop().create_task(
                    _abort(self.context, self.refused_code, reason)
                )
            return
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)

    def refuse(
        self, reason: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    ) -> None:
        """End the stream with this status once the messages before it are sent."""
        self.refused = reason
        self.refused_code = code
        self.close()


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str) -> None:
    # abort() always raises, to unwind a handler; here it runs beside the handler.
    with contextlib.suppress(Exception):
        await context.abort(code, reason)


class AgentSessions:
    """One session per connected agent; a reconnecting agent replaces its old session."""

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}

    def open(self, agent_id: str) -> AgentSession:
        old = self._sessions.get(agent_id)
        if old is not None:
            old.close()
        session = AgentSession(agent_id)
        self._sessions[agent_id] = session
        return session

    def discard(self, session: AgentSession) -> bool:
        """Forget a session; True if it was still the agent's current one."""
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]
            return True
        return False

    def get(self, agent_id: str) -> AgentSession | None:
        return self._sessions.get(agent_id)

    def available(self) -> list[AgentSession]:
        return [s for s in self._sessions.values() if not s.draining]

    def all(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def send(self, agent_id: str, message: agents_pb2.CoordinatorMessage) -> bool:
        session = self._sessions.get(agent_id)
        if session is None:
            return False
        session.send(message)
        return True

    def close_all(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
