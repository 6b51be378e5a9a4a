"""The `script` task: a user's program, run as one rank of a distributed job (or alone).

The launcher has already put the rank's environment in place (Horovod's or torch.distributed's);
this adds torchrun's names for torch, runs the program in its working folder, streams its output
to the task log, turns `matrec-metric {json}` lines into metrics, and forwards SIGTERM (the
program shares the task's process group, so it gets the signal directly; a program that exits
non-zero after it is a preemption, not a failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matrec.agent.script_user import ScriptUser
from matrec.agent.training.reporting import Reporter
from matrec.agent.worker_protocol import TaskStopped
from matrec.common.specs import ScriptConfig

METRIC_PREFIX = "matrec-metric "
ERROR_TAIL_LINES = 20


class ScriptStopped(TaskStopped):
    """SIGTERM arrived and the program ended."""


class ScriptFailed(RuntimeError):
    """The program exited non-zero; the message holds its last output lines."""


def script_environment(config: ScriptConfig) -> dict[str, str]:
    env = dict(os.environ) | config.env
    if os.environ.get("MATREC_BACKEND") == "torch":
        # torchrun's names, which torch.distributed's env:// initialisation reads.
        env |= {
            "RANK": os.environ["MATREC_RANK"],
            "WORLD_SIZE": os.environ["MATREC_WORLD_SIZE"],
            "LOCAL_RANK": os.environ.get("MATREC_LOCAL_RANK", "0"),
        }
    return env


def run_script(
    config: ScriptConfig,
    artifact_dir: Path,
    reporter: Reporter,
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    work_dir = Path(config.working_dir) if config.working_dir else artifact_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    command = list(config.command)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    env = script_environment(config)
    user = ScriptUser.from_environ()
    switch: dict[str, Any] = {}
    as_user = ""
    if user is not None:
        if not config.working_dir:
            user.give(work_dir)  # the task's own folder; a named one keeps its owner
        env |= user.environment()
        switch = {"user": user.uid, "group": user.gid, "extra_groups": []}
        as_user = f" as {user.name}"
    reporter.log(f"running {' '.join(command)} in {work_dir}{as_user}")
    process = subprocess.Popen(
        command,
        cwd=work_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        **switch,
    )
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip("\n")
        tail.append(line)
        if line.startswith(METRIC_PREFIX):
            _report_metric(line, reporter)
        else:
            reporter.log(line)
    code = process.wait()
    if code != 0 and should_stop():
        raise ScriptStopped(f"the program exited with {code} after SIGTERM")
    if code != 0:
        raise ScriptFailed(f"{command[0]} exited with code {code}:\n" + "\n".join(tail))
    return {"exit_code": 0, "working_dir": str(work_dir)}


def _report_metric(line: str, reporter: Reporter) -> None:
    try:
        values = json.loads(line[len(METRIC_PREFIX) :])
        step = int(values.pop("step"))
        reporter.metrics(step, {str(k): float(v) for k, v in values.items()})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reporter.log(f"(ignored a malformed metric line: {exc}) {line}")
