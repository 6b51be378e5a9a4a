"""Helpers for tests that run real fine-tunes on a LocalCluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil
from matrec.sdk import Client
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.types import Job, LogsEvent

# Short leases so that a lost agent is noticed in seconds, not the production 30 s.
FAST_LEASES = ["--lease-ttl", "4", "--heartbeat-interval", "0.5"]
EPOCH_KEYS = ("train/loss_epoch", "train/accuracy", "val/loss", "val/accuracy", "lr", "epoch")


def finetune_spec(dataset: DemoDatasetInfo, epochs: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "integration",
        "kind": "finetune",
        "config": {
            "dataset_path": str(dataset.path),
            "model": "resnet18",
            "epochs": epochs,
            "batch_size": 16,
            "image_size": 32,
            "learning_rate": 0.003,
            "log_every_steps": 1,
            **extra,
        },
        "max_attempts": 3,
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def steps_per_epoch(dataset: DemoDatasetInfo, batch_size: int = 16) -> int:
    return sum(dataset.train_counts.values()) // batch_size


def assert_complete_series(client: Client, job: Job, dataset: DemoDatasetInfo, epochs: int) -> None:
    """Every step reported once, in order; every epoch's summary present."""
    metrics = client.job_metrics(job.id)
    keys = [(m.task_id, m.step, m.key) for m in metrics]
    assert len(keys) == len(set(keys)), "duplicate metric points"
    assert keys == sorted(keys), "metrics are not in (task, step, key) order"
    total_steps = steps_per_epoch(dataset) * epochs
    loss_steps = [m.step for m in metrics if m.key == "train/loss"]
    assert loss_steps == list(range(1, total_steps + 1))
    for key in EPOCH_KEYS:
        assert len([m for m in metrics if m.key == key]) == epochs, key
    epochs_seen = sorted(m.value for m in metrics if m.key == "epoch")
    assert epochs_seen == [float(e) for e in range(1, epochs + 1)]


def worker_processes(task_id: str, attempt: int) -> list[psutil.Process]:
    marker = f"{task_id}-a{attempt}"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "matrec.agent.worker" in cmdline and marker in cmdline:
            found.append(process)
    return found


def checkpoint_written(client: Client, job_id: str) -> bool:
    job = client.get_job(job_id)
    return job.state == "running" and bool(job.tasks[0].checkpoint_path)


def job_log_lines(client: Client, job_id: str) -> list[str]:
    """Every log line the job's tasks sent, in order (the job must have finished)."""
    return [
        line.text
        for event in client.watch(job_id, include_logs=True)
        if isinstance(event, LogsEvent)
        for line in event.lines
    ]
