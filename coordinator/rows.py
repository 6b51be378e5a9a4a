"""What every store module shares (the job store, the study store, the token store, the
active-learning store): ids, UTC timestamps, and inserting a queued job with its tasks inside a
caller's transaction, so that a study's trial or a project's scoring job is stored atomically
with what it belongs to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from matrec.coordinator import schema
from matrec.coordinator.states import JobState, TaskState


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def add_event(
    conn: sa.Connection,
    job_id: str,
    kind: str,
    message: str,
    task_id: str = "",
    attempt: int = 0,
) -> None:
    conn.execute(
        schema.job_events.insert().values(
            job_id=job_id,
            task_id=task_id,
            attempt=attempt,
            time=utcnow(),
            kind=kind,
            message=message,
        )
    )


def insert_job(
    conn: sa.Connection,
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
) -> str:
    """Insert a queued job, its tasks, parameters and first event in `conn`'s transaction (so
    that a caller can store something else atomically with it). Returns the job's id."""
    job_id = new_id("job")
    now = utcnow()
    conn.execute(
        schema.training_jobs.insert().values(
            id=job_id,
            name=name,
            kind=kind,
            spec=spec,
            state=JobState.QUEUED,
            max_attempts=max_attempts,
            created_at=now,
            owner=owner,
            owner_token_id=owner_token_id,
        )
    )
    for index in range(num_tasks):
        task_id = f"{job_id}-t{index}"
        conn.execute(
            schema.tasks.insert().values(
                id=task_id,
                job_id=job_id,
                index=index,
                state=TaskState.QUEUED,
                max_attempts=max_attempts,
                resources=resources,
                artifact_dir=str(artifact_root / job_id / task_id),
                created_at=now,
            )
        )
    config = spec.get("config", {})
    if config:
        conn.execute(
            schema.training_parameters.insert(),
            [{"job_id": job_id, "name": k, "value": v} for k, v in sorted(config.items())],
        )
    add_event(conn, job_id, "submitted", f"{kind} job submitted")
    return job_id
