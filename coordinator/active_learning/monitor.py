"""The coordinator's active-learning monitor: settles finished jobs into model versions every
tick (or sooner when a job changes), and every check interval evaluates each project's retraining
triggers, retraining at once where the project asks for it (triggers.auto_retrain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from matrec.coordinator.active_learning.projects import ProjectError, ProjectManager
from matrec.coordinator.active_learning.store import ProjectRecord, TriggerRecord
from matrec.coordinator.availability import DATABASE_DOWN_ERRORS
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.scheduler import Scheduler

log = logging.getLogger(__name__)

MIN_PASS_SECONDS = 0.5


class TriggerMonitor:
    def __init__(
        self,
        manager: ProjectManager,
        scheduler: Scheduler,
        notifier: JobNotifier,
        *,
        check_interval: float,
        tick: float = 2.0,
    ) -> None:
        self.manager = manager
        self.scheduler = scheduler
        self.check_interval = check_interval
        self.tick = tick
        self._last_check = 0.0
        self._wake = asyncio.Event()
        notifier.add_listener(self._wake.set)

    async def run(self) -> None:
        while True:
            try:
                self.run_once(check=time.monotonic() - self._last_check >= self.check_interval)
            except DATABASE_DOWN_ERRORS as error:
                log.warning("active-learning pass skipped, database unavailable: %s", error)
            except Exception:
                log.exception("active-learning pass failed; retrying on the next tick")
            await asyncio.sleep(MIN_PASS_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()

    def run_once(self, *, check: bool) -> list[TriggerRecord]:
        fired: list[TriggerRecord] = []
        if check:
            self._last_check = time.monotonic()
        for project in self.manager.projects.list_projects():
            if self.manager.settle(project):
                self.scheduler.wake()
            if check:
                new = self.manager.check_triggers(project)
                fired.extend(new)
                for trigger in new:
                    log.info(
                        "project %s: trigger %s fired (%s)", project.id, trigger.id, trigger.kind
                    )
            # Every tick, whoever fired the trigger (this monitor, an SDK call, matrec-ctl).
            self.retrain(project)
        return fired

    def retrain(self, project: ProjectRecord) -> None:
        try:
            started = self.manager.retrain_if_automatic(project)
        except ProjectError as error:
            log.warning("project %s: automatic retraining not started: %s", project.id, error)
            return
        if started is not None:
            job_id, version = started
            log.info("project %s: retraining job %s (version %d)", project.id, job_id, version)
            self.scheduler.wake()
