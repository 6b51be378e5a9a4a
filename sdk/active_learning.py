"""`ActiveLearner`: the seed's active-learning interface, on a cluster or an embedded one.

>>> from matrec.sdk import ActiveLearner
>>> with ActiveLearner(storage_dir="~/.matrec/al", dataset_path="/data/materials",
...                    pool_path="/data/incoming", feedback_threshold=20) as learner:
...     batch = learner.select_samples_for_labeling(10)
...     for candidate in batch.candidates:
...         learner.record_feedback(candidate.sample_id, "wood", batch.id)
...     for trigger in learner.check_retraining_triggers():
...         result = learner.retrain_model(trigger_id=trigger.id)
...         print(result.version, result.val_accuracy)

With a coordinator (the `coordinator` argument, else $MATREC_COORDINATOR) the learner works on
that cluster's project; without one it starts an embedded coordinator with local agents under
`storage_dir` (the embedded default), which runs only while the learner is open.

A learner works on one project: `project_id` names an existing one; otherwise the id remembered
in storage_dir/project.json is reused, and failing that a new project is created from
`dataset_path`, `pool_path` and `model_job_id` (a succeeded finetune job). Without a model job,
one is trained first on `dataset_path` (`finetune` holds its config fields).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from matrec.sdk.errors import JobFailedError
from matrec.sdk.session import Session, open_session
from matrec.sdk.types import Candidate, LabellingBatch, LearningProject, RetrainingTrigger

if TYPE_CHECKING:
    from matrec.sdk.client import Client

PROJECT_FILE = "project.json"
DEFAULT_STORAGE_DIR = "~/.matrec/active-learning"


@dataclass(frozen=True)
class RetrainResult:
    """A finished retraining: the model version it recorded and its validation accuracy."""

    job_id: str
    version: int
    val_accuracy: float | None
    model_path: str
    trigger_id: str


class ActiveLearner:
    def __init__(
        self,
        storage_dir: str | Path = DEFAULT_STORAGE_DIR,
        *,
        project_id: str | None = None,
        dataset_path: str | Path | None = None,
        pool_path: str | Path | None = None,
        model_job_id: str | None = None,
        strategy: str = "entropy",
        feedback_threshold: int = 50,
        max_age_seconds: float = 0.0,
        uncertainty_threshold: float = 0.0,
        drift: bool = True,
        auto_retrain: bool = False,
        mc_dropout_passes: int = 0,
        finetune: Mapping[str, Any] | None = None,
        retrain: Mapping[str, Any] | None = None,
        coordinator: str | None = None,
        agents: int = 1,
        timeout: float | None = None,
    ) -> None:
        self.storage_dir = Path(storage_dir).expanduser()
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._session: Session | None = open_session(
            coordinator, self.storage_dir / "cluster", agents=agents
        )
        self.client = self._session.client
        try:
            self.project_id = project_id or self._remembered_project() or ""
            if not self.project_id:
                if dataset_path is None or pool_path is None:
                    raise ValueError(
                        "dataset_path and pool_path are required to start a new project "
                        f"(no project_id given and none remembered in {self.storage_dir})"
                    )
                spec = {
                    "name": self.storage_dir.name,
                    "dataset_path": str(Path(dataset_path).expanduser()),
                    "pool_path": str(Path(pool_path).expanduser()),
                    "model_job_id": model_job_id
                    or self._train_first_model(dataset_path, finetune or {}),
                    "strategy": strategy,
                    "mc_dropout_passes": mc_dropout_passes,
                    "triggers": {
                        "feedback_threshold": feedback_threshold,
                        "max_age_seconds": max_age_seconds,
                        "uncertainty_threshold": uncertainty_threshold,
                        "drift": drift,
                        "auto_retrain": auto_retrain,
                    },
                    "retrain": dict(retrain or {}),
                }
                self.project_id = self.client.create_learning_project(spec).id
                self._remember_project()
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_project(
        cls, client: Client, project_id: str, *, timeout: float | None = None
    ) -> ActiveLearner:
        """A learner for an existing project on a client its caller keeps open (and closes):
        `close` leaves the client alone, and it has no storage_dir (nothing is remembered).
        The unified API (EnhancedTrainingAPI) uses one for its active learning."""
        learner = cls.__new__(cls)
        learner.timeout = timeout
        learner.client = client
        learner.project_id = project_id
        learner._session = None
        return learner

    # Lifecycle

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> ActiveLearner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _remembered_project(self) -> str | None:
        path = self.storage_dir / PROJECT_FILE
        if not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text())["project_id"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} is not a matrec project file; remove it") from None

    def _remember_project(self) -> None:
        path = self.storage_dir / PROJECT_FILE
        path.write_text(json.dumps({"project_id": self.project_id}) + "\n")

    def _train_first_model(self, dataset_path: str | Path, finetune: Mapping[str, Any]) -> str:
        config = {"dataset_path": str(Path(dataset_path).expanduser()), **finetune}
        job = self.client.submit_job({"name": "active-learning-v1", "config": config})
        done = self.client.wait(job.id, timeout=self.timeout)
        if done.state != "succeeded":
            raise JobFailedError(done.id, done.state, done.error)
        return done.id

    # The seed's interface

    def status(self) -> LearningProject:
        return self.client.get_learning_project(self.project_id)

    def select_samples_for_labeling(
        self,
        count: int,
        strategy: str = "",
        *,
        class_balance: bool = False,
        seed: int = 0,
    ) -> LabellingBatch:
        """A new batch of `count` candidates (waits for a pool scoring still running)."""
        return select_when_scored(
            self.client,
            self.project_id,
            count,
            strategy,
            class_balance=class_balance,
            seed=seed,
            timeout=self.timeout,
        )

    def record_feedback(
        self,
        sample_id: str,
        correct_material_id: str,
        batch_id: str,
        *,
        overwrite: bool = False,
        add_class: bool = False,
    ) -> tuple[Candidate, bool]:
        """Record the correct class of a candidate; see Client.record_feedback for the rules
        (the same label twice is a no-op, a different one needs overwrite, an unknown class
        needs add_class)."""
        return self.client.record_feedback(
            batch_id, sample_id, correct_material_id, overwrite=overwrite, add_class=add_class
        )

    def check_retraining_triggers(self) -> list[RetrainingTrigger]:
        """Evaluate the triggers now; those that fired."""
        return self.client.check_triggers(self.project_id)

    def score_pool(self) -> str:
        """Score the pool again (new images arrived); waits for the job and returns its id."""
        job_id = self.client.score_pool(self.project_id)
        self.client.wait(job_id, timeout=self.timeout)
        return job_id

    def retrain_model(self, trigger_id: str | None = None, *, wait: bool = True) -> RetrainResult:
        """Retrain from the latest model with every label so far (for `trigger_id`, if given).
        With `wait`, returns once the new version is recorded with its validation accuracy."""
        job_id, version = self.client.retrain(self.project_id, trigger_id or "")
        if not wait:
            return RetrainResult(job_id, version, None, "", trigger_id or "")
        done = self.client.wait(job_id, timeout=self.timeout)
        if done.state != "succeeded":
            raise JobFailedError(done.id, done.state, done.error)
        accuracy = self._recorded_accuracy(version)
        result = done.result or {}
        return RetrainResult(
            job_id, version, accuracy, str(result.get("model_path", "")), trigger_id or ""
        )

    def _recorded_accuracy(self, version: int, timeout: float = 30.0) -> float | None:
        """The version's accuracy once the coordinator's monitor has recorded it."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((v for v in self.status().versions if v.version == version), None)
            if found is not None and found.val_accuracy is not None:
                return found.val_accuracy
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)

    def retrain_from_feedback(
        self,
        model_type: str | None = None,
        feedback_threshold: int | None = None,
        *,
        wait: bool = True,
    ) -> RetrainResult | None:
        """Retrain when at least `feedback_threshold` (default: the project's) labels wait;
        None when fewer do. `model_type`, if given, must be the project's. `wait` as in
        retrain_model."""
        project = self.status()
        if model_type is not None:
            first = self.client.get_job(project.versions[0].job_id) if project.versions else None
            actual = (first.spec.config if first else {}).get("model_type", "cnn")
            if actual != model_type:
                raise ValueError(
                    f"model_type {model_type!r}: this project's models are {actual!r}; a "
                    "different model type needs another project (another storage_dir, or a "
                    "model of that type trained with train_model)"
                )
        threshold = feedback_threshold
        if threshold is None:
            threshold = int(project.spec.get("triggers", {}).get("feedback_threshold", 50))
        if project.pending_feedback < max(1, threshold):
            return None
        return self.retrain_model(wait=wait)


