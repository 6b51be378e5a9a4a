"""The jobs an active-learning project runs: scorings of its pool and of its labelled data (the
drift reference), and retraining fine-tunes from its latest model with every label so far.
Each spec goes through parse_job_spec, as a submitted job's does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matrec.common.specs import parse_job_spec
from matrec.coordinator.active_learning.store import Label, ProjectRecord

PROJECT_LABEL, ROLE_LABEL = "al-project", "al-role"


def _stored(raw: dict[str, Any]) -> dict[str, Any]:
    spec, config = parse_job_spec(raw)
    stored = spec.model_dump()
    stored["config"] = config.model_dump()
    return stored


def reference_path(dataset_path: str) -> Path:
    """The labelled images the drift reference is scored on: the held-out val split when the
    dataset has one (outputs on training images are over-confident), else train, else the
    dataset folder."""
    root = Path(dataset_path).expanduser()
    for split in ("val", "train"):
        if (root / split).is_dir():
            return root / split
    return root


def scoring_spec(
    project: ProjectRecord, model_path: str, role: str, version: int, model_job: dict[str, Any]
) -> dict[str, Any]:
    """A `score` job of the project's pool (role pool) or of its labelled data (reference)."""
    pool = (
        project.spec.pool_path if role == "pool" else str(reference_path(project.spec.dataset_path))
    )
    return _stored(
        {
            "name": f"{project.name}-score-{role}-v{version}",
            "kind": "score",
            "config": {
                "model_path": model_path,
                "pool_path": pool,
                "mc_dropout_passes": project.spec.mc_dropout_passes,
                "device": model_job.get("config", {}).get("device", "auto"),
            },
            "resources": model_job.get("resources") or {},
            "labels": {PROJECT_LABEL: project.id, ROLE_LABEL: role},
        }
    )


def retraining_spec(
    project: ProjectRecord,
    model_job: dict[str, Any],
    model_path: str,
    labels: Sequence[Label],
    version: int,
) -> dict[str, Any]:
    """A finetune job like the model job, on the project's dataset plus its labelled pool
    images, starting from `model_path`, with the project's `retrain` overrides. The labels
    travel as a manifest in the config (`feedback`): the agent finds the images in its own copy
    of the pool and builds the training view on its own disk; the coordinator builds nothing."""
    config = dict(model_job.get("config") or {})
    config.update(project.spec.retrain)
    config.update(
        {
            "dataset_path": project.spec.dataset_path,
            "pretrained_path": model_path,
            "feedback": {
                "pool_path": project.spec.pool_path,
                "samples": [{"sample_id": x.sample_id, "label": x.label} for x in labels],
            },
        }
    )
    if not labels:
        config.pop("feedback")
    config.pop("pretrained_weights", None)
    return _stored(
        {
            "name": f"{project.name}-retrain-v{version}",
            "kind": "finetune",
            "config": config,
            "resources": model_job.get("resources") or {},
            "max_attempts": model_job.get("max_attempts", 3),
            "labels": {PROJECT_LABEL: project.id, ROLE_LABEL: "retrain"},
        }
    )
