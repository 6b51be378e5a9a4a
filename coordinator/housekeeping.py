"""Keeps the metric tables bounded: downsampling of long series and retention of old jobs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from matrec.coordinator.audit import AuditLog
from matrec.coordinator.availability import DATABASE_DOWN_ERRORS
from matrec.coordinator.rows import utcnow
from matrec.coordinator.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricRetention:
    #: Longest (task, attempt, key) series kept at full resolution; 0 keeps every point.
    max_points_per_series: int = 0
    #: Days the metrics and logs of a finished job are kept; 0 keeps them forever.
    retention_days: float = 0.0
    interval_seconds: float = 60.0
    #: Days audit log entries are kept; 0 keeps them forever.
    audit_retention_days: float = 0.0

    @property
    def enabled(self) -> bool:
        return (
            self.max_points_per_series > 0
            or self.retention_days > 0
            or self.audit_retention_days > 0
        )


class Housekeeper:
    def __init__(
        self, store: Store, policy: MetricRetention, audit: AuditLog | None = None
    ) -> None:
        self.store = store
        self.policy = policy
        self.audit = audit

    def run_once(self) -> int:
        removed = 0
        if self.policy.max_points_per_series > 0:
            removed += self.store.downsample_metrics(self.policy.max_points_per_series)
        if self.policy.retention_days > 0:
            cutoff = utcnow() - timedelta(days=self.policy.retention_days)
            removed += self.store.delete_metrics_of_jobs_finished_before(cutoff)
        if removed:
            log.info("housekeeping removed %d metric points and log lines", removed)
        if self.audit is not None and self.policy.audit_retention_days > 0:
            cutoff = utcnow() - timedelta(days=self.policy.audit_retention_days)
            expired = self.audit.delete_before(cutoff)
            if expired:
                log.info("housekeeping removed %d audit log entries", expired)
            removed += expired
        return removed

    async def run(self) -> None:
        while True:
            try:
                self.run_once()
            except DATABASE_DOWN_ERRORS as error:
                log.warning("housekeeping skipped, database unreachable: %s", error)
            except Exception:
                log.exception("housekeeping failed; trying again later")
            await asyncio.sleep(self.policy.interval_seconds)
