"""Plain Python views of the coordinator's messages, as the SDK returns them.

States are lower-case strings: jobs are "queued", "running", "succeeded", "failed" or
"cancelled"; tasks additionally "assigned"; agents "connected", "draining" or "disconnected".
Times are timezone-aware UTC datetimes, or None when not set.

`Job.result` and `JobSpec.config` are plain dicts decoded from a protobuf Struct. A Struct has only
one number type, so every number comes back as a float (``"epochs": 5.0``); the values are left as
sent rather than guessed back into ints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_JOB_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0
    gpu_memory_bytes: int = 0  # per GPU; a job's request only


@dataclass(frozen=True)
class JobSpec:
    name: str
    kind: str
    config: dict[str, Any]
    resources: Resources
    max_attempts: int
    labels: dict[str, str]


@dataclass(frozen=True)
class Task:
    id: str
    job_id: str
    index: int
    state: str
    attempt: int
    max_attempts: int
    agent_id: str
    error: str
    lease_expires_at: datetime | None
    artifact_dir: str
    checkpoint_path: str


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's history (submitted, assigned, started, requeued, finished, ...)."""

    seq: int
    time: datetime | None
    task_id: str
    attempt: int
    kind: str
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
    state: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str
    tasks: list[Task]
    result: dict[str, Any]
    cancel_requested: bool
    #: Filled by `Client.get_job`; empty where the coordinator sends the job alone.
    history: list[JobEvent] = field(default_factory=list)
    #: Who submitted it: a token's name, `cert:CN`, `local` (no auth) or `unknown` (older jobs).
    owner: str = ""
    #: Who cancelled it ("" unless a caller did).
    cancelled_by: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    @property
    def attempts(self) -> int:
        """Attempts started so far, over all tasks."""
        return sum(task.attempt for task in self.tasks)


@dataclass(frozen=True)
class Metric:
    task_id: str
    attempt: int
    step: int
    key: str
    value: float
    time: datetime | None


@dataclass(frozen=True)
class LogLine:
    task_id: str
    attempt: int
    seq: int
    time: datetime | None
    text: str


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_bytes: int
    uuid: str


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    hostname: str
    state: str
    total: Resources
    free: Resources
    gpus: list[GpuInfo]
    last_seen: datetime | None
    running_task_ids: list[str]
    version: str
    #: From the agent's latest heartbeat; None while it is disconnected.
    usage: ResourceUsage | None = None
    #: It runs `script` tasks (started with --allow-scripts).
    allow_scripts: bool = False


@dataclass(frozen=True)
class ResourceUsage:
    cpu_percent: float
    memory_used_bytes: int
    gpu_utilization: list[float]
    gpu_memory_used_bytes: list[int]


@dataclass(frozen=True)
class ClusterSnapshot:
    """The whole cluster at one moment (`Client.watch_cluster`)."""

    time: datetime | None
    agents: list[Agent]
    active_jobs: list[Job]  # queued and running, oldest first
    queue_depth: int
    jobs_by_state: dict[str, int]
    metric_points_per_second: float


@dataclass(frozen=True)
class JobUpdate:
    """The job or one of its tasks changed state (also the first event of every watch)."""

    job: Job


@dataclass(frozen=True)
class HistoryEntry:
    event: JobEvent


@dataclass(frozen=True)
class MetricsEvent:
    metrics: list[Metric]


@dataclass(frozen=True)
class LogsEvent:
    lines: list[LogLine]


WatchEvent = JobUpdate | HistoryEntry | MetricsEvent | LogsEvent


STUDY_STATES: tuple[str, ...] = ("running", "completed", "failed", "cancelled")
TRIAL_STATES: tuple[str, ...] = ("running", "completed", "pruned", "failed", "cancelled")


@dataclass(frozen=True)
class IntermediateValue:
    """One report of a trial's objective; `resource` counts the reports (epochs, for finetune)."""

    resource: int
    step: int
    value: float


