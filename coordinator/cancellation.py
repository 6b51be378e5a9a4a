"""Cancelling a job: mark it in the store, tell the agents running its tasks, wake its watchers."""

from __future__ import annotations

from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.store import Store
from matrec.v1 import agents_pb2


def cancel_job(
    store: Store,
    sessions: AgentSessions,
    notifier: JobNotifier,
    job_id: str,
    reason: str,
    cancelled_by: str | None = None,
) -> None:
    for task in store.request_cancel(job_id, reason, cancelled_by):
        if task.agent_id:
            sessions.send(
                task.agent_id,
                agents_pb2.CoordinatorMessage(
                    cancel=agents_pb2.CancelTask(
                        task=agents_pb2.TaskRef(task_id=task.id, attempt=task.attempt),
                        reason=reason,
                    )
                ),
            )
    notifier.notify(job_id)
