"""What an active-learning project does, for the gRPC service and the monitor alike: create a
project, score its pool, select candidates, evaluate its retraining triggers, retrain, and
settle finished jobs into model versions. Everything is read from the database each call, so a
restarted coordinator carries on where the last one stopped."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from matrec.common.active_learning.drift import detect_drift
from matrec.common.active_learning.pool_scores import PoolScores
from matrec.common.active_learning.project import ProjectSpecModel
from matrec.common.active_learning.selection import MEASURES, select, uncertainty
from matrec.common.specs import SpecError
from matrec.coordinator.active_learning.jobs import retraining_spec, scoring_spec
from matrec.coordinator.active_learning.store import (
    TRIGGER_DONE,
    TRIGGER_FAILED,
    TRIGGER_FIRED,
    TRIGGER_RETRAINING,
    ActiveLearningStore,
    BatchRecord,
    CandidateRecord,
    ProjectRecord,
    ScoringRecord,
    TriggerRecord,
    VersionRecord,
)
from matrec.coordinator.rows import utcnow
from matrec.coordinator.states import FINAL_JOB_STATES, JobState
from matrec.coordinator.store import Store

log = logging.getLogger(__name__)

#: Rows of the reference and of the pool scoring the drift test compares, at most.
DRIFT_MAX_SAMPLES = 500


class ProjectError(Exception):
    """A request the project cannot serve. `code`: invalid, not_found or precondition."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.field = field


@dataclass(frozen=True)
class ProjectStatus:
    project: ProjectRecord
    versions: list[VersionRecord]
    classes: list[str]
    pending_feedback: int
    total_feedback: int
    pool_scoring: ScoringRecord | None
    reference_scoring: ScoringRecord | None
    last_trained_at: datetime | None

    @property
    def current(self) -> VersionRecord | None:
        return _current_version(self.versions)


def _current_version(versions: list[VersionRecord]) -> VersionRecord | None:
    done = [v for v in versions if v.job.state == JobState.SUCCEEDED]
    return done[-1] if done else None


def _snapshot_time(versions: list[VersionRecord]) -> datetime:
    """Labels after this time are in no model yet: the newest version that did not fail."""
    alive = [v for v in versions if v.job.state not in (JobState.FAILED, JobState.CANCELLED)]
    return (alive or versions)[-1].created_at


def _sample_rows(scores: PoolScores) -> np.ndarray:
    """At most DRIFT_MAX_SAMPLES rows of `scores`, the same ones on every evaluation."""
    count = len(scores.sample_ids)
    if count <= DRIFT_MAX_SAMPLES:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, DRIFT_MAX_SAMPLES, replace=False))


def _retraining(versions: list[VersionRecord]) -> bool:
    """Whether a retraining job (any version after the first) is queued or running."""
    return any(
        v.job.state is not None and v.job.state not in FINAL_JOB_STATES for v in versions[1:]
    )


def _trained_at(version: VersionRecord) -> datetime:
    return version.job.finished_at or version.created_at


