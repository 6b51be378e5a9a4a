"""matrec SDK: submit, watch and inspect training jobs on a matrec coordinator.

>>> from matrec.sdk import Client
>>> with Client() as client:
...     job = client.submit_job({"name": "wood", "config": {"dataset_path": "/data/wood"}})
...     print(client.wait(job.id).result["val_accuracy"])

>>> from matrec.sdk import transfer_learn    # the seed's call: on a cluster, or in-process
>>> transfer_learn("/data/wood", "/models/textures.pt", model_type="hybrid").evaluation.macro_f1

>>> from matrec.sdk import optimize_hyperparameters   # the seed's call: a study of finetune trials
>>> optimize_hyperparameters("/data/wood", max_trials=20, pruner="asha").best_params

>>> from matrec.sdk import ActiveLearner   # the seed's active learning: select, label, retrain
>>> ActiveLearner(storage_dir="/data/al", dataset_path="/data/wood", pool_path="/data/new")

Names are loaded on first use, so that importing a submodule (the CLI does) does not pull in
grpc and protobuf before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matrec.sdk.active_learning import ActiveLearner, RetrainResult, retrain_from_feedback
    from matrec.sdk.client import Client
    from matrec.sdk.config import ConfigError, MatrecConfig, load_config
    from matrec.sdk.errors import (
        CoordinatorUnavailableError,
        InvalidSpecError,
        JobFailedError,
        JobNotFoundError,
        JobStateError,
        MatrecError,
        ProjectNotFoundError,
        StudyNotFoundError,
    )
    from matrec.sdk.evaluation import ClassMetrics, Evaluation
    from matrec.sdk.hpo import HPOResult, StudyFailedError, optimize_hyperparameters
    from matrec.sdk.labelling_files import ImportResult, export_batch, import_labels
    from matrec.sdk.training_api import (
        EnhancedTrainingAPI,
        TrainingResult,
        train_with_all_improvements,
    )
    from matrec.sdk.transfer import TransferResult, transfer_learn
    from matrec.sdk.types import (
        Agent,
        Candidate,
        GpuInfo,
        HistoryEntry,
        Job,
        JobEvent,
        JobSpec,
        JobUpdate,
        LabellingBatch,
        LearningProject,
        LogLine,
        LogsEvent,
        Metric,
        MetricsEvent,
        ModelVersion,
        Resources,
        RetrainingTrigger,
        Study,
        Task,
        Trial,
        WatchEvent,
    )

__all__ = [
    "ActiveLearner",
    "Agent",
    "Candidate",
    "ClassMetrics",
    "Client",
    "ConfigError",
    "CoordinatorUnavailableError",
    "EnhancedTrainingAPI",
    "Evaluation",
    "GpuInfo",
    "HPOResult",
    "HistoryEntry",
    "ImportResult",
    "InvalidSpecError",
    "Job",
    "JobEvent",
    "JobFailedError",
    "JobNotFoundError",
    "JobSpec",
    "JobStateError",
    "JobUpdate",
    "LabellingBatch",
    "LearningProject",
    "LogLine",
    "LogsEvent",
    "MatrecConfig",
    "MatrecError",
    "Metric",
    "MetricsEvent",
    "ModelVersion",
    "ProjectNotFoundError",
    "Resources",
    "RetrainResult",
    "RetrainingTrigger",
    "Study",
    "StudyFailedError",
    "StudyNotFoundError",
    "Task",
    "TrainingResult",
    "TransferResult",
    "Trial",
    "WatchEvent",
    "export_batch",
    "import_labels",
    "load_config",
    "optimize_hyperparameters",
    "retrain_from_feedback",
    "train_with_all_improvements",
    "transfer_learn",
]

# Cheapest first: types, errors and evaluation need neither grpc nor protobuf; transfer needs
# pydantic (grpc only once it submits a job).
_MODULES = (
    "matrec.sdk.types",
    "matrec.sdk.config",
    "matrec.sdk.errors",
    "matrec.sdk.evaluation",
    "matrec.sdk.transfer",
    "matrec.sdk.hpo",
    "matrec.sdk.client",
    "matrec.sdk.active_learning",
    "matrec.sdk.labelling_files",
    "matrec.sdk.training_api",
)


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module_name in _MODULES:
            module = importlib.import_module(module_name)
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
