"""Wakes the watchers of a job (or study) when something about it was stored."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable


class JobNotifier:
    def __init__(self) -> None:
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._listeners: list[Callable[[], None]] = []

    def notify(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()
        for listener in self._listeners:
            listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` (cheap, non-blocking) on every notification of any job."""
        self._listeners.append(listener)

    async def wait(self, job_id: str, timeout: float) -> None:
        """Return when the job is notified or after `timeout` seconds, whichever comes first."""
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters[job_id].discard(event)
            if not self._waiters[job_id]:
                del self._waiters[job_id]
