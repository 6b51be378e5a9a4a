"""Conversion between protobuf messages of matrec.v1 and the SDK's plain types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from matrec.common.wire import study_spec_to_dict
from matrec.sdk.errors import InvalidSpecError
from matrec.sdk.types import (
    JOB_STATES,
    Agent,
    ApiToken,
    Artifact,
    AuditEntry,
    Candidate,
    ClusterSnapshot,
    GpuInfo,
    HistoryEntry,
    IntermediateValue,
    Job,
    JobEvent,
    JobSpec,
    JobUpdate,
    LabellingBatch,
    LearningProject,
    LogLine,
    LogsEvent,
    Metric,
    MetricsEvent,
    ModelVersion,
    Resources,
    ResourceUsage,
    RetrainingTrigger,
    Study,
    Task,
    TokenLimits,
    Trial,
    WatchEvent,
)
from matrec.v1 import active_learning_pb2, auth_pb2, common_pb2, jobs_pb2, studies_pb2


def _state_name(enum: EnumTypeWrapper, prefix: str, value: int) -> str:
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:  # a state added to the protocol after this SDK was built
        return f"unknown({value})"


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def resources_from_proto(msg: common_pb2.Resources) -> Resources:
    return Resources(
        gpus=msg.gpus,
        cpus=msg.cpus,
        memory_bytes=msg.memory_bytes,
        gpu_memory_bytes=msg.gpu_memory_bytes,
    )


def task_from_proto(msg: jobs_pb2.Task) -> Task:
    return Task(
        id=msg.id,
        job_id=msg.job_id,
        index=msg.index,
        state=_state_name(common_pb2.TaskState, "TASK_STATE_", msg.state),
        attempt=msg.attempt,
        max_attempts=msg.max_attempts,
        agent_id=msg.agent_id,
        error=msg.error,
        lease_expires_at=_time(msg, "lease_expires_at"),
        artifact_dir=msg.artifact_dir,
        checkpoint_path=msg.checkpoint_path,
    )


def job_event_from_proto(msg: jobs_pb2.JobEvent) -> JobEvent:
    return JobEvent(
        seq=msg.seq,
        time=_time(msg, "time"),
        task_id=msg.task_id,
        attempt=msg.attempt,
        kind=msg.kind,
        message=msg.message,
    )


def job_from_proto(msg: jobs_pb2.Job, history: list[jobs_pb2.JobEvent] | None = None) -> Job:
    spec = msg.spec
    return Job(
        id=msg.id,
        spec=JobSpec(
            name=spec.name,
            kind=spec.kind,
            config=struct_to_dict(spec.config),
            resources=resources_from_proto(spec.resources),
            max_attempts=spec.max_attempts,
            labels=dict(spec.labels),
        ),
        state=_state_name(common_pb2.JobState, "JOB_STATE_", msg.state),
        created_at=_time(msg, "created_at"),
        started_at=_time(msg, "started_at"),
        finished_at=_time(msg, "finished_at"),
        error=msg.error,
        tasks=[task_from_proto(task) for task in msg.tasks],
        result=struct_to_dict(msg.result),
        cancel_requested=msg.cancel_requested,
        history=[job_event_from_proto(event) for event in history or ()],
        owner=msg.owner,
        cancelled_by=msg.cancelled_by,
    )


def metric_from_proto(msg: common_pb2.Metric) -> Metric:
    return Metric(
        task_id=msg.task_id,
        attempt=msg.attempt,
        step=msg.step,
        key=msg.key,
        value=msg.value,
        time=_time(msg, "time"),
    )


def log_line_from_proto(msg: common_pb2.LogLine) -> LogLine:
    return LogLine(
        task_id=msg.task_id,
        attempt=msg.attempt,
        seq=msg.seq,
        time=_time(msg, "time"),
        text=msg.text,
    )


def agent_from_proto(msg: jobs_pb2.Agent) -> Agent:
    return Agent(
        id=msg.id,
        name=msg.name,
        hostname=msg.hostname,
        state=_state_name(jobs_pb2.AgentState, "AGENT_STATE_", msg.state),
        total=resources_from_proto(msg.total),
        free=resources_from_proto(msg.free),
        gpus=[
            GpuInfo(index=gpu.index, name=gpu.name, memory_bytes=gpu.memory_bytes, uuid=gpu.uuid)
            for gpu in msg.gpus
        ],
        last_seen=_time(msg, "last_seen"),
        running_task_ids=list(msg.running_task_ids),
        version=msg.version,
        usage=(
            ResourceUsage(
                cpu_percent=msg.usage.cpu_percent,
                memory_used_bytes=msg.usage.memory_used_bytes,
                gpu_utilization=list(msg.usage.gpu_utilization),
                gpu_memory_used_bytes=list(msg.usage.gpu_memory_used_bytes),
            )
            if msg.HasField("usage")
            else None
        ),
        allow_scripts=msg.allow_scripts,
    )


def cluster_snapshot_from_proto(msg: jobs_pb2.ClusterSnapshot) -> ClusterSnapshot:
    return ClusterSnapshot(
        time=_time(msg, "time"),
        agents=[agent_from_proto(agent) for agent in msg.agents],
        active_jobs=[job_from_proto(job) for job in msg.active_jobs],
        queue_depth=msg.queue_depth,
        jobs_by_state=dict(msg.jobs_by_state),
        metric_points_per_second=msg.metric_points_per_second,
    )


def watch_event_from_proto(msg: jobs_pb2.WatchJobResponse) -> WatchEvent | None:
    """The typed event of one WatchJob message; None for an event kind this SDK does not know."""
    which = msg.WhichOneof("event")
    if which == "job":
        return JobUpdate(job_from_proto(msg.job))
    if which == "history":
        return HistoryEntry(job_event_from_proto(msg.history))
    if which == "metrics":
        return MetricsEvent([metric_from_proto(m) for m in msg.metrics.metrics])
    if which == "logs":
        return LogsEvent([log_line_from_proto(line) for line in msg.logs.lines])
    return None


def job_state_to_proto(state: str) -> common_pb2.JobState:
    """Map "running" to JOB_STATE_RUNNING; raises InvalidSpecError for an unknown state."""
    if state.lower() not in JOB_STATES:
        raise InvalidSpecError(
            "states", f"unknown job state {state!r}; choose from {', '.join(JOB_STATES)}"
        )
    return common_pb2.JobState.Value(f"JOB_STATE_{state.upper()}")


def study_from_proto(msg: studies_pb2.Study) -> Study:
    spec = study_spec_to_dict(msg.spec)
    int_params = {name for name, p in spec["search_space"].items() if p.get("type") == "int"}
    return Study(
        id=msg.id,
        name=msg.spec.name,
        state=_state_name(studies_pb2.StudyState, "STUDY_STATE_", msg.state),
        spec=spec,
        created_at=_time(msg, "created_at"),
        finished_at=_time(msg, "finished_at"),
        error=msg.error,
        trials=[trial_from_proto(t, int_params) for t in msg.trials],
        best_trial_number=msg.best_trial if msg.HasField("best_trial") else None,
        owner=msg.owner,
        cancelled_by=msg.cancelled_by,
    )


def trial_from_proto(msg: studies_pb2.Trial, int_params: set[str]) -> Trial:
    params = struct_to_dict(msg.params)
    for name in int_params & params.keys():
        params[name] = int(params[name])
    pruned = msg.state == studies_pb2.TRIAL_STATE_PRUNED
    return Trial(
        number=msg.number,
        job_id=msg.job_id,
        params=params,
        state=_state_name(studies_pb2.TrialState, "TRIAL_STATE_", msg.state),
        objective_value=msg.objective_value if msg.HasField("objective_value") else None,
        pruned_rung=msg.pruned_rung if pruned else None,
        pruned_resource=msg.pruned_resource if pruned else None,
        error=msg.error,
        intermediate=[
            IntermediateValue(resource=v.resource, step=v.step, value=v.value)
            for v in msg.intermediate
        ],
        job_state=_state_name(common_pb2.JobState, "JOB_STATE_", msg.job_state),
        created_at=_time(msg, "created_at"),
        finished_at=_time(msg, "finished_at"),
    )


def artifact_from_proto(msg: jobs_pb2.Artifact) -> Artifact:
    return Artifact(
        task_id=msg.task_id,
        kind=msg.kind,
        uri=msg.uri,
        size_bytes=msg.size_bytes if msg.size_bytes >= 0 else None,
        created_at=_time(msg, "created_at"),
        sha256=msg.sha256,
    )


def token_from_proto(msg: auth_pb2.Token) -> ApiToken:
    return ApiToken(
        id=msg.id,
        name=msg.name,
        role=msg.role,
        created_at=_time(msg, "created_at"),
        expires_at=_time(msg, "expires_at"),
        revoked_at=_time(msg, "revoked_at"),
        permissions=tuple(msg.permissions),
        created_by=msg.created_by,
        revoked_by=msg.revoked_by,
        limits=TokenLimits(
            msg.limits.max_running_tasks, msg.limits.max_gpus, msg.limits.max_queued_jobs
        ),
    )


def audit_entry_from_proto(msg: auth_pb2.AuditEntry) -> AuditEntry:
    return AuditEntry(
        id=msg.id,
        time=_time(msg, "time"),
        who=msg.who,
        token_id=msg.token_id,
        method=msg.method,
        targets=dict(msg.targets),
        peer=msg.peer,
        outcome=msg.outcome,
        reason=msg.reason,
    )


def candidate_from_proto(msg: active_learning_pb2.Candidate) -> Candidate:
    return Candidate(
        sample_id=msg.sample_id,
        sample_uri=msg.sample_uri,
        score=msg.score,
        scores=dict(msg.scores),
        predicted_class=msg.predicted_class,
        label=msg.label or None,
        labelled_at=_time(msg, "labelled_at"),
        labelled_by=msg.labelled_by,
    )


def batch_from_proto(msg: active_learning_pb2.Batch) -> LabellingBatch:
    return LabellingBatch(
        id=msg.id,
        project_id=msg.project_id,
        strategy=msg.strategy,
        state=_state_name(active_learning_pb2.BatchState, "BATCH_STATE_", msg.state),
        scoring_job_id=msg.scoring_job_id,
        created_at=_time(msg, "created_at"),
        closed_at=_time(msg, "closed_at"),
        candidates=[candidate_from_proto(c) for c in msg.candidates],
        labelled=msg.labelled,
        size=msg.size,
        created_by=msg.created_by,
    )


def trigger_from_proto(msg: active_learning_pb2.Trigger) -> RetrainingTrigger:
    return RetrainingTrigger(
        id=msg.id,
        project_id=msg.project_id,
        kind=msg.kind,
        state=msg.state,
        fired_at=_time(msg, "fired_at"),
        details=struct_to_dict(msg.details),
        job_id=msg.job_id,
        fired_by=msg.fired_by,
    )


def model_version_from_proto(msg: active_learning_pb2.ModelVersion) -> ModelVersion:
    return ModelVersion(
        version=msg.version,
        job_id=msg.job_id,
        val_accuracy=msg.val_accuracy if msg.HasField("val_accuracy") else None,
        trigger_id=msg.trigger_id,
        created_at=_time(msg, "created_at"),
        feedback_samples=msg.feedback_samples,
        state=msg.state,
    )


def project_from_proto(msg: active_learning_pb2.Project) -> LearningProject:
    return LearningProject(
        id=msg.id,
        spec=struct_to_dict(msg.spec),
        created_at=_time(msg, "created_at"),
        current_version=msg.current_version,
        versions=[model_version_from_proto(v) for v in msg.versions],
        classes=list(msg.classes),
        pending_feedback=msg.pending_feedback,
        total_feedback=msg.total_feedback,
        pool_scoring_job_id=msg.pool_scoring_job_id,
        reference_scoring_job_id=msg.reference_scoring_job_id,
        last_trained_at=_time(msg, "last_trained_at"),
        owner=msg.owner,
    )
