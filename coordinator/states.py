"""Job and task states, and how a job's state follows from its tasks' states."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"


class AgentState(StrEnum):
    CONNECTED = "connected"
    DRAINING = "draining"
    DISCONNECTED = "disconnected"


ACTIVE_TASK_STATES = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})
FINAL_TASK_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})
FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def job_state_from_tasks(task_states: Iterable[TaskState], cancel_requested: bool) -> JobState:
    """A job fails as soon as one task fails for good; it succeeds when every task has succeeded."""
    states = list(task_states)
    if any(s == TaskState.FAILED for s in states):
        return JobState.FAILED
    if states and all(s in FINAL_TASK_STATES for s in states):
        if all(s == TaskState.SUCCEEDED for s in states):
            return JobState.SUCCEEDED
        return JobState.CANCELLED
    if cancel_requested and not any(s in ACTIVE_TASK_STATES for s in states):
        return JobState.CANCELLED
    if any(s != TaskState.QUEUED for s in states):
        return JobState.RUNNING
    return JobState.QUEUED


class StudyState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrialState(StrEnum):
    RUNNING = "running"  # its job is queued or running
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STUDY_STATES = frozenset({StudyState.COMPLETED, StudyState.FAILED, StudyState.CANCELLED})
