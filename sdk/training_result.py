"""`TrainingResult`: what one training of the unified API (EnhancedTrainingAPI) returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matrec.sdk.evaluation import Evaluation
from matrec.sdk.hpo import HPOResult


@dataclass(frozen=True)
class TrainingResult:
    """A finished training of the unified API.

    `job_id`, `model_path`, `val_accuracy` and `evaluation` are the final fine-tune's;
    `best_params` the hyperparameters the study chose (None without a study), with
    `hpo_study_id` and `hpo_best_value` (the best trial's objective, validation accuracy);
    `report_path` the HTML report of the final job (`report_json_path` its JSON document,
    `study_report_path` the study's HTML report); `pretrained_path` the weights it started from
    (None: from scratch); `workers_per_host` its ranks and `device` cpu/cuda; `degraded` the
    fallbacks taken, one sentence each; `config` the final job's finetune config; `seconds` the
    whole call's duration. `hpo` holds the study's trials.
    """

    job_id: str
    model_path: str
    val_accuracy: float
    evaluation: Evaluation
    model_type: str
    best_params: dict[str, Any] | None
    hpo_study_id: str | None
    hpo_best_value: float | None
    report_path: str | None
    report_json_path: str | None
    study_report_path: str | None
    pretrained_path: str | None
    workers_per_host: int
    device: str
    degraded: list[str]
    config: dict[str, Any]
    seconds: float
    hpo: HPOResult | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the evaluation as its dict, without the study's trials)."""
        return {
            "job_id": self.job_id,
            "model_path": self.model_path,
            "val_accuracy": self.val_accuracy,
            "macro_f1": self.evaluation.macro_f1,
            "model_type": self.model_type,
            "best_params": self.best_params,
            "hpo_study_id": self.hpo_study_id,
            "hpo_best_value": self.hpo_best_value,
            "report_path": self.report_path,
            "report_json_path": self.report_json_path,
            "study_report_path": self.study_report_path,
            "pretrained_path": self.pretrained_path,
            "workers_per_host": self.workers_per_host,
            "device": self.device,
            "degraded": list(self.degraded),
            "config": dict(self.config),
            "seconds": self.seconds,
            "evaluation": self.evaluation.to_dict(),
        }

    def summary(self) -> str:
        """A few lines for a terminal."""
        start = f"from {self.pretrained_path}" if self.pretrained_path else "from scratch"
        lines = [
            f"job              {self.job_id}",
            f"val accuracy     {self.val_accuracy:.4f} (macro-F1 {self.evaluation.macro_f1:.4f})",
            f"model            {self.model_path}",
            f"model type       {self.model_type}, {self.workers_per_host} worker(s) on "
            f"{self.device}, {start}",
        ]
        if self.best_params is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.best_params.items()))
            lines.append(f"best params      {params} (study {self.hpo_study_id})")
        lines.append(f"report           {self.report_path or '-'}")
        if self.study_report_path:
            lines.append(f"study report     {self.study_report_path}")
        for note in self.degraded:
            lines.append(f"degraded         {note}")
        lines.append(f"took             {self.seconds:.1f} s")
        return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