class ProjectManager:
    def __init__(self, store: Store, projects: ActiveLearningStore, artifact_root: Path) -> None:
        self.store = store
        self.projects = projects
        self.artifact_root = artifact_root

    # Lookups

    def project(self, project_id: str) -> ProjectRecord:
        if not project_id:
            raise ProjectError("invalid", "required", "project_id")
        project = self.projects.get_project(project_id)
        if project is None:
            raise ProjectError(
                "not_found",
                f"project {project_id!r} not found; `matrec-ctl active-learning status` lists them",
            )
        return project

    def status(self, project: ProjectRecord) -> ProjectStatus:
        versions = self.projects.versions(project.id)
        labels = self.projects.labels(project.id)
        snapshot = _snapshot_time(versions)
        current = _current_version(versions)
        scorings = self.projects.scorings(project.id)
        return ProjectStatus(
            project=project,
            versions=versions,
            classes=self._classes(current),
            pending_feedback=sum(1 for x in labels if x.labelled_at > snapshot),
            total_feedback=len(labels),
            pool_scoring=next((s for s in reversed(scorings) if s.role == "pool"), None),
            reference_scoring=next((s for s in reversed(scorings) if s.role == "reference"), None),
            last_trained_at=_trained_at(current) if current else None,
        )

    @staticmethod
    def _classes(version: VersionRecord | None) -> list[str]:
        result = (version.job.result if version else None) or {}
        return [str(c) for c in result.get("classes") or []]

    # Create and score

    def create(
        self, spec: ProjectSpecModel, owner: str = "local", owner_token_id: str | None = None
    ) -> ProjectRecord:
        model_job = self.store.get_job(spec.model_job_id)
        if model_job is None:
            raise ProjectError("invalid", f"job {spec.model_job_id!r} not found", "model_job_id")
        if model_job.kind != "finetune" or model_job.state != JobState.SUCCEEDED:
            raise ProjectError(
                "invalid",
                f"job {spec.model_job_id} is a {model_job.state} {model_job.kind} job; a project "
                "starts from a succeeded finetune job's model",
                "model_job_id",
            )
        result = model_job.result or {}
        if not result.get("model_path"):
            raise ProjectError("invalid", "that job recorded no model", "model_job_id")
        accuracy = result.get("val_accuracy")
        project = self.projects.create_project(
            spec,
            float(accuracy) if isinstance(accuracy, int | float) else None,
            model_job.finished_at or utcnow(),
            owner,
            owner_token_id,
        )
        self._score(project, 1, str(result["model_path"]), roles=("reference", "pool"))
        return project

    def _score(
        self, project: ProjectRecord, version: int, model_path: str, roles: tuple[str, ...]
    ) -> list[str]:
        model_job = self._model_job_spec(project, version)
        return [
            self.projects.create_scoring(
                project.id,
                scoring_spec(project, model_path, role, version, model_job),
                self.artifact_root,
                role,
                version,
            )
            for role in roles
        ]

    def _model_job_spec(self, project: ProjectRecord, version: int) -> dict[str, Any]:
        versions = {v.version: v for v in self.projects.versions(project.id)}
        job_id = versions[version].job_id if version in versions else None
        job = self.store.get_job(job_id) if job_id else None
        return job.spec if job else {}

    def score_pool(self, project: ProjectRecord) -> str:
        current = _current_version(self.projects.versions(project.id))
        if current is None or not (current.job.result or {}).get("model_path"):
            raise ProjectError("precondition", "the project has no trained model to score with")
        return self._score(
            project,
            current.version,
            str(current.job.result["model_path"]),
            roles=("pool",),
        )[0]

    # Select and label

    def _scores(self, scoring: ScoringRecord | None) -> PoolScores | None:
        if scoring is None or scoring.job.state != JobState.SUCCEEDED:
            return None
        path = (scoring.job.result or {}).get("scores_path")
        if not path or not Path(path).is_file():
            log.warning("scoring job %s has no readable scores file (%s)", scoring.job_id, path)
            return None
        return PoolScores.load(Path(path))

    def newest_scores(
        self, project: ProjectRecord, role: str
    ) -> tuple[ScoringRecord, PoolScores] | None:
        for scoring in reversed(self.projects.scorings(project.id)):
            if scoring.role == role and scoring.job.state == JobState.SUCCEEDED:
                scores = self._scores(scoring)
                if scores is not None:
                    return scoring, scores
        return None

    def select(
        self,
        project: ProjectRecord,
        count: int,
        strategy: str,
        class_balance: bool,
        seed: int,
        created_by: str = "local",
    ) -> BatchRecord:
        strategy = strategy or project.spec.strategy
        if count < 1:
            raise ProjectError("invalid", f"must be at least 1 (got {count})", "count")
        newest = self.newest_scores(project, "pool")
        if newest is None:
            raise ProjectError(
                "precondition",
                "no pool scoring has finished yet; wait for the project's score job "
                "(`matrec-ctl jobs`) or run `matrec-ctl active-learning score`",
            )
        scoring, scores = newest
        proposed = self.projects.proposed_sample_ids(project.id)
        # Excluded samples also count as covered centres for the diversity strategies.
        exclude = [i for i, s in enumerate(scores.sample_ids) if s in proposed]
        left = len(scores.sample_ids) - len(exclude)
        if left == 0:
            raise ProjectError(
                "precondition",
                "every pool sample is labelled or in a batch; add images to the pool",
            )
        try:
            selection = select(
                strategy,
                min(count, left),
                scores.probabilities,
                embeddings=scores.embeddings,
                mc_probabilities=scores.mc_probabilities,
                exclude=exclude,
                class_balance=class_balance,
                seed=seed,
            )
        except ValueError as error:
            raise ProjectError("invalid", str(error), "strategy") from None
        measures = {
            m: uncertainty(scores.probabilities, m, scores.mc_probabilities)
            for m in MEASURES
            if m != "bald"
            or (scores.mc_probabilities is not None and len(scores.mc_probabilities) >= 2)
        }
        predicted = scores.probabilities.argmax(axis=1)
        candidates = [
            CandidateRecord(
                sample_id=scores.sample_ids[i],
                sample_uri=scores.paths[i],
                score=float(score),
                scores={m: float(values[i]) for m, values in measures.items()},
                predicted_class=scores.classes[int(predicted[i])],
                label=None,
                labelled_at=None,
            )
            for i, score in zip(selection.indices, selection.scores, strict=True)
        ]
        current = _current_version(self.projects.versions(project.id))
        return self.projects.create_batch(
            project.id,
            strategy,
            scoring.job_id,
            current.job_id if current else None,
            candidates,
            created_by,
        )

    def check_label(self, project: ProjectRecord, label: str, add_class: bool) -> None:
        if not label.strip() or "/" in label or label in (".", ".."):
            raise ProjectError("invalid", f"{label!r} is not a usable class name", "label")
        classes = self.status(project).classes
        if label not in classes and not add_class:
            raise ProjectError(
                "invalid",
                f"{label!r} is not one of the model's classes ({', '.join(classes)}); pass "
                "add_class to add it as a new class",
                "label",
            )

    # Triggers and retraining

    def check_triggers(
        self, project: ProjectRecord, fired_by: str | None = None
    ) -> list[TriggerRecord]:
        """Evaluate the project's triggers; store and return those that fire now (`fired_by`:
        the caller who asked, None for the monitor). Nothing fires while a retraining job is
        queued or running."""
        status = self.status(project)
        current = status.current
        if _retraining(status.versions) or current is None:
            return []
        policy = project.spec.triggers
        fired: list[TriggerRecord | None] = []
        key = f"v{current.version}"
        if policy.feedback_threshold and status.pending_feedback >= policy.feedback_threshold:
            fired.append(
                self.projects.fire_trigger(
                    project.id,
                    "feedback_count",
                    f"{key}/{status.total_feedback // policy.feedback_threshold}",
                    {
                        "pending_feedback": status.pending_feedback,
                        "threshold": policy.feedback_threshold,
                        "version": current.version,
                    },
                    fired_by=fired_by,
                )
            )
        age = (utcnow() - _trained_at(current)).total_seconds()
        if policy.max_age_seconds and age >= policy.max_age_seconds:
            fired.append(
                self.projects.fire_trigger(
                    project.id,
                    "time",
                    key,
                    {
                        "seconds_since_training": age,
                        "max_age_seconds": policy.max_age_seconds,
                        "version": current.version,
                    },
                    fired_by=fired_by,
                )
            )
        pool = self.newest_scores(project, "pool")
        if pool is not None and pool[0].version == current.version:
            scoring, scores = pool
            if policy.uncertainty_threshold:
                classes = scores.probabilities.shape[1]
                entropy = uncertainty(scores.probabilities, "entropy")
                mean = float(entropy.mean() / math.log(classes)) if classes > 1 else 0.0
                if mean >= policy.uncertainty_threshold:
                    fired.append(
                        self.projects.fire_trigger(
                            project.id,
                            "uncertainty",
                            scoring.job_id,
                            {
                                "mean_normalised_entropy": mean,
                                "threshold": policy.uncertainty_threshold,
                                "samples": len(scores.sample_ids),
                                "scoring_job_id": scoring.job_id,
                            },
                            fired_by=fired_by,
                        )
                    )
            reference = self.newest_scores(project, "reference")
            if policy.drift and reference is not None and reference[0].version == current.version:
                fired.append(
                    self._drift(
                        project, reference[1], scoring, scores, policy.drift_alpha, fired_by
                    )
                )
        return [t for t in fired if t is not None]

    def _drift(
        self,
        project: ProjectRecord,
        reference: PoolScores,
        scoring: ScoringRecord,
        scores: PoolScores,
        alpha: float,
        fired_by: str | None,
    ) -> TriggerRecord | None:
        # The kernel test's cost grows with the square of both sizes: a seeded sample of each.
        ref_rows, new_rows = _sample_rows(reference), _sample_rows(scores)
        try:
            report = detect_drift(
                reference.probabilities[ref_rows],
                scores.probabilities[new_rows],
                reference_embeddings=reference.embeddings[ref_rows],
                current_embeddings=scores.embeddings[new_rows],
                alpha=alpha,
            )
        except ValueError as error:
            log.info("project %s: no drift test on %s: %s", project.id, scoring.job_id, error)
            return None
        if not report.drifted:
            return None
        details = report.to_dict() | {"scoring_job_id": scoring.job_id}
        return self.projects.fire_trigger(
            project.id, "drift", scoring.job_id, details, fired_by=fired_by
        )

    def retrain_if_automatic(self, project: ProjectRecord) -> tuple[str, int] | None:
        """For a project with triggers.auto_retrain: retrain for its oldest trigger still
        waiting (fired by the monitor, an SDK call or `matrec-ctl monitor` alike). None when
        there is none, the project retrains by hand, or a retraining job is running."""
        if not project.spec.triggers.auto_retrain:
            return None
        waiting = [t for t in self.projects.triggers(project.id) if t.state == TRIGGER_FIRED]
        versions = self.projects.versions(project.id)
        if not waiting or _retraining(versions):
            return None
        return self.retrain(project, waiting[0].id)

    def retrain(self, project: ProjectRecord, trigger_id: str = "") -> tuple[str, int]:
        if trigger_id:
            trigger = self.projects.get_trigger(trigger_id)
            if trigger is None or trigger.project_id != project.id:
                raise ProjectError("not_found", f"trigger {trigger_id!r} not found in {project.id}")
            if trigger.state != "fired":
                raise ProjectError(
                    "precondition", f"trigger {trigger_id} is already {trigger.state}"
                )
        versions = self.projects.versions(project.id)
        if _retraining(versions):
            raise ProjectError("precondition", "a retraining job of this project is still running")
        current = _current_version(versions)
        if current is None or not (current.job.result or {}).get("model_path"):
            raise ProjectError("precondition", "the project has no trained model to start from")
        labels = self.projects.labels(project.id)
        version = versions[-1].version + 1
        model_job = self.store.get_job(current.job_id) if current.job_id else None
        try:
            spec = retraining_spec(
                project,
                model_job.spec if model_job else {},
                str(current.job.result["model_path"]),
                labels,
                version,
            )
        except SpecError as error:
            raise ProjectError("invalid", str(error), "retrain") from None
        return self.projects.create_retraining(
            project.id, spec, self.artifact_root, len(labels), trigger_id or None
        )

    def settle(self, project: ProjectRecord) -> bool:
        """Fold finished jobs in: a version's accuracy, its triggers' states, and the scorings a
        new model needs. Returns whether anything changed."""
        changed = False
        versions = self.projects.versions(project.id)
        for version in versions:
            result = version.job.result or {}
            accuracy = result.get("val_accuracy")
            if (
                version.val_accuracy is None
                and version.job.state == JobState.SUCCEEDED
                and isinstance(accuracy, int | float)
            ):
                self.projects.set_version_accuracy(project.id, version.version, float(accuracy))
                changed = True
        for trigger in self.projects.triggers(project.id):
            if trigger.state != TRIGGER_RETRAINING or not trigger.job_id:
                continue
            job = self.store.get_job(trigger.job_id)
            if job is not None and job.state in FINAL_JOB_STATES:
                state = TRIGGER_DONE if job.state == JobState.SUCCEEDED else TRIGGER_FAILED
                self.projects.set_trigger_state(trigger.id, state)
                changed = True
        current = _current_version(versions)
        if current is not None and current.version > 1:
            scored = {(s.role, s.version) for s in self.projects.scorings(project.id)}
            roles = tuple(r for r in ("reference", "pool") if (r, current.version) not in scored)
            if roles:
                self._score(
                    project, current.version, str((current.job.result or {})["model_path"]), roles
                )
                changed = True
        return changed
