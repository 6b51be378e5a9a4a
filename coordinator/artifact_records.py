"""What the coordinator knows of each uploaded artifact object: its task, size and SHA-256."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from matrec.coordinator import schema
from matrec.coordinator.rows import utcnow


@dataclass(frozen=True)
class ArtifactObject:
    uri: str
    job_id: str
    task_id: str
    attempt: int
    kind: str
    size_bytes: int
    sha256: str
    agent_id: str
    created_at: datetime


class ArtifactObjects:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(
        self,
        *,
        uri: str,
        job_id: str,
        task_id: str,
        attempt: int,
        kind: str,
        size_bytes: int,
        sha256: str,
        agent_id: str,
    ) -> None:
        """Record a committed object (replacing what an earlier upload to the same uri was)."""
        o = schema.artifact_objects
        with self.engine.begin() as conn:
            conn.execute(o.delete().where(o.c.uri == uri))
            conn.execute(
                o.insert().values(
                    uri=uri, job_id=job_id, task_id=task_id, attempt=attempt, kind=kind,
                    size_bytes=size_bytes, sha256=sha256, agent_id=agent_id, created_at=utcnow(),
                )
            )  # fmt: skip

    def get(self, uri: str) -> ArtifactObject | None:
        o = schema.artifact_objects
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(o).where(o.c.uri == uri)).first()
        return None if row is None else ArtifactObject(**row._mapping)

    def of_job(self, job_id: str) -> list[ArtifactObject]:
        o = schema.artifact_objects
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(o).where(o.c.job_id == job_id).order_by(o.c.created_at, o.c.uri)
            )
            return [ArtifactObject(**r._mapping) for r in rows]

    def previous_checkpoint(self, corrupt: ArtifactObject) -> ArtifactObject | None:
        """The task's newest checkpoint recorded before `corrupt`: where a resume falls back."""
        earlier = [
            o
            for o in self.of_job(corrupt.job_id)
            if o.task_id == corrupt.task_id
            and o.kind == "checkpoint"
            and o.uri != corrupt.uri
            and o.created_at <= corrupt.created_at
        ]
        return earlier[-1] if earlier else None

    def remove(self, uri: str) -> None:
        o = schema.artifact_objects
        with self.engine.begin() as conn:
            conn.execute(o.delete().where(o.c.uri == uri))
