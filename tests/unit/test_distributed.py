"""Distributed fine-tunes on one host: the launcher starts real worker ranks (Horovod over Gloo,
or torch.distributed over gloo), which must take the same steps as one process with the same
global batch; a failing rank stops the others; SIGTERM stops every rank after the same step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from matrec.agent.worker_protocol import (
    EXIT_OK,
    EXIT_PREEMPTED,
    LogEvent,
    MetricsEvent,
    ResultEvent,
    WorkerEvent,
    WorkerTask,
    parse_event,
)
from matrec.sdk.demo_dataset import DemoDatasetInfo
from support.sample_trace import SAMPLE_TRACE_DIR_ENV, assert_ranks_split_each_batch, read_trace


@dataclass
class Run:
    returncode: int
    events: list[WorkerEvent]
    stderr: str
    seconds: float = 0.0
    pids: list[int] = field(default_factory=list)


def config(dataset: DemoDatasetInfo, **extra: Any) -> dict[str, Any]:
    return {
        "dataset_path": str(dataset.path),
        "model": "resnet18",
        "epochs": 1,
        "batch_size": 16,
        "image_size": 32,
        "strategy": "head_only",  # frozen BatchNorm: the ranks' slices give the same statistics
        "augmentation": "none",
        "log_every_steps": 1,
        "seed": 0,
        **extra,
    }


def run(
    tmp_path: Path, task_config: dict[str, Any], *, kill_rank_after_metrics: bool = False,
    sigterm_after_metrics: bool = False, trace_dir: Path | None = None,
) -> Run:  # fmt: skip
    ranks = int(task_config.get("workers_per_host", 1))
    program = "matrec.agent.launcher" if ranks > 1 else "matrec.agent.worker"
    task_file = tmp_path / "task.json"
    task_file.write_text(
        WorkerTask(
            task_id="t", attempt=1, job_id="j", kind="finetune", config=task_config,
            artifact_dir=str(tmp_path / "artifacts"),
        ).to_json()
    )  # fmt: skip
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            program,
            "--task-file",
            str(task_file),
            "--events-fd",
            str(write_fd),
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=os.environ
        | {"OMP_NUM_THREADS": "2"}
        | ({SAMPLE_TRACE_DIR_ENV: str(trace_dir)} if trace_dir else {}),
    )
    os.close(write_fd)
    events: list[WorkerEvent] = []
    pids: list[int] = []
    try:
        with os.fdopen(read_fd, encoding="utf-8") as stream:
            for line in stream:
                event = parse_event(line)
                events.append(event)
                if isinstance(event, MetricsEvent) and kill_rank_after_metrics:
                    children = psutil.Process(proc.pid).children()
                    pids = [c.pid for c in children]
                    children[-1].kill()  # the last rank dies, as in a crash
                    kill_rank_after_metrics = False
                if isinstance(event, MetricsEvent) and sigterm_after_metrics:
                    pids = [c.pid for c in psutil.Process(proc.pid).children()]
                    os.killpg(proc.pid, signal.SIGTERM)  # as the agent stops a task
                    sigterm_after_metrics = False
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Run(proc.returncode, events, stderr, time.monotonic() - started, pids)


def final_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(tmp_path / "artifacts" / "model.pt", map_location="cpu", weights_only=False)
    return saved["model_state"]


def metrics(events: list[WorkerEvent], key: str) -> list[float]:
    return [e.values[key] for e in events if isinstance(e, MetricsEvent) and key in e.values]


@pytest.fixture(scope="module")
def single(
    small_dataset: DemoDatasetInfo, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Run]:
    path = tmp_path_factory.mktemp("single")
    result = run(path, config(small_dataset), trace_dir=path / "samples")
    assert result.returncode == EXIT_OK, result.stderr
    return path, result


@pytest.mark.parametrize("backend", ["torch", "horovod"])
def test_two_ranks_take_the_same_steps_as_one_process(
    backend: str, single: tuple[Path, Run], small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    trace_dir = tmp_path / "samples"
    result = run(
        tmp_path, config(small_dataset, workers_per_host=2, backend=backend), trace_dir=trace_dir
    )
    assert result.returncode == EXIT_OK, result.stderr
    # Each rank trained on its own half of every global batch of 16, not on the whole batch.
    single_path, single_run = single
    assert_ranks_split_each_batch(
        read_trace(trace_dir),
        read_trace(single_path / "samples")[0],
        size=2,
        train_size=144,
        batch_size=16,
    )
    first = result.events[0]
    assert isinstance(first, LogEvent) and "2 ranks" in first.text
    expected_backend = "Horovod" if backend == "horovod" else "torch.distributed"
    assert expected_backend in first.text
    assert any(isinstance(e, LogEvent) and f"2 ranks ({backend})" in e.text for e in result.events)
    # One result, from rank 0; every step reported once.
    assert sum(isinstance(e, ResultEvent) for e in result.events) == 1
    ones = final_weights(single_path)
    twos = final_weights(tmp_path)
    assert ones.keys() == twos.keys()
    for name, tensor in ones.items():
        torch.testing.assert_close(twos[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # The ranks' averaged train loss is the single process's, step for step.
    losses = metrics(result.events, "train/loss")
    assert len(losses) == 9  # 144 training images / a global batch of 16
    assert losses == pytest.approx(metrics(single_run.events, "train/loss"), rel=1e-4)
    for key in ("train/accuracy", "val/accuracy", "val/loss"):
        assert metrics(result.events, key) == pytest.approx(
            metrics(single_run.events, key), rel=1e-4
        ), key


def test_batch_size_auto_is_chosen_by_every_rank_together(
    small_dataset: DemoDatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each rank probes up to 18 images (a quarter of 144, halved over 2 ranks): 2 and 4 fit,
    # 8 runs out of memory, so the ranks take 4 each: a global batch of 8.
    monkeypatch.setenv("MATREC_TEST_OOM_ABOVE", "5")
    result = run(
        tmp_path,
        config(small_dataset, workers_per_host=2, backend="torch", batch_size="auto"),
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert metrics(result.events, "memory/batch_size") == [8.0]
    assert len(metrics(result.events, "train/loss")) == 144 // 8
    (done,) = [e for e in result.events if isinstance(e, ResultEvent)]
    assert done.result["batch_size"] == 8


def test_batch_must_split_evenly(small_dataset: DemoDatasetInfo) -> None:
    from matrec.common.specs import SpecError, parse_job_spec

    with pytest.raises(SpecError, match="multiple of workers_per_host") as raised:
        parse_job_spec({"kind": "finetune", "config": config(small_dataset, workers_per_host=3)})
    assert raised.value.field == "config.workers_per_host"


def test_a_dead_rank_stops_the_others(small_dataset: DemoDatasetInfo, tmp_path: Path) -> None:
    result = run(
        tmp_path,
        config(small_dataset, workers_per_host=2, backend="torch", epochs=20),
        kill_rank_after_metrics=True,
    )
    assert result.returncode not in (EXIT_OK, EXIT_PREEMPTED)
    assert result.seconds < 120
    assert len(result.pids) == 2
    assert not [p for p in result.pids if psutil.pid_exists(p)], "a rank outlived the launcher"


@pytest.mark.parametrize("backend", ["torch", "horovod"])
def test_sigterm_stops_every_rank_with_one_checkpoint(
    backend: str, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    result = run(
        tmp_path,
        config(small_dataset, workers_per_host=2, backend=backend, epochs=20),
        sigterm_after_metrics=True,
    )
    assert result.returncode == EXIT_PREEMPTED, result.stderr
    assert (tmp_path / "artifacts" / "checkpoints" / "last.pt").is_file()
    assert not [p for p in result.pids if psutil.pid_exists(p)]
