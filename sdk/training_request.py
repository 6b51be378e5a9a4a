"""A training as the command lines ask for it: `matrec-ctl train` (and `python -m
matrec.sdk.training_api`, the same command) builds a `TrainingRequest` for `run_training`.

Kept apart from the API so that the command line loads grpc only once it trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matrec.sdk.training_progress import TrainingProgress
    from matrec.sdk.training_result import TrainingResult

DEFAULT_MAX_TRIALS = 8


@dataclass(frozen=True)
class TrainingRequest:
    """A training as the command lines ask for it (`python -m matrec.sdk.training_api` and
    `matrec-ctl train` build one from their flags); None means "not given": the configuration's
    value (`matrec.sdk.config`), else train_model's default. `settings` are ``KEY=VALUE`` items
    for any other finetune config field (VALUE as JSON, else a string)."""

    dataset: str
    model_type: str = "hybrid"
    use_distributed: bool | None = None
    optimize_hyperparams: bool | None = None
    use_transfer_learning: bool | None = None
    num_workers: int | None = None
    epochs: int = 10
    max_trials: int = DEFAULT_MAX_TRIALS
    hpo_epochs: int | None = None
    model: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    pretrained_path: str | None = None
    base_dir: str | None = None
    coordinator: str | None = None
    visualization_level: str | None = None
    device: str | None = None
    settings: tuple[str, ...] = ()

    def finetune_config(self) -> dict[str, Any]:
        """The finetune config fields this request fixes: `settings`, then model, image_size
        and batch_size. Raises ValueError naming a ``--set`` item that is not KEY=VALUE."""
        finetune: dict[str, Any] = {}
        for item in self.settings:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            try:
                finetune[key] = json.loads(raw)
            except ValueError:
                finetune[key] = raw
        for key, value in (
            ("model", self.model),
            ("image_size", self.image_size),
            ("batch_size", self.batch_size),
        ):
            if value is not None:
                finetune[key] = value
        return finetune


def run_training(
    request: TrainingRequest, progress: TrainingProgress | None = None
) -> TrainingResult:
    """Train as `request` asks, with an EnhancedTrainingAPI opened (and closed) for it;
    `progress` as EnhancedTrainingAPI's."""
    from matrec.sdk.training_api import EnhancedTrainingAPI

    finetune = request.finetune_config()
    with EnhancedTrainingAPI(
        base_dir=request.base_dir,
        use_distributed=request.use_distributed,
        enable_transfer_learning=request.use_transfer_learning,
        enable_hyperparameter_optimization=request.optimize_hyperparams,
        visualization_level=request.visualization_level,
        num_workers=request.num_workers,
        coordinator=request.coordinator,
        device=request.device,
        progress=progress,
    ) as api:
        return api.train_model(
            request.dataset,
            request.model_type,
            request.epochs,
            pretrained_path=request.pretrained_path,
            max_trials=request.max_trials,
            hpo_epochs=request.hpo_epochs,
            **finetune,
        )
