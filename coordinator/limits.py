"""Per-token limits: the most running tasks, GPUs and queued jobs one token's jobs may hold.
The scheduler keeps a job over a running-task or GPU limit waiting (its history says why);
SubmitJob refuses a job past the queued-job limit. 0 means no bound."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from matrec.coordinator import schema
from matrec.coordinator.store import TaskRecord, utcnow


@dataclass(frozen=True)
class TokenLimits:
    max_running_tasks: int = 0
    max_gpus: int = 0
    max_queued_jobs: int = 0

    def __post_init__(self) -> None:
        for name in ("max_running_tasks", "max_gpus", "max_queued_jobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no bound)")


NO_LIMITS = TokenLimits()


class LimitStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def all(self) -> dict[str, TokenLimits]:
        t = schema.token_limits
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t)).all()
        return {
            r.token_id: TokenLimits(r.max_running_tasks, r.max_gpus, r.max_queued_jobs)
            for r in rows
        }

    def get(self, token_id: str) -> TokenLimits:
        t = schema.token_limits
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(t).where(t.c.token_id == token_id)).first()
        return TokenLimits(r.max_running_tasks, r.max_gpus, r.max_queued_jobs) if r else NO_LIMITS

    def set(self, token_id: str, limits: TokenLimits, updated_by: str) -> None:
        t = schema.token_limits
        values = {
            "max_running_tasks": limits.max_running_tasks,
            "max_gpus": limits.max_gpus,
            "max_queued_jobs": limits.max_queued_jobs,
            "updated_by": updated_by,
            "updated_at": utcnow(),
        }
        with self.engine.begin() as conn:
            changed = conn.execute(t.update().where(t.c.token_id == token_id).values(**values))
            if not changed.rowcount:
                conn.execute(t.insert().values(token_id=token_id, **values))


@dataclass
class TokenUsage:
    """What each token's jobs hold now, updated as the scheduler places more."""

    tasks: Counter[str] = field(default_factory=Counter)
    gpus: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, active: Iterable[TaskRecord], owners: dict[str, str | None]) -> TokenUsage:
        usage = cls()
        for task in active:
            token = owners.get(task.job_id)
            if token is not None:
                usage.add(token, [task])
        return usage

    def add(self, token_id: str, tasks: Iterable[TaskRecord]) -> None:
        for task in tasks:
            self.tasks[token_id] += 1
            self.gpus[token_id] += int(task.resources.get("gpus", 0) or 0)

    def refusal(self, token_id: str, limits: TokenLimits, tasks: list[TaskRecord]) -> str | None:
        """Why `tasks` may not start now under `limits`, or None."""
        wanted_gpus = sum(int(t.resources.get("gpus", 0) or 0) for t in tasks)
        if limits.max_running_tasks and (
            self.tasks[token_id] + len(tasks) > limits.max_running_tasks
        ):
            # No counts in the text: the reason stays the same while the job waits.
            return f"its token's limit of {limits.max_running_tasks} running tasks is reached"
        if limits.max_gpus and self.gpus[token_id] + wanted_gpus > limits.max_gpus:
            return f"its token's limit of {limits.max_gpus} GPUs is reached"
        return None
