"""DashboardService: what the web dashboard needs beyond JobService (a filtered, sorted,
paginated job list; who the caller is), public for the SDK too."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from matrec.common.specs import SpecError
from matrec.coordinator import convert
from matrec.coordinator.active_learning.store import ActiveLearningStore
from matrec.coordinator.auth import caller, current_identity
from matrec.coordinator.hpo.study_store import StudyStore
from matrec.coordinator.job_query import JobQuery, query_jobs
from matrec.coordinator.job_service import job_states_or_abort
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.coordinator.sample_images import (
    DEFAULT_SIDE,
    MAX_SIDE,
    SampleImageError,
    sample_image_path,
    thumbnail_png,
)
from matrec.coordinator.study_summary import (
    DEFAULT_MAX_POINTS,
    SORTS,
    TrialTableQuery,
    load_study,
    summarize,
)
from matrec.v1 import dashboard_pb2, dashboard_pb2_grpc

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
MAX_POINTS_MAX = 5000
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


async def _check_page(context: grpc.aio.ServicerContext, offset: int, page_size: int) -> None:
    if offset < 0:
        await abort_invalid(context, SpecError("offset", "must be >= 0"))
    if not 0 <= page_size <= PAGE_SIZE_MAX:
        await abort_invalid(context, SpecError("page_size", f"must be 0..{PAGE_SIZE_MAX}"))


class DashboardService(dashboard_pb2_grpc.DashboardServiceServicer):
    def __init__(
        self,
        engine: sa.Engine,
        studies: StudyStore,
        learning: ActiveLearningStore,
        *,
        auth_enabled: bool,
    ) -> None:
        self.engine = engine
        self.studies = studies
        self.learning = learning
        self.auth_enabled = auth_enabled

    async def QueryJobs(
        self, request: dashboard_pb2.QueryJobsRequest, context: grpc.aio.ServicerContext
    ) -> dashboard_pb2.QueryJobsResponse:
        states = await job_states_or_abort(context, request.states)
        sort = SORT_FROM_PB.get(request.sort)
        if sort is None:
            await abort_invalid(context, SpecError("sort", f"unknown sort key {request.sort}"))
        await _check_page(context, request.offset, request.page_size)
        query = JobQuery(
            states=states,
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

    async def GetStudySummary(
        self, request: dashboard_pb2.GetStudySummaryRequest, context: grpc.aio.ServicerContext
    ) -> dashboard_pb2.GetStudySummaryResponse:
        if not request.study_id:
            await abort_invalid(context, SpecError("study_id", "required"))
        if not 0 <= request.max_points <= MAX_POINTS_MAX:
            await abort_invalid(context, SpecError("max_points", f"must be 0..{MAX_POINTS_MAX}"))
        if request.sort and request.sort not in SORTS:
            await abort_invalid(context, SpecError("sort", f"must be one of {', '.join(SORTS)}"))
        await _check_page(context, request.offset, request.page_size)
        query = TrialTableQuery(
            states=tuple(request.trial_states),
            param=request.param,
            param_min=request.param_min if request.HasField("param_min") else None,
            param_max=request.param_max if request.HasField("param_max") else None,
            sort=request.sort or "number",
            descending=request.descending,
            offset=request.offset,
            page_size=request.page_size or PAGE_SIZE_DEFAULT,
        )
        summary = await asyncio.to_thread(
            self._summary, request.study_id, query, request.max_points or DEFAULT_MAX_POINTS
        )
        if summary is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"study {request.study_id!r} not found; `matrec-ctl hpo list` lists the studies",
            )
        return dashboard_pb2.GetStudySummaryResponse(summary_json=json.dumps(summary))

    def _summary(
        self, study_id: str, query: TrialTableQuery, max_points: int
    ) -> dict[str, Any] | None:
        loaded = load_study(self.engine, study_id)
        if loaded is None:
            return None
        study, trials = loaded
        return summarize(
            study,
            trials,
            lambda job_ids: self.studies.objective_curves(job_ids, study.spec.objective),
            query,
            max_points,
        )

    async def GetSampleImage(
        self, request: dashboard_pb2.GetSampleImageRequest, context: grpc.aio.ServicerContext
    ) -> dashboard_pb2.GetSampleImageResponse:
        if not 0 <= request.max_side <= MAX_SIDE:
            await abort_invalid(context, SpecError("max_side", f"must be 0..{MAX_SIDE}"))
        try:
            png = await asyncio.to_thread(
                self._thumbnail, request.batch_id, request.sample_id, request.max_side
            )
        except SampleImageError as exc:
            code = {
                "not_found": grpc.StatusCode.NOT_FOUND,
                "outside_pool": grpc.StatusCode.PERMISSION_DENIED,
            }.get(exc.kind, grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(exc))
        return dashboard_pb2.GetSampleImageResponse(png=png)

    def _thumbnail(self, batch_id: str, sample_id: str, max_side: int) -> bytes:
        path = sample_image_path(self.learning, batch_id, sample_id)
        return thumbnail_png(path, max_side or DEFAULT_SIDE)
