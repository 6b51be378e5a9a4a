"""An active-learning project's spec: its data, its first model, how candidates are chosen and
when the monitor retrains. Validated the same way by the SDK (before sending) and the
coordinator (before storing)."""

from __future__ import annotations

from typing import Any, Literal

from matrec.common.active_learning.selection import STRATEGIES
from matrec.common.specs import FinetuneConfig, SpecError, spec_error
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class TriggerPolicy(BaseModel):
    """When the monitor fires a retraining trigger. A threshold of 0 turns its trigger off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feedback_threshold: int = Field(
        default=50, ge=0, description="Labels recorded since the last training."
    )
    max_age_seconds: float = Field(
        default=0.0, ge=0.0, description="Seconds since the last training (e.g. 604800: weekly)."
    )
    uncertainty_threshold: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Mean normalised entropy (entropy / log C, 0..1) of the newest pool scoring.",
    )
    drift: bool = Field(
        default=True, description="Test the newest pool scoring against the training data."
    )
    drift_alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    auto_retrain: bool = Field(
        default=False, description="Submit a retraining job as soon as a trigger fires."
    )


class ProjectSpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", max_length=200)
    dataset_path: str = Field(
        min_length=1,
        description="The labelled ImageFolder dataset (train/<class>/..., val/<class>/...) the "
        "model was trained on; retraining adds the feedback to it.",
    )
    pool_path: str = Field(min_length=1, description="Unlabelled images: a folder or manifest.")
    model_job_id: str = Field(
        min_length=1, description="The succeeded finetune job whose model starts the project."
    )
    strategy: str = Field(default="entropy", description="Default selection strategy.")
    mc_dropout_passes: int = Field(
        default=0, ge=0, le=100, description="Scoring: MC-dropout passes (bald needs >= 2)."
    )
    triggers: TriggerPolicy = Field(default_factory=TriggerPolicy)
    retrain: dict[str, Any] = Field(
        default_factory=dict,
        description="Finetune config fields that retraining jobs change (e.g. epochs); the rest "
        "comes from the model job's config.",
    )

    @model_validator(mode="after")
    def _check(self) -> ProjectSpecModel:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: unknown {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.strategy == "bald" and self.mc_dropout_passes < 2:
            raise ValueError("mc_dropout_passes: strategy bald needs at least 2 MC-dropout passes")
        unknown = set(self.retrain) - set(FinetuneConfig.model_fields)
        fixed = {"dataset_path", "pretrained_path", "pretrained_weights", "feedback"}
        fixed &= set(self.retrain)
        if unknown:
            raise ValueError(f"retrain: unknown finetune fields {', '.join(sorted(unknown))}")
        if fixed:
            raise ValueError(f"retrain: {', '.join(sorted(fixed))} are set by the project")
        return self


def parse_project_spec(raw: dict[str, Any]) -> ProjectSpecModel:
    """Validate a project spec. Raises SpecError naming the field."""
    try:
        return ProjectSpecModel.model_validate(raw)
    except ValidationError as exc:
        error = spec_error(exc, "")
        # model_validator errors carry "field: message" in the message.
        if not error.field and ": " in error.message:
            field, _, message = error.message.partition(": ")
            raise SpecError(field, message) from None
        raise error from None


ProjectTriggerKind = Literal["feedback_count", "time", "uncertainty", "drift"]
TRIGGER_KINDS: tuple[str, ...] = ("feedback_count", "time", "uncertainty", "drift")
