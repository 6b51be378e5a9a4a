"""Many finished jobs written straight into a coordinator's database before it starts (test-only
seeding: submitting and running 500 jobs would take minutes). Each job's name, kind, state,
dates and final accuracy are drawn here, so tests compute what a list must show from these
records, never from the code under test."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from matrec.coordinator import schema
from matrec.coordinator.store import Store

SEED_PREFIX = "seed-"
KINDS = ("finetune", "diagnostic", "score")
STATES = ("succeeded", "failed", "cancelled")
#: The seeded jobs were created on these days (UTC), one day apart at most 60 days back.
FIRST_DAY = datetime(2026, 9, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SeededJob:
    id: str
    name: str
    kind: str
    state: str
    created_at: datetime
    finished_at: datetime
    val_accuracy: float | None


def seed_jobs(
    database_url: str, count: int, artifact_root: Path, seed: int = 17
) -> list[SeededJob]:
    """`count` finished jobs (tasks final too, so no scheduler picks them up) in the database."""
    rng = random.Random(seed)
    store = Store.open(database_url)
    jobs = []
    try:
        for number in range(count):
            kind = rng.choice(KINDS)
            state = rng.choice(STATES)
            name = f"{SEED_PREFIX}{number:04d}-{rng.choice(['wood', 'metal', 'stone', 'fabric'])}"
            created = FIRST_DAY + timedelta(days=rng.randrange(60), seconds=rng.randrange(86_400))
            finished = created + timedelta(seconds=rng.randrange(60, 7_200))
            accuracy = round(rng.random(), 6) if state == "succeeded" else None
            record = store.create_job(
                name=name,
                kind=kind,
                spec={"config": {}, "labels": {"seeded": "yes"}},
                resources={},
                max_attempts=1,
                artifact_root=artifact_root,
            )
            result = {} if accuracy is None else {"val_accuracy": accuracy}
            with store.engine.begin() as conn:
                conn.execute(
                    sa.update(schema.training_jobs)
                    .where(schema.training_jobs.c.id == record.id)
                    .values(
                        state=state,
                        result=result,
                        created_at=created,
                        started_at=created,
                        finished_at=finished,
                    )
                )
                conn.execute(
                    sa.update(schema.tasks)
                    .where(schema.tasks.c.job_id == record.id)
                    .values(state=state)
                )
            jobs.append(SeededJob(record.id, name, kind, state, created, finished, accuracy))
    finally:
        store.close()
    return jobs
