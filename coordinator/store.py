"""Persistent state of the coordinator: jobs, tasks, leases, agents, history, metrics and logs.

SQLAlchemy Core on SQLite (the default, a file in the data directory) or Postgres. Every public
method is one transaction. Task transitions that an agent asks for are fenced: they only apply
when the task is still held by that agent in that attempt, so a late message from an agent whose
lease expired can never complete or fail a task that has moved on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from matrec.common.specs import BATCH_SIZE_METRIC, MICRO_BATCH_METRIC
from matrec.coordinator import schema
from matrec.coordinator.database import create_engine_for, insert_ignore_for, migrate

# Shared with the other store modules; importable from here as before.
from matrec.coordinator.rows import add_event as add_event
from matrec.coordinator.rows import as_utc as as_utc
from matrec.coordinator.rows import insert_job as insert_job
from matrec.coordinator.rows import new_id as new_id
from matrec.coordinator.rows import utcnow as utcnow
from matrec.coordinator.states import (
    ACTIVE_TASK_STATES,
    FINAL_JOB_STATES,
    AgentState,
    JobState,
    TaskOutcome,
    TaskState,
    job_state_from_tasks,
)

R = TypeVar("R")


@dataclass(frozen=True)
class TaskRecord:
    id: str
    job_id: str
    index: int
    state: TaskState
    attempt: int
    preemptions: int
    max_attempts: int
    resources: dict[str, Any]
    agent_id: str | None
    lease_expires_at: datetime | None
    artifact_dir: str
    checkpoint_path: str
    error: str
    result: dict[str, Any] | None

    @property
    def failures_left(self) -> int:
        return self.max_attempts - (self.attempt - self.preemptions)


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    kind: str
    spec: dict[str, Any]
    state: JobState
    max_attempts: int
    cancel_requested: bool
    error: str
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tasks: list[TaskRecord] = field(default_factory=list)
    owner: str = "unknown"
    owner_token_id: str | None = None
    cancelled_by: str | None = None


@dataclass(frozen=True)
class EventRecord:
    seq: int
    job_id: str
    task_id: str
    attempt: int
    time: datetime
    kind: str
    message: str


@dataclass(frozen=True)
class MetricRecord:
    id: int
    task_id: str
    attempt: int
    step: int
    key: str
    value: float
    time: datetime


@dataclass(frozen=True)
class LogRecord:
    id: int
    task_id: str
    attempt: int
    seq: int
    time: datetime
    text: str


@dataclass(frozen=True)
class AgentRecord:
    id: str
    name: str
    hostname: str
    version: str
    resources: dict[str, Any]
    gpus: list[dict[str, Any]]
    state: AgentState
    last_seen_at: datetime
    allow_scripts: bool = False


@dataclass(frozen=True)
class TaskHolder:
    """Who may report on a task: the agent of its latest attempt (None while queued)."""

    job_id: str
    agent_id: str | None
    attempt: int


@dataclass(frozen=True)
class TaskChange:
    """What a fenced transition did, for the caller to log, count and notify."""

    task: TaskRecord
    job_state: JobState
    event: str


def _task(row: sa.Row[Any]) -> TaskRecord:
    m = row._mapping
    return TaskRecord(
        id=m["id"],
        job_id=m["job_id"],
        index=m["index"],
        state=TaskState(m["state"]),
        attempt=m["attempt"],
        preemptions=m["preemptions"],
        max_attempts=m["max_attempts"],
        resources=dict(m["resources"] or {}),
        agent_id=m["agent_id"],
        lease_expires_at=as_utc(m["lease_expires_at"]),
        artifact_dir=m["artifact_dir"],
        checkpoint_path=m["checkpoint_path"],
        error=m["error"],
        result=m["result"],
    )


def _job(row: sa.Row[Any], tasks: list[TaskRecord]) -> JobRecord:
    m = row._mapping
    created = as_utc(m["created_at"])
    assert created is not None
    return JobRecord(
        id=m["id"],
        name=m["name"],
        kind=m["kind"],
        spec=dict(m["spec"]),
        state=JobState(m["state"]),
        max_attempts=m["max_attempts"],
        cancel_requested=bool(m["cancel_requested"]),
        error=m["error"],
        result=m["result"],
        created_at=created,
        started_at=as_utc(m["started_at"]),
        finished_at=as_utc(m["finished_at"]),
        tasks=tasks,
        owner=m["owner"],
        owner_token_id=m["owner_token_id"],
        cancelled_by=m["cancelled_by"],
    )


def jobs_with_tasks(conn: sa.Connection, rows: Sequence[sa.Row[Any]]) -> list[JobRecord]:
    """Job rows as records with their tasks: one query for the tasks of all of them."""
    t = schema.tasks
    tasks: dict[str, list[TaskRecord]] = {r.id: [] for r in rows}
    if rows:
        for task_row in conn.execute(
            sa.select(t).where(t.c.job_id.in_(list(tasks))).order_by(t.c.index)
        ):
            tasks[task_row.job_id].append(_task(task_row))
    return [_job(row, tasks[row.id]) for row in rows]


def _agent(row: sa.Row[Any]) -> AgentRecord:
    m = row._mapping
    seen = as_utc(m["last_seen_at"])
    assert seen is not None
    return AgentRecord(
        id=m["id"],
        name=m["name"],
        hostname=m["hostname"],
        version=m["version"],
        resources=dict(m["resources"]),
        gpus=list(m["gpus"]),
        state=AgentState(m["state"]),
        last_seen_at=seen,
        allow_scripts=bool(m["allow_scripts"]),
    )


def _records(cls: type[R], rows: Iterable[sa.Row[Any]]) -> list[R]:
    """Rows to plain records whose fields are columns of the same names."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    out = []
    for row in rows:
        m = row._mapping
        values = {n: as_utc(m[n]) if isinstance(m[n], datetime) else m[n] for n in names}
        out.append(cls(**values))
    return out


