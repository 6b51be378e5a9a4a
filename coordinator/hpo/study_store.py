"""Studies and trials in the database. Every change is a compare-and-set on the row's state, so
two coordinators sharing one database (or a replay after a restart) cannot apply one twice."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from matrec.common.studies import StudySpecModel
from matrec.coordinator import schema
from matrec.coordinator.rows import as_utc, insert_job, new_id, utcnow
from matrec.coordinator.states import JobState, StudyState, TrialState
from sqlalchemy.exc import IntegrityError


@dataclass(frozen=True)
class TrialRecord:
    id: str
    study_id: str
    number: int
    job_id: str | None
    params: dict[str, Any]
    state: TrialState
    objective_value: float | None
    judged: int
    pruned_rung: int | None
    pruned_resource: int | None
    error: str
    created_at: datetime
    finished_at: datetime | None
    # The trial's job, as it stands now (None once the job has been deleted).
    job_state: JobState | None
    job_cancel_requested: bool
    job_error: str
    job_result: dict[str, Any] | None


@dataclass(frozen=True)
class StudyRecord:
    id: str
    name: str
    spec: StudySpecModel
    state: StudyState
    error: str
    created_at: datetime
    finished_at: datetime | None
    trials: list[TrialRecord] = field(default_factory=list)
    owner: str = "unknown"
    owner_token_id: str | None = None
    cancelled_by: str | None = None


@dataclass(frozen=True)
class Point:
    step: int
    value: float


def _study(row: sa.Row[Any], trials: list[TrialRecord]) -> StudyRecord:
    m = row._mapping
    return StudyRecord(
        id=m["id"],
        name=m["name"],
        spec=StudySpecModel.model_validate(m["settings"]),
        state=StudyState(m["state"]),
        error=m["error"],
        created_at=as_utc(m["created_at"]),
        finished_at=as_utc(m["finished_at"]),
        trials=trials,
        owner=m["owner"],
        owner_token_id=m["owner_token_id"],
        cancelled_by=m["cancelled_by"],
    )


def _trial(row: sa.Row[Any]) -> TrialRecord:
    m = row._mapping
    return TrialRecord(
        id=m["id"],
        study_id=m["study_id"],
        number=m["number"],
        job_id=m["job_id"],
        params=dict(m["params"]),
        state=TrialState(m["state"]),
        objective_value=m["objective_value"],
        judged=m["judged"],
        pruned_rung=m["pruned_rung"],
        pruned_resource=m["pruned_resource"],
        error=m["error"],
        created_at=as_utc(m["created_at"]),
        finished_at=as_utc(m["finished_at"]),
        job_state=JobState(m["job_state"]) if m["job_state"] else None,
        job_cancel_requested=bool(m["job_cancel_requested"]),
        job_error=m["job_error"] or "",
        job_result=m["job_result"],
    )


class StudyStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create_study(
        self, spec: StudySpecModel, owner: str = "local", owner_token_id: str | None = None
    ) -> StudyRecord:
        study_id = new_id("study")
        with self.engine.begin() as conn:
            conn.execute(
                schema.studies.insert().values(
                    id=study_id,
                    name=spec.name or f"{spec.algorithm} study",
                    algorithm=spec.algorithm,
                    objective=spec.objective,
                    direction=spec.direction,
                    search_space={k: v.model_dump() for k, v in spec.search_space.items()},
                    settings=spec.model_dump(mode="json"),
                    state=StudyState.RUNNING,
                    created_at=utcnow(),
                    owner=owner,
                    owner_token_id=owner_token_id,
                )
            )
        study = self.get_study(study_id)
        assert study is not None
        return study

    def _trials_query(self) -> sa.Select[Any]:
        t, j = schema.trials, schema.training_jobs
        return (
            sa.select(
                t,
                j.c.state.label("job_state"),
                j.c.cancel_requested.label("job_cancel_requested"),
                j.c.error.label("job_error"),
                j.c.result.label("job_result"),
            )
            .select_from(t.outerjoin(j, t.c.job_id == j.c.id))
            .order_by(t.c.study_id, t.c.number)
        )

    def get_study(self, study_id: str) -> StudyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(schema.studies).where(schema.studies.c.id == study_id)
            ).first()
            if row is None:
                return None
            trials = conn.execute(self._trials_query().where(schema.trials.c.study_id == study_id))
            return _study(row, [_trial(r) for r in trials])

    def list_studies(self, limit: int = 100) -> list[StudyRecord]:
        s = schema.studies
        with self.engine.connect() as conn:
            rows = list(conn.execute(sa.select(s).order_by(s.c.created_at.desc()).limit(limit)))
            by_study: defaultdict[str, list[TrialRecord]] = defaultdict(list)
            if rows:
                ids = [r.id for r in rows]
                for r in conn.execute(
                    self._trials_query().where(schema.trials.c.study_id.in_(ids))
                ):
                    by_study[r.study_id].append(_trial(r))
        return [_study(r, by_study[r.id]) for r in rows]

    def running_study_ids(self) -> list[str]:
        s = schema.studies
        with self.engine.connect() as conn:
            return [
                r.id
                for r in conn.execute(
                    sa.select(s.c.id)
                    .where(s.c.state == StudyState.RUNNING)
                    .order_by(s.c.created_at)
                )
            ]

    def add_trial(
        self,
        study_id: str,
        number: int,
        params: dict[str, Any],
        encoded: dict[str, Any] | None,
        job_spec: dict[str, Any],
        artifact_root: Path,
        num_tasks: int = 1,
        owner: str = "local",
        owner_token_id: str | None = None,
    ) -> str | None:
        """Store trial `number` and its queued job (owned by the study's owner) in one
        transaction. Returns the trial's id, or None when that number is taken (another
        coordinator asked first)."""
        trial_id = f"{study_id}-{number}"
        try:
            with self.engine.begin() as conn:
                job_id = insert_job(
                    conn,
                    name=job_spec["name"],
                    kind=job_spec["kind"],
                    spec=job_spec,
                    resources=job_spec["resources"],
                    max_attempts=job_spec["max_attempts"],
                    artifact_root=artifact_root,
                    num_tasks=num_tasks,
                    owner=owner,
                    owner_token_id=owner_token_id,
                )
                conn.execute(
                    schema.trials.insert().values(
                        id=trial_id,
                        study_id=study_id,
                        number=number,
                        job_id=job_id,
                        params=params,
                        state=TrialState.RUNNING,
                        algorithm_state=encoded,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError:
            return None
        return trial_id

    def finish_trial(
        self,
        trial_id: str,
        state: TrialState,
        *,
        objective_value: float | None = None,
        error: str = "",
        pruned_rung: int | None = None,
        pruned_resource: int | None = None,
    ) -> bool:
        """Move a running trial to a final state. False if it was no longer running."""
        t = schema.trials
        with self.engine.begin() as conn:
            result = conn.execute(
                t.update()
                .where(t.c.id == trial_id, t.c.state == TrialState.RUNNING)
                .values(
                    state=state,
                    objective_value=objective_value,
                    error=error,
                    pruned_rung=pruned_rung,
                    pruned_resource=pruned_resource,
                    finished_at=utcnow(),
                )
            )
        return result.rowcount == 1

    def set_judged(self, trial_id: str, judged: int) -> None:
        t = schema.trials
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == trial_id, t.c.state == TrialState.RUNNING)
                .values(judged=judged)
            )

    def finish_study(
        self, study_id: str, state: StudyState, error: str = "", cancelled_by: str | None = None
    ) -> bool:
        s = schema.studies
        with self.engine.begin() as conn:
            result = conn.execute(
                s.update()
                .where(s.c.id == study_id, s.c.state == StudyState.RUNNING)
                .values(state=state, error=error, finished_at=utcnow(), cancelled_by=cancelled_by)
            )
        return result.rowcount == 1

    def objective_curves(self, job_ids: Iterable[str], key: str) -> dict[str, list[Point]]:
        """Each job's reports of metric `key`, in step order. Where attempts overlap (a resumed
        task re-reporting a step), the latest attempt's value counts."""
        p = schema.training_progress
        ids = list(job_ids)
        if not ids:
            return {}
        latest: dict[str, dict[int, tuple[int, float]]] = defaultdict(dict)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(p.c.job_id, p.c.attempt, p.c.step, p.c.value).where(
                    p.c.job_id.in_(ids), p.c.key == key
                )
            )
            for job_id, attempt, step, value in rows:
                known = latest[job_id].get(step)
                if known is None or attempt >= known[0]:
                    latest[job_id][step] = (attempt, value)
        return {
            job_id: [Point(step, v) for step, (_, v) in sorted(points.items())]
            for job_id, points in latest.items()
        }


def count_states(trials: Sequence[TrialRecord]) -> dict[str, int]:
    counts: defaultdict[str, int] = defaultdict(int)
    for trial in trials:
        counts[trial.state.value] += 1
    return dict(counts)
