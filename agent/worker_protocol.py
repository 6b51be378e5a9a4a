"""What the agent daemon and a worker process say to each other, importable without torch.

The daemon writes a task file (`WorkerTask`, JSON) and starts
``python -m matrec.agent.worker --task-file PATH --events-fd FD``. The worker writes one JSON
object per line to FD (`encode_event` / `parse_event`) and exits with one of the EXIT_* codes.
The launcher of a gang's member 0 reports its rendezvous the same way (`RendezvousEvent`); the
agent writes that event, as passed on by the coordinator, to the other members' launchers on
their standard input.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # any other failure; the traceback is on stderr
EXIT_INVALID_TASK = 2  # the task file or its config is invalid; retrying will not help
EXIT_OUT_OF_MEMORY = 3  # ran out of host or device memory; stderr has the numbers
EXIT_PREEMPTED = 75  # stopped by SIGTERM after writing a checkpoint; resumable (EX_TEMPFAIL)

#: The agent puts its pid here; the worker arms a death signal against it.
PARENT_PID_ENV = "MATREC_AGENT_PID"


class TaskStopped(Exception):
    """Raised by task code that stopped on request (SIGTERM) after saving what it can: the
    worker exits with EXIT_PREEMPTED and the task is handed back."""


class InvalidTaskInput(ValueError):
    """Raised by task code whose input can never work (e.g. a dataset with one class): the
    worker exits with EXIT_INVALID_TASK and the task is not retried."""


@dataclass(frozen=True)
class WorkerTask:
    task_id: str
    attempt: int
    job_id: str
    kind: str
    config: dict[str, Any]
    artifact_dir: str
    resume_from: str | None = None
    # A member of a multi-host gang: which placement, which member, how many members.
    gang_id: str = ""
    gang_member: int = 0
    gang_size: int = 1

    def to_json(self) -> str:
        return json.dumps(
            {
                "task_id": self.task_id,
                "attempt": self.attempt,
                "job_id": self.job_id,
                "kind": self.kind,
                "config": self.config,
                "artifact_dir": self.artifact_dir,
                "resume_from": self.resume_from,
                "gang_id": self.gang_id,
                "gang_member": self.gang_member,
                "gang_size": self.gang_size,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerTask:
        """Parse a task file's text. Raises ValueError naming what is wrong."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        unknown = set(raw) - {
            "task_id", "attempt", "job_id", "kind", "config", "artifact_dir", "resume_from",
            "gang_id", "gang_member", "gang_size",
        }  # fmt: skip
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        resume_from = raw.get("resume_from")
        if resume_from is not None and not isinstance(resume_from, str):
            raise ValueError("resume_from: expected a string or null")
        attempt = raw.get("attempt")
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise ValueError("attempt: expected an integer")
        config = raw.get("config")
        if not isinstance(config, dict):
            raise ValueError("config: expected an object")
        return cls(
            task_id=_string(raw, "task_id"),
            attempt=attempt,
            job_id=_string(raw, "job_id"),
            kind=_string(raw, "kind"),
            config=config,
            artifact_dir=_string(raw, "artifact_dir"),
            resume_from=resume_from,
            gang_id=str(raw.get("gang_id") or ""),
            gang_member=_integer(raw, "gang_member", 0),
            gang_size=_integer(raw, "gang_size", 1),
        )


def _integer(raw: dict[str, Any], name: str, default: int) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer")
    return value


@dataclass(frozen=True)
class MetricsEvent:
    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class CheckpointEvent:
    path: str
    epoch: int  # epochs completed when the checkpoint was written
    step: int


@dataclass(frozen=True)
class LogEvent:
    text: str


@dataclass(frozen=True)
class ResultEvent:
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RendezvousEvent:
    """Where a gang's ranks meet: opened by member 0's launcher, for one placement (gang id)."""

    gang_id: str
    backend: str  # "horovod" or "torch"
    address: str
    port: int


WorkerEvent = MetricsEvent | CheckpointEvent | LogEvent | ResultEvent | RendezvousEvent


def encode_event(event: WorkerEvent) -> str:
    """One JSON line, without the trailing newline."""
    payload: dict[str, Any]
    match event:
        case MetricsEvent(step=step, values=values):
            payload = {"type": "metrics", "step": step, "values": values}
        case CheckpointEvent(path=path, epoch=epoch, step=step):
            payload = {"type": "checkpoint", "path": path, "epoch": epoch, "step": step}
        case LogEvent(text=text):
            payload = {"type": "log", "text": text}
        case ResultEvent(result=result):
            payload = {"type": "result", "result": result}
        case RendezvousEvent():
            payload = {"type": "rendezvous", **dataclasses.asdict(event)}
    return json.dumps(payload, allow_nan=True)


def parse_event(line: str) -> WorkerEvent:
    """Parse one event line. Raises ValueError on anything malformed."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"event is not JSON: {exc}: {line[:200]!r}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"event is not a JSON object: {line[:200]!r}")
    kind = raw.get("type")
    if kind == "metrics":
        values = raw.get("values")
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and _is_number(v) for k, v in values.items()
        ):
            raise ValueError(f"metrics event needs values: {{name: number}}: {line[:200]!r}")
        return MetricsEvent(step=_int(raw, "step"), values={k: float(v) for k, v in values.items()})
    if kind == "checkpoint":
        return CheckpointEvent(
            path=_string(raw, "path"), epoch=_int(raw, "epoch"), step=_int(raw, "step")
        )
    if kind == "log":
        return LogEvent(text=_string(raw, "text", allow_empty=True))
    if kind == "result":
        result = raw.get("result")
        if not isinstance(result, dict):
            raise ValueError(f"result event needs a result object: {line[:200]!r}")
        return ResultEvent(result=result)
    if kind == "rendezvous":
        return RendezvousEvent(
            gang_id=_string(raw, "gang_id"),
            backend=_string(raw, "backend"),
            address=_string(raw, "address"),
            port=_int(raw, "port"),
        )
    raise ValueError(f"unknown event type {kind!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def _string(raw: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"{key}: expected a{'' if allow_empty else ' non-empty'} string")
    return value
