"""A gang member's launcher waits for member 0's rendezvous on its standard input (the agent
writes it there once the coordinator passes it on): it takes only its own gang's, and gives up
after the timeout as when member 0 never reports."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.agent import launcher
from matrec.agent.launcher import Layout, RendezvousFailed, _Stop, await_rendezvous
from matrec.agent.worker_protocol import LogEvent, RendezvousEvent, encode_event


def member(gang_id: str) -> Layout:
    return Layout(member=1, members=2, per_host=1, gang_id=gang_id, primary_dir=Path("/nowhere"))


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        with contextlib.suppress(OSError):  # closed by the test already
            os.close(fd)


def line(event: RendezvousEvent | LogEvent) -> bytes:
    return (encode_event(event) + "\n").encode()


def test_only_the_own_gangs_rendezvous_is_taken(pipe: tuple[int, int]) -> None:
    read, write = pipe
    stale = RendezvousEvent("gang-old", "torch", "10.0.0.1", 1111)
    mine = RendezvousEvent("gang-new", "horovod", "10.0.0.2", 2222)
    os.write(write, line(stale) + b"not json\n" + line(LogEvent("x")))

    def later() -> None:  # the rest arrives split across writes
        time.sleep(0.3)
        whole = line(mine)
        os.write(write, whole[:10])
        time.sleep(0.2)
        os.write(write, whole[10:])

    threading.Thread(target=later).start()
    assert await_rendezvous(member("gang-new"), _Stop(), read) == mine


def test_no_rendezvous_in_time_fails_naming_the_gang(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    read, write = pipe
    monkeypatch.setattr(launcher, "RENDEZVOUS_TIMEOUT_SECONDS", 0.6)
    os.write(write, line(RendezvousEvent("gang-old", "torch", "10.0.0.1", 1111)))
    os.close(write)  # and then the agent closes it: no busy loop, still the timeout
    began = time.monotonic()
    with pytest.raises(RendezvousFailed, match=r"gang-new reported no rendezvous in 0\.6 s"):
        await_rendezvous(member("gang-new"), _Stop(), read)
    assert 0.5 < time.monotonic() - began < 3


def test_a_stop_ends_the_wait(pipe: tuple[int, int]) -> None:
    stop = _Stop()
    stop.requested = True
    with pytest.raises(RendezvousFailed, match="stopped"):
        await_rendezvous(member("gang-new"), stop, pipe[0])
