"""A page of the coordinator's job list, filtered and sorted by it (DashboardService.QueryJobs):
the query the SDK and the web dashboard send, and the page they get back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from matrec.sdk.convert import job_state_to_proto
from matrec.sdk.errors import InvalidSpecError
from matrec.sdk.types import Job
from matrec.v1 import dashboard_pb2

SORT_KEYS = ("created_at", "name", "kind", "state", "finished_at", "val_accuracy")


@dataclass(frozen=True)
class JobPageQuery:
    """Filters (all must hold), the order and the page. `sort` is one of `SORT_KEYS`
    (`val_accuracy`: the final validation accuracy; jobs without one come last); `page_size`
    0 means the coordinator's default (50), at most 500."""

    states: tuple[str, ...] = ()
    kind: str = ""
    name_contains: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    sort: str = "created_at"
    descending: bool = True
    offset: int = 0
    page_size: int = 50


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    #: Jobs matching the filters over all pages.
    total: int


def job_page_query_to_proto(query: JobPageQuery) -> dashboard_pb2.QueryJobsRequest:
    """The request for `query`. Raises InvalidSpecError for an unknown state or sort key."""
    if query.sort not in SORT_KEYS:
        raise InvalidSpecError(
            "sort", f"unknown sort key {query.sort!r}; choose from {', '.join(SORT_KEYS)}"
        )
    request = dashboard_pb2.QueryJobsRequest(
        states=[job_state_to_proto(state) for state in query.states],
        kind=query.kind,
        name_contains=query.name_contains,
        labels=query.labels,
        sort=dashboard_pb2.JobSortKey.Value(f"JOB_SORT_KEY_{query.sort.upper()}"),
        descending=query.descending,
        offset=query.offset,
        page_size=query.page_size,
    )
    if query.created_after is not None:
        request.created_after.FromDatetime(query.created_after)
    if query.created_before is not None:
        request.created_before.FromDatetime(query.created_before)
    return request
