"""The `diagnostic` task: no torch, no data. It sleeps through its steps, reports one metric per
step and can be told to fail. Use it to check a cluster end to end in seconds
(`matrec-ctl submit --kind diagnostic`), and the tests use it for many short tasks."""

from __future__ import annotations

import platform
import resource
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
    if config.allocate_mb:
        _allocate(config.allocate_mb, config.memory_limit_mb)
    return {
        "steps": config.steps,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "imagenet_weights": imagenet_weights_file() is not None,
    }


def _allocate(size_mb: int, limit_mb: int) -> None:
    """Fill `size_mb` MiB, under an address-space bound of `limit_mb` MiB when one is given."""
    if limit_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = limit_mb << 20 if hard == resource.RLIM_INFINITY else min(limit_mb << 20, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    block = bytearray(size_mb << 20)  # zero-filled, so every page is touched
    del block
