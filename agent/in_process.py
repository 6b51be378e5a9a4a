"""Training in the caller's own process: the agent package's one public entry point for code
outside it (`matrec.sdk.transfer_learn` with no coordinator configured).

Everything else in `matrec.agent` is the daemon and its workers, reached over gRPC. This module
imports torch (through the training engine), so import it lazily, only when training here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matrec.agent.path_policy import PathPolicy
from matrec.agent.training.finetune import TrainingPreempted, run_finetune
from matrec.agent.training.retraining_view import training_view
from matrec.common.specs import FinetuneConfig

__all__ = ["TrainingPreempted", "finetune_in_process"]

MetricsCallback = Callable[[int, dict[str, float]], None]
LogCallback = Callable[[str], None]


class _CallbackReporter:
    """The engine's Reporter as two callbacks (checkpoints stay in artifact_dir)."""

    def __init__(self, on_metrics: MetricsCallback, on_log: LogCallback) -> None:
        self._on_metrics = on_metrics
        self._on_log = on_log

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._on_metrics(step, values)

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        pass

    def log(self, text: str) -> None:
        self._on_log(text)


def finetune_in_process(
    config: FinetuneConfig,
    artifact_dir: Path,
    *,
    on_metrics: MetricsCallback,
    on_log: LogCallback,
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    """Run one finetune here, as an agent's worker would; return its result dict.

    Checkpoints and model.pt go under `artifact_dir` (a checkpoint there is resumed). Raises
    TrainingPreempted, after checkpointing, once `should_stop()` is true; ValueError,
    RuntimeError or OSError when training fails.
    """
    reporter = _CallbackReporter(on_metrics, on_log)
    # Labelled pool images (config.feedback) join the dataset in a view beside the artifacts.
    config = training_view(config, artifact_dir / "retraining-view", PathPolicy())
    return run_finetune(config, artifact_dir, reporter, should_stop=should_stop).to_dict()
