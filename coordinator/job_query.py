"""One page of jobs, filtered and sorted by the database (the dashboard's runs list): the cost
is one page and one count, whatever the number of jobs stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from matrec.coordinator import schema
from matrec.coordinator.states import JobState
from matrec.coordinator.store import JobRecord, jobs_with_tasks

#: Sort keys and the column (expression) each orders by.
SORT_KEYS = ("created_at", "name", "kind", "state", "finished_at", "val_accuracy")


@dataclass(frozen=True)
class JobQuery:
    states: Sequence[JobState] = ()
    kind: str = ""
    name_contains: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    sort: str = "created_at"
    descending: bool = True
    offset: int = 0
    limit: int = 50


def _sort_column(sort: str) -> Any:
    j = schema.training_jobs
    if sort == "val_accuracy":
        return j.c.result["val_accuracy"].as_float()
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}; one of {', '.join(SORT_KEYS)}")
    return j.c[sort]


def query_jobs(engine: sa.Engine, query: JobQuery) -> tuple[list[JobRecord], int]:
    """The page of jobs `query` asks for (with their tasks) and how many jobs match in all."""
    j = schema.training_jobs
    conditions: list[Any] = []
    if query.states:
        conditions.append(j.c.state.in_([str(s) for s in query.states]))
    if query.kind:
        conditions.append(j.c.kind == query.kind)
    if query.name_contains:
        # Escape LIKE's wildcards: a name filter "50%" means those three characters.
        needle = query.name_contains.lower()
        for char in ("\\", "%", "_"):
            needle = needle.replace(char, "\\" + char)
        conditions.append(sa.func.lower(j.c.name).like(f"%{needle}%", escape="\\"))
    if query.created_after is not None:
        conditions.append(j.c.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(j.c.created_at < query.created_before)
    for key, value in query.labels.items():
        conditions.append(j.c.spec[("labels", key)].as_string() == value)
    column = _sort_column(query.sort)
    # Jobs without a value (no val_accuracy, not finished) come last in either direction.
    order = [column.is_(None), column.desc() if query.descending else column.asc()]
    order.append(j.c.id.desc() if query.descending else j.c.id.asc())
    select = sa.select(j).where(*conditions).order_by(*order)
    count = sa.select(sa.func.count()).select_from(j).where(*conditions)
    with engine.connect() as conn:
        total = int(conn.execute(count).scalar() or 0)
        rows = list(conn.execute(select.offset(query.offset).limit(query.limit)))
        return jobs_with_tasks(conn, rows), total
