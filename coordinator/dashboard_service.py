"""DashboardService: what the web dashboard needs beyond JobService (a filtered, sorted,
paginated job list; who the caller is), public for the SDK too."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from matrec.common.specs import SpecError
from matrec.coordinator import convert
from matrec.coordinator.auth import caller, current_identity
from matrec.coordinator.job_query import JobQuery, query_jobs
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.v1 import dashboard_pb2, dashboard_pb2_grpc

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
SORT_FROM_PB = {
    dashboard_pb2.JOB_SORT_KEY_UNSPECIFIED: "created_at",
    dashboard_pb2.JOB_SORT_KEY_CREATED_AT: "created_at",
    dashboard_pb2.JOB_SORT_KEY_NAME: "name",
    dashboard_pb2.JOB_SORT_KEY_KIND: "kind",
    dashboard_pb2.JOB_SORT_KEY_STATE: "state",
    dashboard_pb2.JOB_SORT_KEY_FINISHED_AT: "finished_at",
    dashboard_pb2.JOB_SORT_KEY_VAL_ACCURACY: "val_accuracy",
}


def _time(request: dashboard_pb2.QueryJobsRequest, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(request, name)
    return value.ToDatetime(tzinfo=UTC)


class DashboardService(dashboard_pb2_grpc.DashboardServiceServicer):
    def __init__(self, engine: sa.Engine, *, auth_enabled: bool) -> None:
        self.engine = engine
        self.auth_enabled = auth_enabled

    async def QueryJobs(
        self, request: dashboard_pb2.QueryJobsRequest, context: grpc.aio.ServicerContext
    ) -> dashboard_pb2.QueryJobsResponse:
        states = []
        for value in request.states:
            state = convert.JOB_STATE_FROM_PB.get(value)
            if state is None:
                await abort_invalid(context, SpecError("states", f"unknown job state {value}"))
            states.append(state)
        sort = SORT_FROM_PB.get(request.sort)
        if sort is None:
            await abort_invalid(context, SpecError("sort", f"unknown sort key {request.sort}"))
        if request.offset < 0:
            await abort_invalid(context, SpecError("offset", "must be >= 0"))
        if not 0 <= request.page_size <= PAGE_SIZE_MAX:
            await abort_invalid(context, SpecError("page_size", f"must be 0..{PAGE_SIZE_MAX}"))
        query = JobQuery(
            states=[s for s in states if s is not None],
            kind=request.kind,
            name_contains=request.name_contains,
            created_after=_time(request, "created_after"),
            created_before=_time(request, "created_before"),
            labels=dict(request.labels),
            sort=sort or "created_at",
            descending=request.descending,
            offset=request.offset,
            limit=request.page_size or PAGE_SIZE_DEFAULT,
        )
        jobs, total = query_jobs(self.engine, query)
        return dashboard_pb2.QueryJobsResponse(jobs=[convert.job(j) for j in jobs], total=total)

    async def WhoAmI(
        self, request: dashboard_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> dashboard_pb2.WhoAmIResponse:
        identity = current_identity.get()
        role = identity.role if identity is not None else "admin"
        return dashboard_pb2.WhoAmIResponse(
            name=caller(context).name, role=role, auth_enabled=self.auth_enabled
        )
