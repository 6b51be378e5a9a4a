"""The `diagnostic` task kind through the real worker process: fast, torch-free, stoppable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from matrec.agent.worker_protocol import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    MetricsEvent,
    ResultEvent,
    WorkerTask,
)
from test_worker import run_worker


def diagnostic_task(tmp_path: Path, **config: object) -> Path:
    path = tmp_path / "task.json"
    path.write_text(
        WorkerTask(
            task_id="t1", attempt=1, job_id="j1", kind="diagnostic", config=dict(config),
            artifact_dir=str(tmp_path / "artifacts"),
        ).to_json()
    )  # fmt: skip
    return path


def test_diagnostic_task_reports_each_step_and_a_result(tmp_path: Path) -> None:
    run = run_worker(diagnostic_task(tmp_path, duration_seconds=0.03, steps=3))
    assert run.returncode == EXIT_OK, run.stderr
    steps = [e.step for e in run.events if isinstance(e, MetricsEvent)]
    assert steps == [1, 2, 3]
    result = run.events[-1]
    assert isinstance(result, ResultEvent) and result.result["steps"] == 3


def test_diagnostic_task_fails_on_request(tmp_path: Path) -> None:
    run = run_worker(diagnostic_task(tmp_path, duration_seconds=0, fail=True))
    assert run.returncode == EXIT_FAILED
    assert "asked to fail" in run.stderr


def test_diagnostic_task_stops_on_sigterm(tmp_path: Path) -> None:
    run = run_worker(
        diagnostic_task(tmp_path, duration_seconds=30, steps=300), sigterm_after_metrics=True
    )
    assert run.returncode == EXIT_PREEMPTED


def test_diagnostic_path_does_not_import_torch() -> None:
    code = (
        "import sys, matrec.agent.worker, matrec.agent.diagnostic; sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
