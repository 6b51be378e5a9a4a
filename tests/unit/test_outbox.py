"""The agent's outbox: nothing unacknowledged is lost across reconnects, nothing acked is resent."""

from __future__ import annotations

import asyncio

import pytest
from matrec.agent.outbox import Outbox
from matrec.v1 import agents_pb2, common_pb2


def metrics(step: int) -> agents_pb2.AgentMessage:
    return agents_pb2.AgentMessage(
        metrics=common_pb2.MetricBatch(metrics=[common_pb2.Metric(step=step, key="loss")])
    )


def drain(queue: asyncio.Queue[agents_pb2.AgentMessage | None]) -> list[agents_pb2.AgentMessage]:
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            out.append(item)
    return out


def test_unacknowledged_messages_are_replayed_in_order_after_reconnect() -> None:
    async def scenario() -> None:
        outbox = Outbox()
        hello = agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id="a"))
        first = outbox.attach(hello)
        for step in (1, 2, 3):
            outbox.add(metrics(step))
        sent = drain(first)
        assert [m.seq for m in sent] == [0, 1, 2, 3]
        outbox.ack(2)
        outbox.detach()
        # Produced while disconnected: kept, not sent anywhere.
        outbox.add(metrics(4))
        outbox.send_unacknowledged(agents_pb2.AgentMessage(heartbeat=agents_pb2.Heartbeat()))
        second = outbox.attach(hello)
        replay = drain(second)
        assert replay[0].HasField("hello")
        assert [m.metrics.metrics[0].step for m in replay[1:]] == [1, 3, 4]
        assert outbox.pending == 3
        for m in replay[1:]:
            outbox.ack(m.seq)
        assert await outbox.wait_empty(timeout=0.1)

    asyncio.run(scenario())


def test_wait_empty_times_out_while_messages_are_pending() -> None:
    async def scenario() -> None:
        outbox = Outbox()
        outbox.add(metrics(1))
        assert not await outbox.wait_empty(timeout=0.05)

    asyncio.run(scenario())


def test_a_long_outage_drops_the_oldest_batches_but_never_a_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Outbox:
        outbox = Outbox(limit=5)
        result = agents_pb2.AgentMessage(
            result=agents_pb2.TaskResult(task=agents_pb2.TaskRef(task_id="t", attempt=1))
        )
        outbox.add(metrics(1))
        outbox.add(result)  # seq 2
        for step in range(2, 10):
            outbox.add(metrics(step))
        return outbox

    outbox = asyncio.run(scenario())
    assert outbox.pending == 5 and outbox.dropped == 5
    hello = agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id="a"))
    replayed = drain(outbox.attach(hello))[1:]
    assert replayed[0].HasField("result")  # the oldest batches went, the result stayed
    assert [m.metrics.metrics[0].step for m in replayed[1:]] == [6, 7, 8, 9]
    assert "dropped the oldest metric or log batch (1 so far)" in caplog.text
