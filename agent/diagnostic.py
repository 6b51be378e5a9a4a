"""The `diagnostic` task: no torch, no data. It sleeps through its steps, reports one metric per
step and can be told to fail. Use it to check a cluster end to end in seconds
(`matrec-ctl submit --kind diagnostic`), and the tests use it for many short tasks."""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable
from typing import Any

from matrec.agent.resources import imagenet_weights_file
from matrec.agent.training.reporting import Reporter
from matrec.agent.worker_protocol import TaskStopped
from matrec.common.specs import DiagnosticConfig


class DiagnosticStopped(TaskStopped):
    """SIGTERM arrived; there is nothing to checkpoint."""


def run_diagnostic(
    config: DiagnosticConfig, reporter: Reporter, should_stop: Callable[[], bool]
) -> dict[str, Any]:
    pause = config.duration_seconds / config.steps
    for step in range(1, config.steps + 1):
        if should_stop():
            raise DiagnosticStopped(f"stopped before step {step}")
        time.sleep(pause)
        values = {"diagnostic/step": float(step)}
        if config.score is not None:
            values["diagnostic/score"] = config.score * step / config.steps
        reporter.metrics(step, values)
    if config.fail:
        raise RuntimeError("the diagnostic task was asked to fail (config.fail)")
    return {
        "steps": config.steps,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "imagenet_weights": imagenet_weights_file() is not None,
    }
