"""The gRPC ActiveLearningService: projects, pool scoring, candidate batches, labelling
feedback, retraining triggers and retraining."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import grpc
from matrec.common.active_learning.project import parse_project_spec
from matrec.common.specs import SpecError
from matrec.common.wire import struct_to_dict
from matrec.coordinator import convert
from matrec.coordinator.active_learning.projects import ProjectError, ProjectManager, ProjectStatus
from matrec.coordinator.active_learning.store import (
    BATCH_DONE,
    BATCH_OPEN,
    BATCH_PARTIAL,
    BatchRecord,
    CandidateRecord,
    FeedbackError,
    ProjectRecord,
    TriggerRecord,
    VersionRecord,
)
from matrec.coordinator.auth import caller
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.coordinator.scheduler import Scheduler
from matrec.v1 import active_learning_pb2 as pb
from matrec.v1 import active_learning_pb2_grpc

log = logging.getLogger(__name__)

BATCH_STATE_TO_PB = {
    BATCH_OPEN: pb.BATCH_STATE_OPEN,
    BATCH_PARTIAL: pb.BATCH_STATE_PARTIALLY_LABELLED,
    BATCH_DONE: pb.BATCH_STATE_DONE,
}
MAX_SELECT = 10_000


def candidate_to_proto(record: CandidateRecord) -> pb.Candidate:
    return pb.Candidate(
        sample_id=record.sample_id,
        sample_uri=record.sample_uri,
        score=record.score,
        scores=record.scores,
        predicted_class=record.predicted_class or "",
        label=record.label or "",
        labelled_at=convert.timestamp(record.labelled_at),
        labelled_by=record.labelled_by or "",
    )


def batch_to_proto(record: BatchRecord) -> pb.Batch:
    return pb.Batch(
        id=record.id,
        project_id=record.project_id,
        strategy=record.strategy,
        state=BATCH_STATE_TO_PB.get(record.state, pb.BATCH_STATE_UNSPECIFIED),
        scoring_job_id=record.scoring_job_id or "",
        created_at=convert.timestamp(record.created_at),
        closed_at=convert.timestamp(record.closed_at),
        candidates=[candidate_to_proto(c) for c in record.candidates],
        labelled=record.labelled,
        size=record.size,
        created_by=record.created_by,
    )


def trigger_to_proto(record: TriggerRecord) -> pb.Trigger:
    return pb.Trigger(
        id=record.id,
        project_id=record.project_id,
        kind=record.kind,
        state=record.state,
        fired_at=convert.timestamp(record.fired_at),
        details=convert.struct(record.details),
        job_id=record.job_id or "",
        fired_by=record.fired_by or "",
    )


def version_to_proto(record: VersionRecord) -> pb.ModelVersion:
    message = pb.ModelVersion(
        version=record.version,
        job_id=record.job_id or "",
        trigger_id=record.trigger_id or "",
        created_at=convert.timestamp(record.created_at),
        feedback_samples=record.feedback_samples,
        state=str(record.job.state) if record.job.state else "deleted",
    )
    if record.val_accuracy is not None:
        message.val_accuracy = record.val_accuracy
    return message


def project_to_proto(status: ProjectStatus) -> pb.Project:
    project = status.project
    current = status.current
    return pb.Project(
        id=project.id,
        spec=convert.struct(project.spec.model_dump(mode="json")),
        created_at=convert.timestamp(project.created_at),
        owner=project.owner,
        current_version=current.version if current else 0,
        versions=[version_to_proto(v) for v in status.versions],
        classes=status.classes,
        pending_feedback=status.pending_feedback,
        total_feedback=status.total_feedback,
        pool_scoring_job_id=status.pool_scoring.job_id if status.pool_scoring else "",
        reference_scoring_job_id=(
            status.reference_scoring.job_id if status.reference_scoring else ""
        ),
        last_trained_at=convert.timestamp(status.last_trained_at),
    )


async def _abort(context: grpc.aio.ServicerContext, error: ProjectError) -> NoReturn:
    if error.code == "invalid":
        await abort_invalid(context, SpecError(error.field, str(error)))
    code = {
        "not_found": grpc.StatusCode.NOT_FOUND,
        "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    }.get(error.code, grpc.StatusCode.INVALID_ARGUMENT)
    await context.abort(code, str(error))
    raise AssertionError("unreachable")


class ActiveLearningService(active_learning_pb2_grpc.ActiveLearningServiceServicer):
    def __init__(self, manager: ProjectManager, scheduler: Scheduler, *, check_paths: bool) -> None:
        self.manager = manager
        self.scheduler = scheduler
        self.check_paths = check_paths

    async def _project(self, project_id: str, context: grpc.aio.ServicerContext) -> ProjectRecord:
        try:
            return self.manager.project(project_id)
        except ProjectError as error:
            await _abort(context, error)

    async def CreateProject(
        self, request: pb.CreateProjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateProjectResponse:
        try:
            spec = parse_project_spec(struct_to_dict(request.spec, "spec"))
            if self.check_paths:
                _check_paths(spec.dataset_path, spec.pool_path)
        except SpecError as error:
            await abort_invalid(context, error)
        try:
            who = caller(context)
            project = self.manager.create(spec, who.name, who.token_id)
        except ProjectError as error:
            await _abort(context, error)
        log.info("active-learning project %s created (model %s)", project.id, spec.model_job_id)
        self.scheduler.wake()
        return pb.CreateProjectResponse(project=project_to_proto(self.manager.status(project)))

    async def GetProject(
        self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProjectResponse:
        project = await self._project(request.project_id, context)
        return pb.GetProjectResponse(project=project_to_proto(self.manager.status(project)))

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProjectsResponse:
        projects = self.manager.projects.list_projects()
        return pb.ListProjectsResponse(
            projects=[project_to_proto(self.manager.status(p)) for p in projects]
        )

    async def ScorePool(
        self, request: pb.ScorePoolRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScorePoolResponse:
        project = await self._project(request.project_id, context)
        try:
            job_id = self.manager.score_pool(project)
        except ProjectError as error:
            await _abort(context, error)
        self.scheduler.wake()
        return pb.ScorePoolResponse(job_id=job_id)

    async def SelectSamples(
        self, request: pb.SelectSamplesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SelectSamplesResponse:
        project = await self._project(request.project_id, context)
        if not 1 <= request.count <= MAX_SELECT:
            await abort_invalid(
                context, SpecError("count", f"must be 1 to {MAX_SELECT} (got {request.count})")
            )
        try:
            batch = self.manager.select(
                project,
                request.count,
                request.strategy,
                request.class_balance,
                request.seed,
                caller(context).name,
            )
        except ProjectError as error:
            await _abort(context, error)
        return pb.SelectSamplesResponse(batch=batch_to_proto(batch))

    async def GetBatch(
        self, request: pb.GetBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBatchResponse:
        if not request.batch_id:
            await abort_invalid(context, SpecError("batch_id", "required"))
        batch = self.manager.projects.get_batch(request.batch_id)
        if batch is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"batch {request.batch_id!r} not found")
        assert batch is not None
        return pb.GetBatchResponse(batch=batch_to_proto(batch))

    async def ListBatches(
        self, request: pb.ListBatchesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBatchesResponse:
        project = await self._project(request.project_id, context)
        batches = self.manager.projects.list_batches(project.id)
        return pb.ListBatchesResponse(batches=[batch_to_proto(b) for b in batches])

    async def RecordFeedback(
        self, request: pb.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordFeedbackResponse:
        for name in ("batch_id", "sample_id", "label"):
            if not getattr(request, name):
                await abort_invalid(context, SpecError(name, "required"))
        batch = self.manager.projects.get_batch(request.batch_id)
        if batch is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"batch {request.batch_id!r} not found")
        assert batch is not None
        if request.sample_id not in {c.sample_id for c in batch.candidates}:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"sample {request.sample_id!r} is not a candidate of batch {batch.id}; "
                f"`matrec-ctl active-learning status {batch.id}` lists its samples",
            )
        project = await self._project(batch.project_id, context)
        try:
            self.manager.check_label(project, request.label, request.add_class)
            candidate, changed, state = self.manager.projects.record_feedback(
                request.batch_id,
                request.sample_id,
                request.label,
                request.overwrite,
                caller(context).name,
            )
        except ProjectError as error:
            await _abort(context, error)
        except FeedbackError as error:
            code = (
                grpc.StatusCode.NOT_FOUND
                if error.code == "not_found"
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await context.abort(code, str(error))
        return pb.RecordFeedbackResponse(
            candidate=candidate_to_proto(candidate),
            changed=changed,
            batch_state=BATCH_STATE_TO_PB[state],
        )

    async def CheckTriggers(
        self, request: pb.CheckTriggersRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckTriggersResponse:
        project = await self._project(request.project_id, context)
        self.manager.settle(project)
        fired = self.manager.check_triggers(project, caller(context).name)
        try:
            if self.manager.retrain_if_automatic(project) is not None:
                self.scheduler.wake()
        except ProjectError as error:
            log.warning("project %s: automatic retraining not started: %s", project.id, error)
        # Re-read: a trigger that started a retraining is in state retraining now.
        fired = [self.manager.projects.get_trigger(t.id) or t for t in fired]
        return pb.CheckTriggersResponse(fired=[trigger_to_proto(t) for t in fired])

    async def ListTriggers(
        self, request: pb.ListTriggersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTriggersResponse:
        project = await self._project(request.project_id, context)
        triggers = self.manager.projects.triggers(project.id)
        return pb.ListTriggersResponse(triggers=[trigger_to_proto(t) for t in triggers])

    async def Retrain(
        self, request: pb.RetrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetrainResponse:
        project = await self._project(request.project_id, context)
        try:
            job_id, version = self.manager.retrain(project, request.trigger_id)
        except ProjectError as error:
            await _abort(context, error)
        self.scheduler.wake()
        return pb.RetrainResponse(job_id=job_id, version=version)


def _check_paths(dataset_path: str, pool_path: str) -> None:
    if not Path(dataset_path).expanduser().is_dir():
        raise SpecError("dataset_path", f"{dataset_path!r} is not a directory")
    if not Path(pool_path).expanduser().exists():
        raise SpecError("pool_path", f"{pool_path!r} does not exist (a folder or a manifest file)")
