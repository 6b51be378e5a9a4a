"""Where `transfer_learn` sends a run's metrics while it trains: a callback, a Rich bar, or both;
and the unified API's (EnhancedTrainingAPI's) progress callback, `TrainingProgress`.

Metrics arrive as (step, values) pairs, the shape the training task reports them in: a
``train/loss`` every few steps, and at the end of each epoch a dict holding ``epoch`` (1-based,
as a float), ``val/accuracy``, ``val/loss`` and the epoch's train figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from matrec.sdk.types import Metric
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Called with (step, values) for every metrics report of the run.
ProgressCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainingUpdate:
    """One step of the unified API: `kind` "phase" (what it does now: the embedded cluster,
    the study, the training job, ...) or "fallback" (a part missing, and what it does instead:
    the sentence its result lists in `degraded`)."""

    kind: Literal["phase", "fallback"]
    text: str


#: EnhancedTrainingAPI's progress callback.
TrainingProgress = Callable[[TrainingUpdate], None]


class ProgressSink:
    """Forwards metrics to `callback` and, with `show_bar`, draws epochs done on a Rich bar.

    Use as a context manager: the bar is shown inside the block only.
    """

    def __init__(
        self,
        epochs: int,
        callback: ProgressCallback | None = None,
        *,
        show_bar: bool = False,
        console: Console | None = None,
    ) -> None:
        self.epochs = epochs
        self.callback = callback
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._loss: float | None = None
        self._val_accuracy: float | None = None
        if show_bar:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epochs"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )

    @property
    def active(self) -> bool:
        """Whether anything listens (a callback or a bar)."""
        return self.callback is not None or self._bar is not None

    def __enter__(self) -> ProgressSink:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("training", total=self.epochs, status="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, step: int, values: dict[str, float]) -> None:
        if self.callback is not None:
            self.callback(step, dict(values))
        if self._bar is None or self._task is None:
            return
        if "train/loss" in values:
            self._loss = values["train/loss"]
        if "val/accuracy" in values:
            self._val_accuracy = values["val/accuracy"]
        status = [f"step {step}"]
        if self._loss is not None:
            status.append(f"loss {self._loss:.4f}")
        if self._val_accuracy is not None:
            status.append(f"val acc {self._val_accuracy:.3f}")
        completed = values.get("epoch")
        self._bar.update(
            self._task,
            completed=None if completed is None else int(completed),
            status="  ".join(status),
        )

    def feed(self, metrics: Iterable[Metric]) -> None:
        """Metrics as a watch stream delivers them (one per key), regrouped by step."""
        by_step: dict[int, dict[str, float]] = {}
        for metric in metrics:
            by_step.setdefault(metric.step, {})[metric.key] = metric.value
        for step in sorted(by_step):
            self.update(step, by_step[step])
