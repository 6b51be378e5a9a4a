"""Messages the coordinator has not acknowledged yet; replayed in order after a reconnect.

Bounded: while the coordinator is unreachable, past `limit` unacknowledged messages the oldest
metric or log batch is dropped (and counted in the agent's log) for each new one. Task starts,
checkpoints and results are never dropped: they are few, and the coordinator's state needs them.
"""

from __future__ import annotations

import asyncio
import logging

from matrec.v1 import agents_pb2

log = logging.getLogger(__name__)

#: About 5 hours of one task's metric and log batches at one each per second.
MAX_PENDING = 20_000
DROPPABLE = frozenset({"metrics", "logs"})


class Outbox:
    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        #: Metric and log batches dropped to stay within the limit.
        self.dropped = 0
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
        if len(self._pending) > self.limit:
            self._drop_oldest_batch()

    def _drop_oldest_batch(self) -> None:
        oldest = next(
            (seq for seq, m in self._pending.items() if m.WhichOneof("body") in DROPPABLE), None
        )
        if oldest is None:
            return
        del self._pending[oldest]
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "%d unacknowledged messages wait for the coordinator; dropped the oldest metric "
                "or log batch (%d so far)",
                self.limit,
                self.dropped,
            )

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
