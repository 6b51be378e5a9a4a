"""The gRPC StudyService: create, inspect, list, cancel and watch hyperparameter studies."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from matrec.common.specs import SpecError, check_dataset_path, parse_job_spec
from matrec.common.studies import grid_size, parse_study_spec
from matrec.common.wire import study_spec_to_dict, study_spec_to_proto
from matrec.coordinator import convert
from matrec.coordinator.auth import caller, refuse_foreign_cancel, refuse_scripts_unless_allowed
from matrec.coordinator.hpo.driver import StudyDriver
from matrec.coordinator.hpo.study_store import Point, StudyRecord, StudyStore, TrialRecord
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.coordinator.states import FINAL_STUDY_STATES, JobState, StudyState, TrialState
from matrec.v1 import common_pb2, studies_pb2, studies_pb2_grpc

log = logging.getLogger(__name__)

LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000
WATCH_INTERVAL_SECONDS = 1.0
WATCH_MIN_INTERVAL_SECONDS = 0.1

STUDY_STATE_TO_PB = {
    StudyState.RUNNING: studies_pb2.STUDY_STATE_RUNNING,
    StudyState.COMPLETED: studies_pb2.STUDY_STATE_COMPLETED,
    StudyState.FAILED: studies_pb2.STUDY_STATE_FAILED,
    StudyState.CANCELLED: studies_pb2.STUDY_STATE_CANCELLED,
}
TRIAL_STATE_TO_PB = {
    TrialState.RUNNING: studies_pb2.TRIAL_STATE_RUNNING,
    TrialState.COMPLETED: studies_pb2.TRIAL_STATE_COMPLETED,
    TrialState.PRUNED: studies_pb2.TRIAL_STATE_PRUNED,
    TrialState.FAILED: studies_pb2.TRIAL_STATE_FAILED,
    TrialState.CANCELLED: studies_pb2.TRIAL_STATE_CANCELLED,
}
JOB_STATE_TO_PB = {
    JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}


def trial_to_proto(record: TrialRecord, curve: list[Point] | None) -> studies_pb2.Trial:
    message = studies_pb2.Trial(
        number=record.number,
        job_id=record.job_id or "",
        params=convert.struct(record.params),
        state=TRIAL_STATE_TO_PB[record.state],
        pruned_rung=record.pruned_rung or 0,
        pruned_resource=record.pruned_resource or 0,
        error=record.error,
        created_at=convert.timestamp(record.created_at),
        finished_at=convert.timestamp(record.finished_at),
        job_state=JOB_STATE_TO_PB[record.job_state] if record.job_state else 0,
        intermediate=[
            studies_pb2.IntermediateValue(resource=i, step=p.step, value=p.value)
            for i, p in enumerate(curve or [], start=1)
        ],
    )
    if record.objective_value is not None:
        message.objective_value = record.objective_value
    return message


def best_trial(study: StudyRecord) -> TrialRecord | None:
    completed = [
        t for t in study.trials if t.state == TrialState.COMPLETED and t.objective_value is not None
    ]
    if not completed:
        return None
    sign = -1.0 if study.spec.maximize else 1.0
    return min(completed, key=lambda t: (sign * (t.objective_value or 0.0), t.number))


def study_to_proto(
    record: StudyRecord, curves: dict[str, list[Point]] | None = None
) -> studies_pb2.Study:
    message = studies_pb2.Study(
        id=record.id,
        spec=study_spec_to_proto(record.spec),
        state=STUDY_STATE_TO_PB[record.state],
        created_at=convert.timestamp(record.created_at),
        finished_at=convert.timestamp(record.finished_at),
        error=record.error,
        owner=record.owner,
        cancelled_by=record.cancelled_by or "",
        trials=[trial_to_proto(t, (curves or {}).get(t.job_id or "")) for t in record.trials],
    )
    best = best_trial(record)
    if best is not None:
        message.best_trial = best.number
    return message


class StudyService(studies_pb2_grpc.StudyServiceServicer):
    def __init__(
        self,
        studies: StudyStore,
        driver: StudyDriver,
        notifier: JobNotifier,
        *,
        check_paths: bool,
    ) -> None:
        self.studies = studies
        self.driver = driver
        self.notifier = notifier
        self.check_paths = check_paths

    async def _study_or_abort(
        self, study_id: str, context: grpc.aio.ServicerContext
    ) -> StudyRecord:
        if not study_id:
            await abort_invalid(context, SpecError("study_id", "required"))
        study = self.studies.get_study(study_id)
        if study is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"study {study_id!r} not found; `matrec-ctl hpo list` lists the known studies",
            )
        assert study is not None
        return study

    def _with_curves(self, study: StudyRecord) -> studies_pb2.Study:
        curves = self.studies.objective_curves(
            [t.job_id for t in study.trials if t.job_id], study.spec.objective
        )
        return study_to_proto(study, curves)

    async def CreateStudy(
        self, request: studies_pb2.CreateStudyRequest, context: grpc.aio.ServicerContext
    ) -> studies_pb2.CreateStudyResponse:
        try:
            raw = study_spec_to_dict(request.spec)
            spec = parse_study_spec(raw)
            if self.check_paths:
                _, trial_config = parse_job_spec(spec.trial.model_dump())
                try:
                    check_dataset_path(trial_config)
                except SpecError as bad_path:
                    raise SpecError(f"trial.{bad_path.field}", bad_path.message) from None
        except SpecError as error:
            await abort_invalid(context, error)
        await refuse_scripts_unless_allowed(context, spec.trial.kind)
        if spec.algorithm == "grid" and "max_trials" not in raw:
            spec = spec.model_copy(
                update={"max_trials": grid_size(spec.search_space, spec.grid_points)}
            )
        who = caller(context)
        study = self.studies.create_study(spec, who.name, who.token_id)
        log.info("study %s created (%s, %d trials)", study.id, spec.algorithm, spec.max_trials)
        await self.driver.advance(study.id)
        created = self.studies.get_study(study.id)
        assert created is not None
        return studies_pb2.CreateStudyResponse(study=study_to_proto(created))

    async def GetStudy(
        self, request: studies_pb2.GetStudyRequest, context: grpc.aio.ServicerContext
    ) -> studies_pb2.GetStudyResponse:
        study = await self._study_or_abort(request.study_id, context)
        return studies_pb2.GetStudyResponse(study=self._with_curves(study))

    async def ListStudies(
        self, request: studies_pb2.ListStudiesRequest, context: grpc.aio.ServicerContext
    ) -> studies_pb2.ListStudiesResponse:
        if request.limit < 0:
            await abort_invalid(context, SpecError("limit", "must be >= 0"))
        limit = min(request.limit or LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)
        return studies_pb2.ListStudiesResponse(
            studies=[study_to_proto(s) for s in self.studies.list_studies(limit)]
        )

    async def CancelStudy(
        self, request: studies_pb2.CancelStudyRequest, context: grpc.aio.ServicerContext
    ) -> studies_pb2.CancelStudyResponse:
        study = await self._study_or_abort(request.study_id, context)
        if study.state in FINAL_STUDY_STATES:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"study {study.id} already {study.state.value}; there is nothing to cancel",
            )
        await refuse_foreign_cancel(context, f"study {study.id}", study.owner)
        who = caller(context).name
        self.driver.cancel_study(study, request.reason or f"study cancelled by {who}", who)
        updated = self.studies.get_study(study.id)
        assert updated is not None
        return studies_pb2.CancelStudyResponse(study=study_to_proto(updated))

    async def WatchStudy(
        self, request: studies_pb2.WatchStudyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[studies_pb2.WatchStudyResponse]:
        study = await self._study_or_abort(request.study_id, context)
        interval = WATCH_INTERVAL_SECONDS
        if request.HasField("interval"):
            interval = max(request.interval.ToTimedelta().total_seconds(), 0)
            interval = max(interval or WATCH_INTERVAL_SECONDS, WATCH_MIN_INTERVAL_SECONDS)
        last = b""
        while True:
            message = self._with_curves(study)
            signature = message.SerializeToString(deterministic=True)
            if signature != last:
                last = signature
                yield studies_pb2.WatchStudyResponse(study=message)
            if study.state in FINAL_STUDY_STATES:
                return
            await self.notifier.wait(study.id, interval)
            refreshed = self.studies.get_study(study.id)
            if refreshed is None:
                return
            study = refreshed
