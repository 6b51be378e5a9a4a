"""The worker process, run as a real subprocess, and its event/task protocol."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from matrec.agent.worker_protocol import (
    EXIT_FAILED,
    EXIT_INVALID_TASK,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_PREEMPTED,
    CheckpointEvent,
    LogEvent,
    MetricsEvent,
    RendezvousEvent,
    ResultEvent,
    WorkerEvent,
    WorkerTask,
    encode_event,
    parse_event,
)
from matrec.sdk.demo_dataset import DemoDatasetInfo

STEPS_PER_EPOCH = 9  # 144 training images // batch 16


@dataclass
class WorkerRun:
    returncode: int
    events: list[WorkerEvent]
    stderr: str


def write_task(
    tmp_path: Path, config: dict[str, object], name: str = "task.json", kind: str = "finetune"
) -> Path:
    task = WorkerTask(
        task_id="t1",
        attempt=1,
        job_id="j1",
        kind=kind,
        config=config,
        artifact_dir=str(tmp_path / "artifacts"),
    )
    path = tmp_path / name
    path.write_text(task.to_json())
    return path


def small_config(dataset: Path, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "dataset_path": str(dataset),
        "image_size": 32,
        "batch_size": 16,
        "epochs": 1,
        "log_every_steps": 1,
    }
    config.update(overrides)
    return config


def run_worker(task_file: Path, *, sigterm_after_metrics: bool = False) -> WorkerRun:
    """Run the worker to completion, parsing every event line as it arrives."""
    read_fd, write_fd = os.pipe()
    command = [sys.executable, "-m", "matrec.agent.worker", "--task-file", str(task_file)]
    proc = subprocess.Popen(
        [*command, "--events-fd", str(write_fd)],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_fd)
    events: list[WorkerEvent] = []
    try:
        with os.fdopen(read_fd, encoding="utf-8") as stream:
            for line in stream:
                event = parse_event(line)
                events.append(event)
                if sigterm_after_metrics and isinstance(event, MetricsEvent):
                    proc.send_signal(signal.SIGTERM)
                    sigterm_after_metrics = False
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return WorkerRun(proc.returncode, events, stderr)


def test_worker_runs_a_task_and_reports_events(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    run = run_worker(write_task(tmp_path, small_config(small_dataset.path)))
    assert run.returncode == EXIT_OK, run.stderr

    assert isinstance(run.events[0], LogEvent)
    result = run.events[-1]
    assert isinstance(result, ResultEvent)
    assert result.result["steps"] == STEPS_PER_EPOCH
    saved = json.loads((tmp_path / "artifacts" / "result.json").read_text())
    assert result.result == saved

    metrics = [e for e in run.events if isinstance(e, MetricsEvent)]
    loss_steps = [e.step for e in metrics if "train/loss" in e.values]
    assert loss_steps == list(range(1, STEPS_PER_EPOCH + 1))
    (epoch_end,) = [e for e in metrics if "val/accuracy" in e.values]
    assert epoch_end.step == STEPS_PER_EPOCH and epoch_end.values["epoch"] == 1.0
    (checkpoint,) = [e for e in run.events if isinstance(e, CheckpointEvent)]
    assert (checkpoint.epoch, checkpoint.step) == (1, STEPS_PER_EPOCH)
    assert Path(checkpoint.path).is_file()


def test_sigterm_checkpoints_exits_75_and_a_rerun_resumes(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    task_file = write_task(tmp_path, small_config(small_dataset.path, epochs=2))
    stopped = run_worker(task_file, sigterm_after_metrics=True)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
    checkpoint = stopped.events[-2]
    assert isinstance(checkpoint, CheckpointEvent)
    assert Path(checkpoint.path).is_file()
    assert 1 <= checkpoint.step < 2 * STEPS_PER_EPOCH
    assert isinstance(stopped.events[-1], LogEvent) and "SIGTERM" in stopped.events[-1].text
    assert not any(isinstance(e, ResultEvent) for e in stopped.events)

    resumed = run_worker(task_file)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert any(isinstance(e, LogEvent) and "resuming" in e.text for e in resumed.events)
    loss_steps = [
        e.step for e in resumed.events if isinstance(e, MetricsEvent) and "train/loss" in e.values
    ]
    assert loss_steps == list(range(checkpoint.step + 1, 2 * STEPS_PER_EPOCH + 1))
    result = resumed.events[-1]
    assert isinstance(result, ResultEvent)
    assert result.result["steps"] == 2 * STEPS_PER_EPOCH


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not JSON"),
        (None, "config.epochs"),
        ("kind", "unknown job kind 'scoring'"),
        ("extra", "config.colour: unknown field"),
    ],
)
def test_invalid_task_exits_2_with_one_line(
    small_dataset: DemoDatasetInfo, tmp_path: Path, content: str | None, expected: str
) -> None:
    task_file = write_task(tmp_path, small_config(small_dataset.path, epochs=0))
    if content == "kind":
        raw = json.loads(task_file.read_text())
        raw["kind"], raw["config"]["epochs"] = "scoring", 1
        task_file.write_text(json.dumps(raw))
    elif content == "extra":
        task_file = write_task(tmp_path, small_config(small_dataset.path, colour="red"))
    elif content is not None:
        task_file.write_text(content)
    run = run_worker(task_file)
    assert run.returncode == EXIT_INVALID_TASK
    assert run.events == []
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], run.stderr
    assert str(task_file) in lines[0]


def test_an_unusable_dataset_exits_2_with_the_reason(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    root = tmp_path / "one-class"
    shutil.copytree(small_dataset.train_dir / small_dataset.classes[0], root / "only")
    run = run_worker(write_task(tmp_path, small_config(root)))
    assert run.returncode == EXIT_INVALID_TASK
    assert run.stderr.startswith("matrec worker: invalid input: ")
    assert f"{root} needs at least two class folders" in run.stderr


def test_a_failing_task_exits_1_with_a_traceback(tmp_path: Path) -> None:
    run = run_worker(write_task(tmp_path, small_config(tmp_path / "missing")))
    assert run.returncode == EXIT_FAILED
    assert "Traceback" in run.stderr and "is not a directory" in run.stderr


@pytest.mark.parametrize(("allocate_mb", "code"), [(64, EXIT_OK), (2048, EXIT_OUT_OF_MEMORY)])
def test_a_worker_past_its_memory_bound_exits_3_with_the_numbers(
    tmp_path: Path, allocate_mb: int, code: int
) -> None:
    config = {
        "steps": 1,
        "duration_seconds": 0,
        "allocate_mb": allocate_mb,
        "memory_limit_mb": 1024,
    }
    run = run_worker(write_task(tmp_path, config, kind="diagnostic"))
    assert run.returncode == code, run.stderr
    if code == EXIT_OK:
        return
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("matrec worker: out of memory: an allocation failed; peak resident ")
    assert "address-space bound (RLIMIT_AS) 1024 MiB" in line
    assert "MiB total" in line and "MiB available" in line


@pytest.mark.parametrize(
    "event",
    [
        MetricsEvent(step=3, values={"train/loss": 0.5, "lr": 1e-4}),
        CheckpointEvent(path="/a/last.pt", epoch=1, step=9),
        LogEvent(text="hello\nworld"),
        ResultEvent(result={"val_accuracy": 0.9, "classes": ["a", "b"]}),
        RendezvousEvent(gang_id="gang-1", backend="torch", address="10.0.0.7", port=29500),
    ],
)
def test_events_round_trip(event: WorkerEvent) -> None:
    line = encode_event(event)
    assert "\n" not in line
    assert parse_event(line) == event


@pytest.mark.parametrize(
    "line",
    [
        "",
        "[1, 2]",
        '{"type": "metrics", "step": 1}',
        '{"type": "metrics", "step": -1, "values": {}}',
        '{"type": "metrics", "step": 1, "values": {"loss": "high"}}',
        '{"type": "metrics", "step": true, "values": {}}',
        '{"type": "checkpoint", "path": "", "epoch": 0, "step": 1}',
        '{"type": "log"}',
        '{"type": "result", "result": [1]}',
        '{"type": "telemetry"}',
    ],
)
def test_malformed_events_are_rejected(line: str) -> None:
    with pytest.raises(ValueError):
        parse_event(line)


def test_task_file_round_trip_and_errors() -> None:
    task = WorkerTask("t", 2, "j", "finetune", {"dataset_path": "/d"}, "/a", "/a/last.pt")
    assert WorkerTask.from_json(task.to_json()) == task
    with pytest.raises(ValueError, match="attempt"):
        WorkerTask.from_json(task.to_json().replace('"attempt": 2', '"attempt": "2"'))
    with pytest.raises(ValueError, match="unknown field"):
        WorkerTask.from_json(json.dumps({**json.loads(task.to_json()), "gpu": 0}))
    with pytest.raises(ValueError, match="task_id"):
        WorkerTask.from_json(json.dumps({**json.loads(task.to_json()), "task_id": ""}))
