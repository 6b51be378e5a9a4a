"""Messages the coordinator has not acknowledged yet; replayed in order after a reconnect."""

from __future__ import annotations

import asyncio

from matrec.v1 import agents_pb2


class Outbox:
    def __init__(self) -> None:
        self._next_seq = 1
        self._pending: dict[int, agents_pb2.AgentMessage] = {}
        self._stream: asyncio.Queue[agents_pb2.AgentMessage | None] | None = None
        self._emptied = asyncio.Event()
        self._emptied.set()

    def add(self, message: agents_pb2.AgentMessage) -> None:
        """Number the message, keep it until acknowledged, and send it if connected."""
        message.seq = self._next_seq
        self._next_seq += 1
        self._pending[message.seq] = message
        self._emptied.clear()
        if self._stream is not None:
            self._stream.put_nowait(message)

    def send_unacknowledged(self, message: agents_pb2.AgentMessage) -> None:
        """Send without keeping (heartbeats): dropped when not connected."""
        if self._stream is not None:
            self._stream.put_nowait(message)

    def ack(self, seq: int) -> None:
        self._pending.pop(seq, None)
        if not self._pending:
            self._emptied.set()

    def attach(
        self, first: agents_pb2.AgentMessage
    ) -> asyncio.Queue[agents_pb2.AgentMessage | None]:
        """Start a stream: `first`, then every pending message, then whatever comes next."""
        stream: asyncio.Queue[agents_pb2.AgentMessage | None] = asyncio.Queue()
        stream.put_nowait(first)
        for seq in sorted(self._pending):
            stream.put_nowait(self._pending[seq])
        self._stream = stream
        return stream

    def detach(self) -> None:
        if self._stream is not None:
            self._stream.put_nowait(None)
        self._stream = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait_empty(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._emptied.wait(), timeout)
        except TimeoutError:
            return False
        return True