def _cancel_requested(conn: sa.Connection, job_id: str) -> bool:
    j = schema.training_jobs
    return bool(conn.execute(sa.select(j.c.cancel_requested).where(j.c.id == job_id)).scalar())


#: Artifact kinds and the result keys that name their files.
RESULT_ARTIFACTS = (
    ("model", "model_path"),
    ("checkpoint", "checkpoint_path"),
    ("scores", "scores_path"),
)


class Store:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert_ignore = insert_ignore_for(engine.dialect.name)

    @classmethod
    def open(cls, url: str) -> Store:
        engine = create_engine_for(url)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---- jobs -------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        name: str,
        kind: str,
        spec: dict[str, Any],
        resources: dict[str, Any],
        max_attempts: int,
        artifact_root: Path,
        num_tasks: int = 1,
        owner: str = "local",
        owner_token_id: str | None = None,
    ) -> JobRecord:
        with self.engine.begin() as conn:
            job_id = insert_job(
                conn,
                name=name,
                kind=kind,
                spec=spec,
                resources=resources,
                max_attempts=max_attempts,
                artifact_root=artifact_root,
                num_tasks=num_tasks,
                owner=owner,
                owner_token_id=owner_token_id,
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            return self._get_job(conn, job_id)

    def _get_job(self, conn: sa.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(
            sa.select(schema.training_jobs).where(schema.training_jobs.c.id == job_id)
        ).first()
        if row is None:
            return None
        tasks = [
            _task(r)
            for r in conn.execute(
                sa.select(schema.tasks)
                .where(schema.tasks.c.job_id == job_id)
                .order_by(schema.tasks.c.index)
            )
        ]
        return _job(row, tasks)

    def list_jobs(
        self, states: Sequence[JobState] = (), limit: int = 100, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first, with their tasks: two queries, whatever the number of jobs."""
        j = schema.training_jobs
        query = sa.select(j).order_by(j.c.created_at.desc(), j.c.id)
        if states:
            query = query.where(j.c.state.in_([str(s) for s in states]))
        if owner is not None:
            query = query.where(j.c.owner == owner)
        with self.engine.connect() as conn:
            return jobs_with_tasks(conn, list(conn.execute(query.limit(limit))))

    def job_owner_tokens(self, job_ids: Iterable[str]) -> dict[str, str | None]:
        """The token each job was submitted with (None: no token, e.g. authentication off)."""
        j = schema.training_jobs
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(j.c.id, j.c.owner_token_id).where(j.c.id.in_(ids)))
            return {r.id: r.owner_token_id for r in rows}

    def count_queued_jobs_of_token(self, token_id: str) -> int:
        j = schema.training_jobs
        query = (
            sa.select(sa.func.count())
            .select_from(j)
            .where(j.c.state == str(JobState.QUEUED), j.c.owner_token_id == token_id)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def count_jobs(self, state: JobState | None = None) -> int:
        """All jobs, or those in `state` (an index lookup, for the submit path)."""
        j = schema.training_jobs
        query = sa.select(sa.func.count()).select_from(j)
        if state is not None:
            query = query.where(j.c.state == str(state))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def request_cancel(
        self, job_id: str, reason: str, cancelled_by: str | None = None
    ) -> list[TaskRecord]:
        """Mark a job cancelled-on-request (by `cancelled_by`, when a caller asked); cancel its
        queued tasks now. Returns the active tasks whose agents must be told to stop."""
        t = schema.tasks
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                schema.training_jobs.update()
                .where(schema.training_jobs.c.id == job_id)
                .values(cancel_requested=True, cancelled_by=cancelled_by)
            )
            conn.execute(
                t.update()
                .where(t.c.job_id == job_id, t.c.state == TaskState.QUEUED)
                .values(state=TaskState.CANCELLED, finished_at=now, error=reason)
            )
            add_event(conn, job_id, "cancel_requested", reason or "cancel requested")
            active = [
                _task(r)
                for r in conn.execute(
                    sa.select(t).where(
                        t.c.job_id == job_id, t.c.state.in_([str(s) for s in ACTIVE_TASK_STATES])
                    )
                )
            ]
            self._refresh_job(conn, job_id)
        return active

    # ---- scheduling and leases ----------------------------------------------------------------

    def queued_tasks(self, limit: int = 1000) -> list[TaskRecord]:
        t = schema.tasks
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t)
                .where(t.c.state == TaskState.QUEUED)
                .order_by(t.c.created_at, t.c.index)
                .limit(limit)
            )
            return [_task(r) for r in rows]

    def active_tasks(self, agent_id: str | None = None) -> list[TaskRecord]:
        t = schema.tasks
        query = sa.select(t).where(t.c.state.in_([str(s) for s in ACTIVE_TASK_STATES]))
        if agent_id is not None:
            query = query.where(t.c.agent_id == agent_id)
        with self.engine.connect() as conn:
            return [_task(r) for r in conn.execute(query)]

    def assign_task(self, task_id: str, agent_id: str, lease_ttl: float) -> TaskRecord | None:
        """Hand a queued task to an agent (a compare-and-set: None if someone else took it).

        On Postgres the row is locked with SKIP LOCKED first, so coordinator replicas sharing
        one database pass over each other's claims instead of queueing behind them.
        """
        t = schema.tasks
        now = utcnow()
        with self.engine.begin() as conn:
            locked = conn.execute(
                sa.select(t.c.id)
                .where(t.c.id == task_id, t.c.state == TaskState.QUEUED)
                .with_for_update(skip_locked=True)
            ).first()
            if locked is None:
                return None
            updated = conn.execute(
                t.update()
                .where(t.c.id == task_id, t.c.state == TaskState.QUEUED)
                .values(
                    state=TaskState.ASSIGNED,
                    agent_id=agent_id,
                    attempt=t.c.attempt + 1,
                    lease_expires_at=now + timedelta(seconds=lease_ttl),
                    error="",
                )
            )
            if updated.rowcount != 1:
                return None
            task = _task(conn.execute(sa.select(t).where(t.c.id == task_id)).one())
            add_event(
                conn,
                task.job_id,
                "assigned",
                f"assigned to agent {agent_id}",
                task.id,
                task.attempt,
            )
            self._refresh_job(conn, task.job_id)
            return task

    def renew_leases(
        self, agent_id: str, running: Iterable[tuple[str, int]], lease_ttl: float
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """Extend the leases of the tasks an agent says it runs.

        Returns (stale, cancelled): attempts the agent no longer holds, and attempts whose job
        was cancelled. The agent must stop both.
        """
        t = schema.tasks
        j = schema.training_jobs
        expires = utcnow() + timedelta(seconds=lease_ttl)
        stale: list[tuple[str, int]] = []
        cancelled: list[tuple[str, int]] = []
        with self.engine.begin() as conn:
            for task_id, attempt in running:
                updated = conn.execute(
                    t.update()
                    .where(
                        t.c.id == task_id,
                        t.c.attempt == attempt,
                        t.c.agent_id == agent_id,
                        t.c.state.in_([str(s) for s in ACTIVE_TASK_STATES]),
                    )
                    .values(lease_expires_at=expires)
                )
                if updated.rowcount != 1:
                    stale.append((task_id, attempt))
                    continue
                cancel = conn.execute(
                    sa.select(j.c.cancel_requested)
                    .select_from(j.join(t, t.c.job_id == j.c.id))
                    .where(t.c.id == task_id)
                ).scalar()
                if cancel:
                    cancelled.append((task_id, attempt))
        return stale, cancelled

    def extend_all_leases(self, lease_ttl: float) -> int:
        """After a coordinator restart, give every agent one lease period to reconnect."""
        t = schema.tasks
        with self.engine.begin() as conn:
            result = conn.execute(
                t.update()
                .where(t.c.state.in_([str(s) for s in ACTIVE_TASK_STATES]))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_ttl))
            )
            return int(result.rowcount or 0)

    def mark_running(self, task_id: str, attempt: int, agent_id: str) -> TaskChange | None:
        t = schema.tasks
        now = utcnow()
        with self.engine.begin() as conn:
            updated = conn.execute(
                t.update()
                .where(
                    t.c.id == task_id,
                    t.c.attempt == attempt,
                    t.c.agent_id == agent_id,
                    t.c.state == TaskState.ASSIGNED,
                )
                .values(state=TaskState.RUNNING, started_at=sa.func.coalesce(t.c.started_at, now))
            )
            if updated.rowcount != 1:
                return None
            task = _task(conn.execute(sa.select(t).where(t.c.id == task_id)).one())
            add_event(
                conn, task.job_id, "started", f"running on agent {agent_id}", task_id, attempt
            )
            job_state = self._refresh_job(conn, task.job_id)
            return TaskChange(task, job_state, "started")

    def record_checkpoint(self, task_id: str, attempt: int, agent_id: str, path: str) -> bool:
        t = schema.tasks
        with self.engine.begin() as conn:
            updated = conn.execute(
                t.update()
                .where(t.c.id == task_id, t.c.attempt == attempt, t.c.agent_id == agent_id)
                .values(checkpoint_path=path)
            )
            return updated.rowcount == 1

    def replace_checkpoint(self, task_id: str, old: str, new: str) -> bool:
        """Point the task's resume at `new` if it is still at `old` (which proved corrupt)."""
        t = schema.tasks
        with self.engine.begin() as conn:
            updated = conn.execute(
                t.update()
                .where(t.c.id == task_id, t.c.checkpoint_path == old)
                .values(checkpoint_path=new)
            )
            return updated.rowcount == 1

    def finish_task(
        self,
        task_id: str,
        attempt: int,
        agent_id: str,
        outcome: TaskOutcome,
        *,
        error: str = "",
        result: dict[str, Any] | None = None,
        checkpoint_path: str = "",
        permanent: bool = False,
    ) -> TaskChange | None:
        """Apply an agent's report that an attempt ended. None when the report is stale."""
        t = schema.tasks
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(t).where(
                    t.c.id == task_id,
                    t.c.attempt == attempt,
                    t.c.agent_id == agent_id,
                    t.c.state.in_([str(s) for s in ACTIVE_TASK_STATES]),
                )
            ).first()
            if row is None:
                return None
            task = _task(row)
            if checkpoint_path:
                conn.execute(
                    t.update().where(t.c.id == task_id).values(checkpoint_path=checkpoint_path)
                )
            if outcome == TaskOutcome.SUCCEEDED:
                self._record_artifacts(conn, task, result or {})
                return self._end_task(conn, task, TaskState.SUCCEEDED, "succeeded", "", result)
            if outcome == TaskOutcome.CANCELLED or _cancel_requested(conn, task.job_id):
                return self._end_task(conn, task, TaskState.CANCELLED, "cancelled", error, None)
            if outcome == TaskOutcome.PREEMPTED:
                conn.execute(
                    t.update().where(t.c.id == task_id).values(preemptions=t.c.preemptions + 1)
                )
                return self._requeue(conn, task, "preempted", "handed back by its agent")
            if permanent:
                return self._end_task(conn, task, TaskState.FAILED, "failed", error, None)
            return self._retry_or_fail(conn, task, "failed", error)

    def _record_artifacts(
        self, conn: sa.Connection, task: TaskRecord, result: dict[str, Any]
    ) -> None:
        """The files a finished task names in its result (model, last checkpoint, pool scores)."""
        rows = []
        for kind, key in RESULT_ARTIFACTS:
            uri = result.get(key)
            if isinstance(uri, str) and uri:
                path = Path(uri)
                # Sizes only where the coordinator sees the same (shared) storage.
                size = path.stat().st_size if path.is_file() else None
                rows.append(
                    {"job_id": task.job_id, "task_id": task.id, "kind": kind, "uri": uri,
                     "size_bytes": size, "created_at": utcnow()}
                )  # fmt: skip
        if rows:
            conn.execute(self._insert_ignore(schema.artifacts), rows)

    def parameters(self, job_id: str) -> dict[str, Any]:
        p = schema.training_parameters
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(p.c.name, p.c.value).where(p.c.job_id == job_id))
            return {r.name: r.value for r in rows}

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        a = schema.artifacts
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(a).where(a.c.job_id == job_id).order_by(a.c.id))
            return [dict(r._mapping) for r in rows]

    def expire_leases(self) -> list[TaskChange]:
        """Requeue (or fail) tasks whose agent stopped renewing their lease."""
        t = schema.tasks
        now = utcnow()
        changes: list[TaskChange] = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(t)
                .where(
                    t.c.state.in_([str(s) for s in ACTIVE_TASK_STATES]), t.c.lease_expires_at < now
                )
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                task = _task(row)
                reason = f"lease expired: agent {task.agent_id} stopped heartbeating"
                if _cancel_requested(conn, task.job_id):
                    changes.append(
                        self._end_task(
                            conn, task, TaskState.CANCELLED, "lease_expired", reason, None
                        )
                    )
                else:
                    changes.append(self._retry_or_fail(conn, task, "lease_expired", reason))
        return changes

    def _retry_or_fail(
        self, conn: sa.Connection, task: TaskRecord, event: str, error: str
    ) -> TaskChange:
        if task.failures_left > 0:
            return self._requeue(conn, task, event, error)
        message = f"{error} (attempt {task.attempt} of {task.max_attempts}; no attempts left)"
        return self._end_task(conn, task, TaskState.FAILED, event, message, None)

    def _requeue(self, conn: sa.Connection, task: TaskRecord, event: str, why: str) -> TaskChange:
        t = schema.tasks
        conn.execute(
            t.update()
            .where(t.c.id == task.id)
            .values(state=TaskState.QUEUED, agent_id=None, lease_expires_at=None, error=why)
        )
        add_event(conn, task.job_id, event, f"{why}; requeued", task.id, task.attempt)
        job_state = self._refresh_job(conn, task.job_id)
        return TaskChange(
            _task(conn.execute(sa.select(t).where(t.c.id == task.id)).one()), job_state, event
        )

    def _end_task(
        self,
        conn: sa.Connection,
        task: TaskRecord,
        state: TaskState,
        event: str,
        error: str,
        result: dict[str, Any] | None,
    ) -> TaskChange:
        t = schema.tasks
        conn.execute(
            t.update()
            .where(t.c.id == task.id)
            .values(
                state=state,
                lease_expires_at=None,
                error=error,
                result=result,
                finished_at=utcnow(),
            )
        )
        message = f"{state.value}" + (f": {error}" if error else "")
        add_event(conn, task.job_id, event, message, task.id, task.attempt)
        job_state = self._refresh_job(conn, task.job_id)
        return TaskChange(
            _task(conn.execute(sa.select(t).where(t.c.id == task.id)).one()), job_state, event
        )

    def _refresh_job(self, conn: sa.Connection, job_id: str) -> JobState:
        """Derive the job's state from its tasks; stamp start/finish times and the result."""
        j = schema.training_jobs
        job_row = conn.execute(sa.select(j).where(j.c.id == job_id)).one()
        tasks = [
            _task(r)
            for r in conn.execute(
                sa.select(schema.tasks)
                .where(schema.tasks.c.job_id == job_id)
                .order_by(schema.tasks.c.index)
            )
        ]
        old = JobState(job_row.state)
        new = job_state_from_tasks((t.state for t in tasks), bool(job_row.cancel_requested))
        if new == old:
            return new
        values: dict[str, Any] = {"state": new}
        now = utcnow()
        if new == JobState.RUNNING and job_row.started_at is None:
            values["started_at"] = now
        if new in FINAL_JOB_STATES:
            values["finished_at"] = now
            errors = [t.error for t in tasks if t.state == TaskState.FAILED and t.error]
            values["error"] = errors[0] if errors else ""
            results = [t.result for t in tasks if t.result]
            if len(results) == 1:
                values["result"] = results[0]
            elif results:
                values["result"] = {"tasks": results}
        conn.execute(j.update().where(j.c.id == job_id).values(**values))
        add_event(conn, job_id, "job_state", f"job {new.value}")
        return new

    # ---- history, metrics, logs ---------------------------------------------------------------

    def history(self, job_id: str, after_seq: int = 0) -> list[EventRecord]:
        e = schema.job_events
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(e).where(e.c.job_id == job_id, e.c.seq > after_seq).order_by(e.c.seq)
            )
            return _records(EventRecord, rows)

    def add_metrics(self, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Store a batch; points already stored under the same (task, attempt, step, key) are
        ignored, so a replayed batch never duplicates."""
        self._insert_new(schema.training_progress, job_id, rows)

    def add_job_event(
        self, job_id: str, kind: str, message: str, task_id: str = "", attempt: int = 0
    ) -> None:
        with self.engine.begin() as conn:
            add_event(conn, job_id, kind, message, task_id, attempt)

    def add_memory_events(self, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """A `memory` event for each micro-batch change among these metric points (the task
        recovered from running out of memory, or tried a larger micro-batch again) and for the
        batch size batch_size auto chose; a replayed point adds none."""
        points = [row for row in rows if row["key"] in (MICRO_BATCH_METRIC, BATCH_SIZE_METRIC)]
        if not points:
            return
        e = schema.job_events
        with self.engine.begin() as conn:
            for row in points:
                message = (
                    f"batch_size auto: {int(row['value'])} images per step, the largest the "
                    "memory probe found to fit"
                    if row["key"] == BATCH_SIZE_METRIC
                    else f"step {row['step']}: training in micro-batches of {int(row['value'])} "
                    "images per pass to fit in memory (batch size unchanged)"
                )
                seen = conn.execute(
                    sa.select(e.c.seq)
                    .where(
                        e.c.job_id == job_id,
                        e.c.task_id == row["task_id"],
                        e.c.attempt == row["attempt"],
                        e.c.kind == "memory",
                        e.c.message == message,
                    )
                    .limit(1)
                ).first()
                if seen is None:
                    add_event(conn, job_id, "memory", message, row["task_id"], row["attempt"])

    def add_logs(self, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Store log lines; (task, attempt, seq) already stored are ignored."""
        self._insert_new(schema.task_logs, job_id, rows)

    def _insert_new(self, table: sa.Table, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(
                    self._insert_ignore(table), [{**row, "job_id": job_id} for row in rows]
                )

    def metrics(self, job_id: str, after_id: int = 0) -> list[MetricRecord]:
        m = schema.training_progress
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(m).where(m.c.job_id == job_id, m.c.id > after_id).order_by(m.c.id)
            )
            return _records(MetricRecord, rows)

    def logs(self, job_id: str, after_id: int = 0, limit: int = 1000) -> list[LogRecord]:
        lg = schema.task_logs
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(lg)
                .where(lg.c.job_id == job_id, lg.c.id > after_id)
                .order_by(lg.c.id)
                .limit(limit)
            )
            return _records(LogRecord, rows)

    def downsample_metrics(self, max_points_per_series: int) -> int:
        """Thin every (task, attempt, key) series longer than `max_points_per_series`: keep every
        k-th point (k = ceil(length / max)) and the last one. Returns how many points went."""
        m = schema.training_progress
        series = (m.c.task_id, m.c.attempt, m.c.key)
        numbered = sa.select(
            m.c.id,
            sa.func.row_number().over(partition_by=series, order_by=m.c.step).label("rn"),
            sa.func.count().over(partition_by=series).label("n"),
        ).subquery()
        stride = (numbered.c.n + max_points_per_series - 1) // max_points_per_series
        doomed = sa.select(numbered.c.id).where(
            numbered.c.n > max_points_per_series,
            numbered.c.rn != numbered.c.n,
            sa.func.mod(numbered.c.rn, stride) != 0,
        )
        with self.engine.begin() as conn:
            result = conn.execute(m.delete().where(m.c.id.in_(doomed)))
            return int(result.rowcount or 0)

    def delete_metrics_of_jobs_finished_before(self, cutoff: datetime) -> int:
        """Retention: drop the metrics (and log lines) of jobs that ended before `cutoff`."""
        j = schema.training_jobs
        old = sa.select(j.c.id).where(j.c.finished_at < cutoff)
        deleted = 0
        with self.engine.begin() as conn:
            for table in (schema.training_progress, schema.task_logs):
                deleted += int(
                    conn.execute(table.delete().where(table.c.job_id.in_(old))).rowcount or 0
                )
        return deleted

    def task_holder(self, task_id: str) -> TaskHolder | None:
        """The task's job, latest attempt and the agent that holds (or last held) it; None if
        no such task."""
        t = schema.tasks
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.job_id, t.c.agent_id, t.c.attempt).where(t.c.id == task_id)
            ).first()
        return None if row is None else TaskHolder(row.job_id, row.agent_id, row.attempt)

    # ---- agents -------------------------------------------------------------------------------

    def upsert_agent(
        self,
        agent_id: str,
        *,
        name: str,
        hostname: str,
        version: str,
        resources: dict[str, Any],
        gpus: list[dict[str, Any]],
        allow_scripts: bool = False,
    ) -> AgentRecord:
        a = schema.agents
        now = utcnow()
        values = {
            "name": name,
            "hostname": hostname,
            "version": version,
            "resources": resources,
            "gpus": gpus,
            "last_seen_at": now,
            "allow_scripts": allow_scripts,
        }
        with self.engine.begin() as conn:
            updated = conn.execute(a.update().where(a.c.id == agent_id).values(**values))
            if updated.rowcount == 0:
                conn.execute(
                    a.insert().values(
                        id=agent_id, state=AgentState.DISCONNECTED, registered_at=now, **values
                    )
                )
            return _agent(conn.execute(sa.select(a).where(a.c.id == agent_id)).one())

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        a = schema.agents
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(a).where(a.c.id == agent_id)).first()
            return _agent(row) if row is not None else None

    def set_agent_state(self, agent_id: str, state: AgentState) -> None:
        a = schema.agents
        with self.engine.begin() as conn:
            conn.execute(
                a.update().where(a.c.id == agent_id).values(state=state, last_seen_at=utcnow())
            )

    def list_agents(self) -> list[AgentRecord]:
        a = schema.agents
        with self.engine.connect() as conn:
            return [_agent(r) for r in conn.execute(sa.select(a).order_by(a.c.name, a.c.id))]

    def mark_all_agents_disconnected(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(schema.agents.update().values(state=AgentState.DISCONNECTED))

    def count_jobs_by_state(self) -> dict[str, int]:
        j = schema.training_jobs
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(j.c.state, sa.func.count()).group_by(j.c.state))
            return {r[0]: int(r[1]) for r in rows}

    def count_tasks_by_state(self) -> dict[str, int]:
        t = schema.tasks
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state))
            return {r[0]: int(r[1]) for r in rows}