def select_when_scored(
    client: Client,
    project_id: str,
    count: int,
    strategy: str = "",
    *,
    class_balance: bool = False,
    seed: int = 0,
    timeout: float | None = None,
) -> LabellingBatch:
    """Wait for the project's pool scoring if one is still running, then select a batch of
    `count` candidates (`strategy` "" is the project's). Raises JobFailedError when that
    scoring failed (a selection would use stale scores, or none) and TimeoutError after
    `timeout` seconds."""
    project = client.get_learning_project(project_id)
    if project.pool_scoring_job_id:
        scored = client.wait(project.pool_scoring_job_id, timeout=timeout)
        if scored.state != "succeeded":
            raise JobFailedError(scored.id, scored.state, scored.error)
    return client.select_samples(
        project_id, count, strategy, class_balance=class_balance, seed=seed
    )


def retrain_from_feedback(
    model_type: str = "cnn",
    feedback_threshold: int = 50,
    *,
    storage_dir: str | Path = DEFAULT_STORAGE_DIR,
    project_id: str | None = None,
    coordinator: str | None = None,
) -> RetrainResult | None:
    """The seed's call: retrain the project's model once `feedback_threshold` labels wait."""
    with ActiveLearner(storage_dir, project_id=project_id, coordinator=coordinator) as learner:
        return learner.retrain_from_feedback(model_type, feedback_threshold)
