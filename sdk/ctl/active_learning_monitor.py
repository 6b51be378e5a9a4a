"""What `matrec-ctl active-learning status` and `matrec-ctl monitor` fetch before they render
(`active_learning_view` renders): one check of the projects' triggers, a project's scoring jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import Job, LearningProject, ModelVersion, RetrainingTrigger


@dataclass(frozen=True)
class ProjectState:
    project: LearningProject
    triggers: list[RetrainingTrigger]

    @property
    def retraining(self) -> list[ModelVersion]:
        """Versions after the first: the retraining jobs."""
        return [v for v in self.project.versions if v.version > 1]


@dataclass(frozen=True)
class MonitorCheck:
    """One evaluation of the triggers of every watched project."""

    checked_at: datetime
    projects: list[ProjectState]
    fired: list[RetrainingTrigger]


def check_projects(client: Client, project_ids: Sequence[str]) -> MonitorCheck:
    """Evaluate the triggers of `project_ids` (every project when empty) and read their state."""
    ids = list(project_ids) or [p.id for p in client.list_learning_projects()]
    fired: list[RetrainingTrigger] = []
    states = []
    for project_id in ids:
        fired += client.check_triggers(project_id)
        states.append(
            ProjectState(client.get_learning_project(project_id), client.list_triggers(project_id))
        )
    return MonitorCheck(datetime.now(UTC), states, fired)


def scoring_jobs(client: Client, project: LearningProject) -> dict[str, Job | None]:
    """The project's pool and reference scoring jobs by id; None for one that is gone."""
    from matrec.sdk.errors import NotFoundError

    jobs: dict[str, Job | None] = {}
    for job_id in (project.pool_scoring_job_id, project.reference_scoring_job_id):
        if job_id and job_id not in jobs:
            try:
                jobs[job_id] = client.get_job(job_id)
            except NotFoundError:
                jobs[job_id] = None
    return jobs
