"""The watch view's state: progress and ETA from metrics, plain lines, the closing summary."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from matrec.sdk.ctl.watch_view import PlainPrinter, WatchState, render, summary
from matrec.sdk.types import (
    HistoryEntry,
    Job,
    JobEvent,
    JobSpec,
    JobUpdate,
    LogLine,
    LogsEvent,
    Metric,
    MetricsEvent,
    Resources,
    Task,
)
from rich.console import Console

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _job(state: str = "running", task_state: str = "running", epochs: float = 4.0) -> Job:
    task = Task(
        id="task-1",
        job_id="job-1",
        index=0,
        state=task_state,
        attempt=1,
        max_attempts=3,
        agent_id="agent-a",
        error="",
        lease_expires_at=None,
        artifact_dir="",
        checkpoint_path="",
    )
    return Job(
        id="job-1",
        spec=JobSpec(
            name="demo",
            kind="finetune",
            config={"dataset_path": "/d", "epochs": epochs},
            resources=Resources(cpus=1.0),
            max_attempts=3,
            labels={},
        ),
        state=state,
        created_at=T0,
        started_at=T0,
        finished_at=None,
        error="",
        tasks=[task],
        result={},
        cancel_requested=False,
    )


def _metric(key: str, value: float, step: int, seconds: float, attempt: int = 1) -> Metric:
    return Metric("task-1", attempt, step, key, value, T0 + timedelta(seconds=seconds))


def _epoch_end(epoch: int, step: int, seconds: float, attempt: int = 1) -> MetricsEvent:
    return MetricsEvent(
        [
            _metric("train/loss_epoch", 1.0 / epoch, step, seconds, attempt),
            _metric("train/accuracy", 0.5 + epoch / 10, step, seconds, attempt),
            _metric("val/loss", 1.2 / epoch, step, seconds, attempt),
            _metric("val/accuracy", 0.4 + epoch / 10, step, seconds, attempt),
            _metric("lr", 0.003, step, seconds, attempt),
            _metric("epoch", float(epoch), step, seconds, attempt),
        ]
    )


def test_no_progress_before_the_first_epoch_ends() -> None:
    state = WatchState()
    state.apply(JobUpdate(_job()))
    assert state.progress("task-1") is None
    state.apply(MetricsEvent([_metric("train/loss", 2.0, 10, 5.0)]), arrival=100.0)
    progress = state.progress("task-1", now=100.0)
    assert progress is not None
    assert (progress.epoch, progress.epochs, progress.fraction) == (0, 4, None)


def test_progress_and_eta_from_steps() -> None:
    state = WatchState()
    state.apply(JobUpdate(_job(epochs=4)))
    state.apply(MetricsEvent([_metric("train/loss", 2.0, 10, 10.0)]), arrival=100.0)
    # 50 steps per epoch; step 10 at 10 s and step 50 at 50 s: one step per second.
    state.apply(_epoch_end(1, 50, 50.0), arrival=140.0)
    progress = state.progress("task-1", now=140.0)
    assert progress is not None
    assert progress.epoch == 1 and progress.epochs == 4
    assert progress.fraction == pytest.approx(50 / 200)
    assert progress.eta_seconds == pytest.approx(150.0)
    # The ETA counts down between metrics, on the watcher's clock.
    later = state.progress("task-1", now=150.0)
    assert later is not None and later.eta_seconds == pytest.approx(140.0)


def test_a_new_attempt_restarts_the_speed_measurement() -> None:
    state = WatchState()
    state.apply(JobUpdate(_job(epochs=4)))
    state.apply(_epoch_end(1, 50, 50.0), arrival=1.0)
    state.apply(MetricsEvent([_metric("train/loss", 1.0, 70, 70.0)]), arrival=2.0)
    # Attempt 2 resumes from the epoch-1 checkpoint, on a host twice as slow.
    state.apply(MetricsEvent([_metric("train/loss", 1.0, 60, 300.0, attempt=2)]), arrival=3.0)
    state.apply(_epoch_end(2, 100, 380.0, attempt=2), arrival=4.0)
    # A late metric of attempt 1 is ignored.
    state.apply(MetricsEvent([_metric("train/loss", 9.0, 80, 80.0)]), arrival=5.0)
    assert state.tasks["task-1"].attempt == 2
    assert state.tasks["task-1"].value("train/loss") == 1.0
    progress = state.progress("task-1", now=4.0)
    assert progress is not None
    assert progress.epoch == 2 and progress.fraction == pytest.approx(0.5)
    assert progress.eta_seconds == pytest.approx(100 / 0.5)


def test_plain_printer_lines() -> None:
    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=200), show_logs=True)
    printer.handle(JobUpdate(_job(state="queued", task_state="queued")))
    printer.handle(HistoryEntry(JobEvent(1, T0, "task-1", 1, "assigned", "to agent-a")))
    printer.handle(JobUpdate(_job()))
    printer.handle(JobUpdate(_job()))  # no change, no line
    printer.handle(_epoch_end(1, 50, 50.0))
    printer.handle(_epoch_end(1, 50, 50.0))  # a replay prints nothing new
    printer.handle(LogsEvent([LogLine("task-1", 1, 1, T0, "loading data")]))
    lines = out.getvalue().splitlines()
    assert lines[0] == "job job-1: queued"
    assert lines[1].endswith("assigned [task 0]: to agent-a")
    assert lines[2] == "job job-1: running"
    assert lines[3] == (
        "task 0 epoch 1/4: train loss 1, train acc 0.6, val loss 1.2, val acc 0.5, lr 0.003"
    )
    assert lines[4] == "task 0| loading data"
    assert len(lines) == 5


def test_live_view_renders() -> None:
    state = WatchState()
    out = io.StringIO()
    console = Console(file=out, width=120)
    console.print(render(state, show_logs=True))
    state.apply(JobUpdate(_job()))
    state.apply(_epoch_end(1, 50, 50.0))
    state.apply(LogsEvent([LogLine("task-1", 1, 1, T0, "epoch 1 done")]))
    console.print(render(state, show_logs=True))
    text = out.getvalue()
    assert "job-1" in text and "running" in text
    assert "1/4" in text and "0.5" in text and "epoch 1 done" in text


def test_summary() -> None:
    done = replace(
        _job(state="succeeded"),
        finished_at=T0 + timedelta(seconds=125),
        result={"val_accuracy": 0.9167, "model_path": "/art/model.pt"},
    )
    assert summary(done).plain == (
        "job job-1 succeeded after 2m05s · validation accuracy 0.9167 · model /art/model.pt"
    )
    failed = replace(_job(state="failed"), finished_at=T0 + timedelta(seconds=3), error="OOM")
    assert summary(failed).plain == "job job-1 failed after 3s: OOM"