@dataclass(frozen=True)
class Trial:
    number: int
    job_id: str
    params: dict[str, Any]
    state: str
    #: Completed: the final objective; pruned: the last value before it was stopped.
    objective_value: float | None
    #: Pruned trials: the rung (ASHA) and the resource at which they were stopped.
    pruned_rung: int | None
    pruned_resource: int | None
    error: str
    intermediate: list[IntermediateValue]
    job_state: str
    created_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Study:
    """A hyperparameter study. `spec` is the validated spec (algorithm, objective, ...) as a
    dict; integer parameters of `Trial.params` are ints."""

    id: str
    name: str
    state: str
    spec: dict[str, Any]
    created_at: datetime | None
    finished_at: datetime | None
    error: str
    trials: list[Trial]
    best_trial_number: int | None
    #: Who created it (see `Job.owner`); its trials' jobs carry the same owner.
    owner: str = ""
    cancelled_by: str = ""

    @property
    def objective(self) -> str:
        return str(self.spec["objective"])

    @property
    def maximize(self) -> bool:
        return self.spec.get("direction") == "maximize"

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "failed", "cancelled")

    @property
    def best(self) -> Trial | None:
        for trial in self.trials:
            if trial.number == self.best_trial_number:
                return trial
        return None

    def ranked(self) -> list[Trial]:
        """Trials best first: those with a value by it (completed before pruned at equal
        values), then the others by number."""
        sign = -1.0 if self.maximize else 1.0

        def key(trial: Trial) -> tuple[int, float, int]:
            if trial.objective_value is None:
                return (2, 0.0, trial.number)
            return (
                0 if trial.state == "completed" else 1,
                sign * trial.objective_value,
                trial.number,
            )

        return sorted(self.trials, key=key)


@dataclass(frozen=True)
class Artifact:
    """A file a job produced: "model" or "checkpoint". `size_bytes` is None when the
    coordinator cannot see the file (no shared storage). `sha256` (hex) is the hash recorded
    when an agent uploaded it (hosts that share nothing); empty for a shared folder's files."""

    task_id: str
    kind: str
    uri: str
    size_bytes: int | None
    created_at: datetime | None
    sha256: str = ""


@dataclass(frozen=True)
class TokenLimits:
    """What one token's jobs may hold at once; 0 means no bound."""

    max_running_tasks: int = 0
    max_gpus: int = 0
    max_queued_jobs: int = 0


@dataclass(frozen=True)
class AuditEntry:
    """One state-changing call: who (a token's name, `cert:CN`, `local`, `anonymous`), the
    RPC, the ids it named or made, the caller's address, and `allowed` or `refused` (with the
    status code and message as `reason`)."""

    id: int
    time: datetime | None
    who: str
    token_id: str
    method: str
    targets: dict[str, str]
    peer: str
    outcome: str
    reason: str


@dataclass(frozen=True)
class ApiToken:
    """An API token as the coordinator lists it (never the secret itself)."""

    id: str
    name: str
    role: str
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    #: Beyond the role: `scripts`, `cancel-any`.
    permissions: tuple[str, ...] = ()
    created_by: str = ""
    revoked_by: str = ""
    limits: TokenLimits = TokenLimits()


# ---- active learning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A pool sample proposed for labelling. `scores` holds every uncertainty measure
    (least_confidence, margin, entropy, and bald with MC dropout); `label` is None until
    labelled."""

    sample_id: str
    sample_uri: str
    score: float
    scores: dict[str, float]
    predicted_class: str
    label: str | None
    labelled_at: datetime | None
    labelled_by: str = ""


@dataclass(frozen=True)
class LabellingBatch:
    """Candidates selected together. `state`: open, partially_labelled or done."""

    id: str
    project_id: str
    strategy: str
    state: str
    scoring_job_id: str
    created_at: datetime | None
    closed_at: datetime | None
    candidates: list[Candidate]
    labelled: int
    size: int
    created_by: str = ""


@dataclass(frozen=True)
class ModelVersion:
    """A model a project trained: version 1 is the model it started from. `state` is its job's
    (queued, running, succeeded, failed, cancelled); `val_accuracy` is None until it succeeds."""

    version: int
    job_id: str
    val_accuracy: float | None
    trigger_id: str
    created_at: datetime | None
    feedback_samples: int
    state: str


@dataclass(frozen=True)
class RetrainingTrigger:
    """A trigger the monitor fired. `kind`: feedback_count, time, uncertainty or drift;
    `state`: fired, retraining, done or failed; `details`: what was measured."""

    id: str
    project_id: str
    kind: str
    state: str
    fired_at: datetime | None
    details: dict[str, Any]
    job_id: str
    #: Who fired it by hand ("" when the monitor did).
    fired_by: str = ""


@dataclass(frozen=True)
class LearningProject:
    """An active-learning project: its spec (defaults filled in), model versions and labels."""

    id: str
    spec: dict[str, Any]
    created_at: datetime | None
    current_version: int
    versions: list[ModelVersion]
    classes: list[str]
    pending_feedback: int
    total_feedback: int
    pool_scoring_job_id: str
    reference_scoring_job_id: str
    last_trained_at: datetime | None
    owner: str = ""

    @property
    def current(self) -> ModelVersion | None:
        return next((v for v in self.versions if v.version == self.current_version), None)
