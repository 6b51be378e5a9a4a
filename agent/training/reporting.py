"""How a training task tells the outside world what it is doing (metrics, checkpoints, logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Reporter(Protocol):
    """Receives a task's progress. `step` is the global optimizer step, 1-based, and continues
    across a resume; a resumed attempt may report a step again, always with the same values."""

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def checkpoint(self, path: Path, epoch: int, step: int) -> None: ...

    def log(self, text: str) -> None: ...


class NullReporter:
    """Reports nothing: the reporter of a distributed run's ranks other than rank 0."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        pass

    def log(self, text: str) -> None:
        pass
