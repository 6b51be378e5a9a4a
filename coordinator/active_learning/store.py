"""Active-learning projects in the database: their model versions, pool scorings, candidate
batches with the labels given, and retraining triggers. A job and the row that refers to it are
stored in one transaction; a trigger is unique per (project, kind, what it fired on), so two
coordinators (or a replay after a restart) cannot fire it twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from matrec.common.active_learning.project import ProjectSpecModel
from matrec.coordinator import schema
from matrec.coordinator.rows import as_utc, insert_job, new_id, utcnow
from matrec.coordinator.states import JobState
from sqlalchemy.exc import IntegrityError


class FeedbackError(Exception):
    """Feedback that cannot be recorded. `code` is not_found or conflict."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Stored in a String(16) column; the wire name of "partial" is PARTIALLY_LABELLED.
BATCH_OPEN, BATCH_PARTIAL, BATCH_DONE = "open", "partial", "done"
TRIGGER_FIRED, TRIGGER_RETRAINING, TRIGGER_DONE, TRIGGER_FAILED = (
    "fired",
    "retraining",
    "done",
    "failed",
)


@dataclass(frozen=True)
class ProjectRecord:
    id: str
    name: str
    spec: ProjectSpecModel
    created_at: datetime
    owner: str = "unknown"
    owner_token_id: str | None = None


@dataclass(frozen=True)
class JobView:
    """A job as another record sees it (None fields once the job is deleted)."""

    state: JobState | None
    result: dict[str, Any] | None
    finished_at: datetime | None


@dataclass(frozen=True)
class VersionRecord:
    version: int
    job_id: str | None
    trigger_id: str | None
    feedback_samples: int
    val_accuracy: float | None
    created_at: datetime
    job: JobView


@dataclass(frozen=True)
class ScoringRecord:
    job_id: str
    role: str  # pool | reference
    version: int
    created_at: datetime
    job: JobView


@dataclass(frozen=True)
class CandidateRecord:
    sample_id: str
    sample_uri: str
    score: float
    scores: dict[str, float]
    predicted_class: str | None
    label: str | None
    labelled_at: datetime | None
    labelled_by: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    id: str
    project_id: str
    strategy: str
    state: str
    scoring_job_id: str | None
    created_at: datetime
    closed_at: datetime | None
    candidates: list[CandidateRecord] = field(default_factory=list)
    labelled: int = 0
    size: int = 0
    created_by: str = "unknown"


@dataclass(frozen=True)
class TriggerRecord:
    id: str
    project_id: str
    kind: str
    state: str
    fired_at: datetime
    details: dict[str, Any]
    job_id: str | None
    fired_by: str | None = None


@dataclass(frozen=True)
class Label:
    sample_id: str
    sample_uri: str
    label: str
    labelled_at: datetime


def _job_view(m: Any) -> JobView:
    state = m["job_state"]
    return JobView(
        state=JobState(state) if state else None,
        result=m["job_result"],
        finished_at=as_utc(m["job_finished_at"]),
    )


def _job_columns() -> list[sa.ColumnElement[Any]]:
    j = schema.training_jobs
    return [
        j.c.state.label("job_state"),
        j.c.result.label("job_result"),
        j.c.finished_at.label("job_finished_at"),
    ]


def _insert_spec(
    conn: sa.Connection, project_id: str, job_spec: dict[str, Any], artifact_root: Path
) -> str:
    """Queue a job from a stored spec (as parse_job_spec produced it) in `conn`'s transaction.
    The jobs a project makes belong to the project's owner, whoever asked for them."""
    p = schema.al_projects
    owner = conn.execute(sa.select(p.c.owner, p.c.owner_token_id).where(p.c.id == project_id)).one()
    return insert_job(
        conn,
        name=job_spec["name"],
        kind=job_spec["kind"],
        spec=job_spec,
        resources=job_spec["resources"],
        max_attempts=job_spec["max_attempts"],
        artifact_root=artifact_root,
        owner=owner.owner,
        owner_token_id=owner.owner_token_id,
    )


class ActiveLearningStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # Projects and versions

    def create_project(
        self,
        spec: ProjectSpecModel,
        model_val_accuracy: float | None,
        trained_at: datetime,
        owner: str = "local",
        owner_token_id: str | None = None,
    ) -> ProjectRecord:
        project_id = new_id("alp")
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                schema.al_projects.insert().values(
                    id=project_id,
                    name=spec.name or project_id,
                    spec=spec.model_dump(mode="json"),
                    created_at=now,
                    owner=owner,
                    owner_token_id=owner_token_id,
                )
            )
            conn.execute(
                schema.model_versions.insert().values(
                    project_id=project_id,
                    version=1,
                    job_id=spec.model_job_id,
                    feedback_samples=0,
                    val_accuracy=model_val_accuracy,
                    created_at=trained_at,
                )
            )
        project = self.get_project(project_id)
        assert project is not None
        return project

    def get_project(self, project_id: str) -> ProjectRecord | None:
        p = schema.al_projects
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(p).where(p.c.id == project_id)).first()
        return None if row is None else self._project(row)

    def list_projects(self) -> list[ProjectRecord]:
        p = schema.al_projects
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(p).order_by(p.c.created_at, p.c.id)).all()
        return [self._project(r) for r in rows]

    @staticmethod
    def _project(row: sa.Row[Any]) -> ProjectRecord:
        m = row._mapping
        return ProjectRecord(
            id=m["id"],
            name=m["name"],
            spec=ProjectSpecModel.model_validate(m["spec"]),
            created_at=as_utc(m["created_at"]) or utcnow(),
            owner=m["owner"],
            owner_token_id=m["owner_token_id"],
        )

    def versions(self, project_id: str) -> list[VersionRecord]:
        v, j = schema.model_versions, schema.training_jobs
        query = (
            sa.select(v, *_job_columns())
            .select_from(v.outerjoin(j, v.c.job_id == j.c.id))
            .where(v.c.project_id == project_id)
            .order_by(v.c.version)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            VersionRecord(
                version=r.version,
                job_id=r.job_id,
                trigger_id=r.trigger_id,
                feedback_samples=r.feedback_samples,
                val_accuracy=r.val_accuracy,
                created_at=as_utc(r.created_at) or utcnow(),
                job=_job_view(r._mapping),
            )
            for r in rows
        ]

    def set_version_accuracy(self, project_id: str, version: int, accuracy: float) -> None:
        v = schema.model_versions
        with self.engine.begin() as conn:
            conn.execute(
                v.update()
                .where(v.c.project_id == project_id, v.c.version == version)
                .values(val_accuracy=accuracy)
            )

    def create_retraining(
        self,
        project_id: str,
        job_spec: dict[str, Any],
        artifact_root: Path,
        feedback_samples: int,
        trigger_id: str | None,
    ) -> tuple[str, int]:
        """Queue the retraining job and its model version (and mark the trigger as handled by
        it) in one transaction. Returns (job id, version)."""
        v, t = schema.model_versions, schema.retraining_triggers
        with self.engine.begin() as conn:
            latest = conn.execute(
                sa.select(sa.func.max(v.c.version)).where(v.c.project_id == project_id)
            ).scalar_one()
            version = int(latest or 0) + 1
            job_id = _insert_spec(conn, project_id, job_spec, artifact_root)
            conn.execute(
                v.insert().values(
                    project_id=project_id,
                    version=version,
                    job_id=job_id,
                    trigger_id=trigger_id,
                    feedback_samples=feedback_samples,
                    created_at=utcnow(),
                )
            )
            # The retraining answers every trigger still waiting, not only the one named.
            conn.execute(
                t.update()
                .where(t.c.project_id == project_id, t.c.state == TRIGGER_FIRED)
                .values(state=TRIGGER_RETRAINING, job_id=job_id)
            )
        return job_id, version

    # Scorings

    def create_scoring(
        self,
        project_id: str,
        job_spec: dict[str, Any],
        artifact_root: Path,
        role: str,
        version: int,
    ) -> str:
        with self.engine.begin() as conn:
            job_id = _insert_spec(conn, project_id, job_spec, artifact_root)
            conn.execute(
                schema.al_scorings.insert().values(
                    project_id=project_id,
                    job_id=job_id,
                    role=role,
                    version=version,
                    created_at=utcnow(),
                )
            )
        return job_id

    def scorings(self, project_id: str) -> list[ScoringRecord]:
        s, j = schema.al_scorings, schema.training_jobs
        query = (
            sa.select(s, *_job_columns())
            .select_from(s.join(j, s.c.job_id == j.c.id))
            .where(s.c.project_id == project_id)
            .order_by(s.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            ScoringRecord(
                job_id=r.job_id,
                role=r.role,
                version=r.version,
                created_at=as_utc(r.created_at) or utcnow(),
                job=_job_view(r._mapping),
            )
            for r in rows
        ]

    # Batches and feedback

    def create_batch(
        self,
        project_id: str,
        strategy: str,
        scoring_job_id: str,
        model_job_id: str | None,
        candidates: list[CandidateRecord],
        created_by: str = "local",
    ) -> BatchRecord:
        batch_id = new_id("alb")
        with self.engine.begin() as conn:
            conn.execute(
                schema.active_learning_batches.insert().values(
                    id=batch_id,
                    project_id=project_id,
                    model_job_id=model_job_id,
                    scoring_job_id=scoring_job_id,
                    strategy=strategy,
                    state=BATCH_OPEN,
                    created_at=utcnow(),
                    created_by=created_by,
                )
            )
            conn.execute(
                schema.active_learning_candidates.insert(),
                [
                    {
                        "batch_id": batch_id,
                        "sample_id": c.sample_id,
                        "sample_uri": c.sample_uri,
                        "score": c.score,
                        "scores": c.scores,
                        "predicted_class": c.predicted_class,
                    }
                    for c in candidates
                ],
            )
        batch = self.get_batch(batch_id)
        assert batch is not None
        return batch

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        b, c = schema.active_learning_batches, schema.active_learning_candidates
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(b).where(b.c.id == batch_id)).first()
            if row is None:
                return None
            rows = conn.execute(sa.select(c).where(c.c.batch_id == batch_id).order_by(c.c.id)).all()
        candidates = [self._candidate(r) for r in rows]
        labelled = sum(1 for x in candidates if x.label)
        return self._batch(row, candidates, labelled, len(candidates))

    def list_batches(self, project_id: str) -> list[BatchRecord]:
        b, c = schema.active_learning_batches, schema.active_learning_candidates
        labelled = (
            sa.select(
                c.c.batch_id,
                sa.func.count(c.c.label).label("labelled"),
                sa.func.count().label("size"),
            )
            .group_by(c.c.batch_id)
            .subquery()
        )
        query = (
            sa.select(b, labelled.c.labelled, labelled.c.size)
            .select_from(b.outerjoin(labelled, labelled.c.batch_id == b.c.id))
            .where(b.c.project_id == project_id)
            .order_by(b.c.created_at, b.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._batch(r, [], int(r.labelled or 0), int(r.size or 0)) for r in rows]

    @staticmethod
    def _batch(
        row: sa.Row[Any], candidates: list[CandidateRecord], labelled: int, size: int
    ) -> BatchRecord:
        m = row._mapping
        return BatchRecord(
            id=m["id"],
            project_id=m["project_id"] or "",
            strategy=m["strategy"],
            state=m["state"],
            scoring_job_id=m["scoring_job_id"],
            created_at=as_utc(m["created_at"]) or utcnow(),
            closed_at=as_utc(m["closed_at"]),
            candidates=candidates,
            labelled=labelled,
            size=size,
            created_by=m["created_by"],
        )

    @staticmethod
    def _candidate(row: sa.Row[Any]) -> CandidateRecord:
        m = row._mapping
        return CandidateRecord(
            sample_id=m["sample_id"],
            sample_uri=m["sample_uri"],
            score=m["score"],
            scores=dict(m["scores"] or {}),
            predicted_class=m["predicted_class"],
            label=m["label"],
            labelled_at=as_utc(m["labelled_at"]),
            labelled_by=m["labelled_by"],
        )

    def record_feedback(
        self,
        batch_id: str,
        sample_id: str,
        label: str,
        overwrite: bool,
        labelled_by: str = "local",
    ) -> tuple[CandidateRecord, bool, str]:
        """Store `label` for the candidate. Returns (candidate, changed, batch state). Raises
        FeedbackError for an unknown batch or sample, or a different label without
        `overwrite`."""
        b, c = schema.active_learning_batches, schema.active_learning_candidates
        with self.engine.begin() as conn:
            batch = conn.execute(
                sa.select(b.c.id, b.c.state).where(b.c.id == batch_id).with_for_update()
            ).first()
            if batch is None:
                raise FeedbackError("not_found", f"batch {batch_id!r} not found")
            row = conn.execute(
                sa.select(c).where(c.c.batch_id == batch_id, c.c.sample_id == sample_id)
            ).first()
            if row is None:
                raise FeedbackError(
                    "not_found",
                    f"sample {sample_id!r} is not a candidate of batch {batch_id}; "
                    "`matrec-ctl active-learning status` lists the batch's samples",
                )
            current = row._mapping["label"]
            if current == label:
                return self._candidate(row), False, batch.state
            if current and not overwrite:
                raise FeedbackError(
                    "conflict",
                    f"sample {sample_id!r} is already labelled {current!r}; pass overwrite "
                    f"to replace it with {label!r}",
                )
            now = utcnow()
            conn.execute(
                c.update()
                .where(c.c.id == row._mapping["id"])
                .values(label=label, labelled_at=now, labelled_by=labelled_by)
            )
            remaining = conn.execute(
                sa.select(sa.func.count())
                .select_from(c)
                .where(c.c.batch_id == batch_id, c.c.label.is_(None))
            ).scalar_one()
            state = BATCH_DONE if remaining == 0 else BATCH_PARTIAL
            conn.execute(
                b.update()
                .where(b.c.id == batch_id)
                .values(state=state, closed_at=now if state == BATCH_DONE else None)
            )
            updated = conn.execute(sa.select(c).where(c.c.id == row._mapping["id"])).one()
        return self._candidate(updated), True, state

    def labels(self, project_id: str) -> list[Label]:
        """Every labelled pool sample of the project, its newest label, oldest first."""
        b, c = schema.active_learning_batches, schema.active_learning_candidates
        query = (
            sa.select(c.c.sample_id, c.c.sample_uri, c.c.label, c.c.labelled_at)
            .select_from(c.join(b, c.c.batch_id == b.c.id))
            .where(b.c.project_id == project_id, c.c.label.is_not(None))
            .order_by(c.c.labelled_at, c.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        newest: dict[str, Label] = {}
        for r in rows:
            newest[r.sample_id] = Label(
                r.sample_id, r.sample_uri, r.label, as_utc(r.labelled_at) or utcnow()
            )
        return sorted(newest.values(), key=lambda x: (x.labelled_at, x.sample_id))

    def proposed_sample_ids(self, project_id: str) -> set[str]:
        """Samples labelled or waiting in a batch: never proposed again."""
        b, c = schema.active_learning_batches, schema.active_learning_candidates
        query = (
            sa.select(c.c.sample_id)
            .select_from(c.join(b, c.c.batch_id == b.c.id))
            .where(b.c.project_id == project_id)
        )
        with self.engine.connect() as conn:
            return {r.sample_id for r in conn.execute(query)}

    # Triggers

    def fire_trigger(
        self,
        project_id: str,
        kind: str,
        dedupe_key: str,
        details: dict[str, Any],
        fired_by: str | None = None,
    ) -> TriggerRecord | None:
        """Store a fired trigger (`fired_by`: who asked, None for the monitor); None when one of
        this kind already fired on `dedupe_key`."""
        trigger_id = new_id("trg")
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    schema.retraining_triggers.insert().values(
                        id=trigger_id,
                        project_id=project_id,
                        kind=kind,
                        dedupe_key=dedupe_key,
                        details=details,
                        state=TRIGGER_FIRED,
                        fired_at=utcnow(),
                        fired_by=fired_by,
                    )
                )
        except IntegrityError:
            return None
        return self.get_trigger(trigger_id)

    def get_trigger(self, trigger_id: str) -> TriggerRecord | None:
        t = schema.retraining_triggers
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == trigger_id)).first()
        return None if row is None else self._trigger(row)

    def triggers(self, project_id: str) -> list[TriggerRecord]:
        t = schema.retraining_triggers
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.project_id == project_id).order_by(t.c.fired_at, t.c.id)
            ).all()
        return [self._trigger(r) for r in rows]

    def set_trigger_state(self, trigger_id: str, state: str) -> None:
        t = schema.retraining_triggers
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == trigger_id).values(state=state))

    @staticmethod
    def _trigger(row: sa.Row[Any]) -> TriggerRecord:
        m = row._mapping
        return TriggerRecord(
            id=m["id"],
            project_id=m["project_id"] or "",
            kind=m["kind"],
            state=m["state"],
            fired_at=as_utc(m["fired_at"]) or utcnow(),
            details=dict(m["details"] or {}),
            job_id=m["job_id"],
            fired_by=m["fired_by"],
        )
