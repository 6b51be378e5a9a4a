"""Worker process: run one training task and report it as JSON lines on a file descriptor.

    python -m matrec.agent.worker --task-file PATH --events-fd FD

The task file and the events are described in matrec.agent.worker_protocol, and so are the exit
codes. SIGTERM asks the task to checkpoint and stop (exit EXIT_PREEMPTED). MATREC_TORCH_THREADS,
when set, fixes torch's intra-op thread count (otherwise torch's own default, which follows
OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeAlias

from matrec.agent.memory_report import exhaustion_report
from matrec.agent.path_policy import PathPolicy
from matrec.agent.worker_protocol import (
    EXIT_FAILED,
    EXIT_INVALID_TASK,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_PREEMPTED,
    PARENT_PID_ENV,
    CheckpointEvent,
    InvalidTaskInput,
    LogEvent,
    MetricsEvent,
    ResultEvent,
    TaskStopped,
    WorkerEvent,
    WorkerTask,
    encode_event,
)
from matrec.common.lifetime import die_with_parent
from matrec.common.specs import (
    DiagnosticConfig,
    FinetuneConfig,
    ScoreConfig,
    ScriptConfig,
    SpecError,
    parse_job_spec,
)


class EventReporter:
    """A Reporter that writes worker_protocol events, one JSON line each, to `stream`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._send(MetricsEvent(step=step, values=dict(values)))

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        self._send(CheckpointEvent(path=str(path), epoch=epoch, step=step))

    def log(self, text: str) -> None:
        self._send(LogEvent(text=text))

    def result(self, result: dict[str, Any]) -> None:
        self._send(ResultEvent(result=result))

    def _send(self, event: WorkerEvent) -> None:
        self._stream.write(encode_event(event) + "\n")
        self._stream.flush()


class _StopFlag:
    """Set by SIGTERM; polled by the training loop after every optimizer step."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def die_with_agent() -> None:
    """Die (SIGKILL) with the agent that started us, so a killed agent leaves no worker training
    on behind the coordinator's back."""
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and not die_with_parent(int(expected), signal.SIGKILL):
        os._exit(EXIT_FAILED)  # the agent died before the death signal was armed


def main(argv: list[str] | None = None) -> int:
    die_with_agent()
    parser = argparse.ArgumentParser(
        prog="python -m matrec.agent.worker", description="Run one matrec training task."
    )
    parser.add_argument("--task-file", required=True, type=Path, help="the task, as JSON")
    parser.add_argument("--events-fd", required=True, type=int, help="where events are written")
    args = parser.parse_args(argv)

    stop = _StopFlag()
    # Installed first: a SIGTERM that arrives while torch is still importing must not kill us
    # before the first checkpoint decision.
    signal.signal(signal.SIGTERM, stop.handle)

    try:
        task, config = _read_task(args.task_file)
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())
        print(f"matrec worker: invalid task file {args.task_file}: {message}", file=sys.stderr)
        return EXIT_INVALID_TASK
    try:
        events = os.fdopen(args.events_fd, "w", buffering=1, encoding="utf-8")
    except OSError as exc:
        print(f"matrec worker: cannot write events to fd {args.events_fd}: {exc}", file=sys.stderr)
        return EXIT_INVALID_TASK

    reporter = EventReporter(events)
    try:
        PathPolicy.from_env().check_task(task.kind, task.config)
        reporter.result(_run(task, config, reporter, stop))
        return EXIT_OK
    except TaskStopped as exc:
        reporter.log(f"stopped by SIGTERM: {exc}")
        return EXIT_PREEMPTED
    except InvalidTaskInput as exc:
        # Found before any work was done; another attempt would find the same.
        print(f"matrec worker: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID_TASK
    except MemoryError as exc:
        message = " ".join(str(exc).split()) or "an allocation failed"
        print(f"matrec worker: out of memory: {message}; {exhaustion_report()}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return EXIT_FAILED
    finally:
        with contextlib.suppress(OSError):
            events.close()


#: The job kinds this worker runs.
TaskConfig: TypeAlias = FinetuneConfig | DiagnosticConfig | ScriptConfig | ScoreConfig


def _run(
    task: WorkerTask,
    config: TaskConfig,
    reporter: EventReporter,
    stop: _StopFlag,
) -> dict[str, Any]:
    """Run the task's kind; torch is imported only for the kinds that run a model."""
    if isinstance(config, DiagnosticConfig):
        from matrec.agent.diagnostic import run_diagnostic

        return run_diagnostic(config, reporter, stop)
    if isinstance(config, ScriptConfig):
        from matrec.agent.script_task import run_script

        return run_script(config, Path(task.artifact_dir), reporter, stop)
    _set_torch_threads()
    if isinstance(config, ScoreConfig):
        from matrec.agent.training.scoring import run_scoring

        return run_scoring(config, Path(task.artifact_dir), reporter, stop)
    from matrec.agent.training.finetune import run_finetune
    from matrec.agent.training.retraining_view import training_view

    # A retraining's labelled pool images join the dataset in a view in this task's private
    # work folder (one per process: the ranks of a distributed task share the folder).
    view = Path.cwd() / f"retraining-view-{os.getpid()}"
    return run_finetune(
        training_view(config, view, PathPolicy.from_env()),
        Path(task.artifact_dir),
        reporter,
        resume_from=Path(task.resume_from) if task.resume_from else None,
        should_stop=stop,
    ).to_dict()


def _read_task(path: Path) -> tuple[WorkerTask, TaskConfig]:
    task = WorkerTask.from_json(path.read_text(encoding="utf-8"))
    try:
        _, config = parse_job_spec({"kind": task.kind, "config": task.config})
    except SpecError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(config, TaskConfig):
        raise ValueError(f"kind: this worker cannot run {task.kind!r} tasks")
    return task, config


def _set_torch_threads() -> None:
    raw = os.environ.get("MATREC_TORCH_THREADS", "").strip()
    if not raw:
        return
    try:
        threads = int(raw)
    except ValueError:
        raise ValueError(f"MATREC_TORCH_THREADS must be a positive integer, got {raw!r}") from None
    if threads < 1:
        raise ValueError(f"MATREC_TORCH_THREADS must be a positive integer, got {raw!r}")
    import torch

    torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
