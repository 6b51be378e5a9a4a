"""Live agent streams: who is connected right now, and a queue of messages for each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from matrec.v1 import agents_pb2, common_pb2


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

    def send(self, message: agents_pb2.CoordinatorMessage) -> None:
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)

    def refuse(self, reason: str) -> None:
        """End the stream with FAILED_PRECONDITION and this reason."""
        self.refused = reason
        self.close()


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
