"""Rich renderables and plain formatting for jobs, tasks and agents."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from matrec.sdk.evaluation import Evaluation, EvaluationMissingError
from matrec.sdk.types import Agent, Artifact, Job, JobEvent, Resources, Task
from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

STATE_STYLES: dict[str, str] = {
    "queued": "yellow",
    "assigned": "cyan",
    "running": "bold cyan",
    "succeeded": "bold green",
    "failed": "bold red",
    "cancelled": "magenta",
    "connected": "green",
    "draining": "yellow",
    "disconnected": "red",
}


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def format_time(value: datetime | None) -> str:
    """Local time, without the date when it is today."""
    if value is None:
        return "-"
    local = value.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_value(value: Any) -> str:
    """A number as a person reads it: integral floats without ".0", others to 4 digits."""
    if isinstance(value, bool) or not isinstance(value, float | int):
        return "-" if value is None else str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def format_resources(resources: Resources) -> str:
    parts = [f"{resources.cpus:g} cpu"]
    if resources.gpus:
        parts.append(f"{resources.gpus} gpu")
    if resources.memory_bytes:
        parts.append(f"{resources.memory_bytes / 2**30:.1f} GiB")
    return ", ".join(parts)


def job_duration(job: Job) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or datetime.now(job.started_at.tzinfo)
    return (end - job.started_at).total_seconds()


def to_json(value: Any) -> str:
    """JSON text for `--json` output: dataclasses as objects, datetimes in ISO 8601."""

    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        raise TypeError(f"cannot encode {type(obj).__name__}")

    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, list):
            return [plain(item) for item in obj]
        return obj

    return json.dumps(plain(value), indent=2, default=default)


def jobs_table(jobs: Sequence[Job]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ID", style="bold", no_wrap=True)
    table.add_column("NAME")
    table.add_column("KIND", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("OWNER", no_wrap=True)
    table.add_column("ATTEMPTS", justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("VAL ACC", justify="right", no_wrap=True)
    for job in jobs:
        table.add_row(
            job.id,
            Text(job.name or "-"),
            job.kind,
            state_text(job.state),
            Text(job.owner or "-"),
            str(job.attempts),
            format_time(job.created_at),
            format_value(job.result.get("val_accuracy")),
        )
    return table


def artifacts_table(artifacts: Sequence[Artifact]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("KIND", style="bold", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("FILE")
    hashed = any(a.sha256 for a in artifacts)
    if hashed:
        table.add_column("SHA-256", no_wrap=True)
    for artifact in artifacts:
        size = "not visible" if artifact.size_bytes is None else f"{artifact.size_bytes:,} B"
        cells = [artifact.kind, size, format_time(artifact.created_at), Text(artifact.uri)]
        if hashed:
            cells.append(artifact.sha256[:12])
        table.add_row(*cells)
    return table


def tasks_table(tasks: Sequence[Task]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("TASK", justify="right")
    table.add_column("STATE")
    table.add_column("ATTEMPT", justify="right")
    table.add_column("AGENT")
    table.add_column("ERROR", style="red", overflow="fold")
    for task in tasks:
        table.add_row(
            str(task.index),
            state_text(task.state),
            f"{task.attempt}/{task.max_attempts}",
            Text(task.agent_id or "-"),
            Text(task.error),
        )
    return table


def history_table(events: Sequence[JobEvent]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("TIME", style="dim", no_wrap=True)
    table.add_column("EVENT")
    table.add_column("TASK/ATTEMPT", style="dim")
    table.add_column("MESSAGE", overflow="fold")
    for event in events:
        where = f"{event.task_id[:8]}/{event.attempt}" if event.task_id else ""
        table.add_row(format_time(event.time), Text(event.kind), where, Text(event.message))
    return table


def key_value_table(values: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in values.items():
        table.add_row(key, value if isinstance(value, Text) else Text(format_value(value)))
    return table


def job_detail(job: Job) -> RenderableType:
    """Everything `matrec-ctl show` prints about one job.

    Text from the coordinator goes in as Text, never as markup: "[x]" in a message stays "[x]".
    """
    state = state_text(job.state)
    if job.cancel_requested and not job.finished:
        state.append(" (cancel requested)", style="magenta")
    summary: dict[str, Any] = {
        "id": job.id,
        "name": job.name or "-",
        "kind": job.kind,
        "state": state,
        "owner": Text(job.owner or "-"),
        "created": format_time(job.created_at),
        "started": format_time(job.started_at),
        "finished": format_time(job.finished_at),
        "duration": format_duration(job_duration(job)),
        "resources": format_resources(job.spec.resources),
        "max attempts": job.spec.max_attempts,
    }
    if job.spec.labels:
        summary["labels"] = ", ".join(f"{k}={v}" for k, v in sorted(job.spec.labels.items()))
    if job.cancelled_by:
        summary["cancelled by"] = Text(job.cancelled_by)
    if job.error:
        summary["error"] = Text(job.error, style="red")
    parts: list[RenderableType] = [
        Panel(key_value_table(summary), title="job", title_align="left", box=box.ROUNDED),
        Panel(
            key_value_table(dict(sorted(job.spec.config.items()))),
            title="config",
            title_align="left",
        ),
    ]
    if job.tasks:
        parts.append(Panel(tasks_table(job.tasks), title="tasks", title_align="left"))
    if job.history:
        parts.append(Panel(history_table(job.history), title="history", title_align="left"))
    if job.result:
        result = dict(job.result)
        evaluation = _evaluation_of(result)
        if evaluation is not None:
            del result["evaluation"]
        parts.append(Panel(key_value_table(result), title="result", title_align="left"))
        if evaluation is not None:
            parts.append(Panel(evaluation_view(evaluation), title="evaluation", title_align="left"))
    return Group(*parts)


def _evaluation_of(result: Mapping[str, Any]) -> Evaluation | None:
    """The result's evaluation; None when it has none or it is malformed (then it stays in the
    result panel as it came)."""
    try:
        return Evaluation.from_result(result)
    except EvaluationMissingError:
        return None


def evaluation_view(evaluation: Evaluation) -> RenderableType:
    """Summary figures, a per-class table and the confusion matrix."""
    summary = key_value_table(
        {
            "accuracy": f"{evaluation.accuracy:.4f}",
            "macro-F1": f"{evaluation.macro_f1:.4f}",
            f"top-{evaluation.top_k} accuracy": f"{evaluation.top_k_accuracy:.4f}",
            "images": evaluation.support,
        }
    )
    return Group(summary, Text(""), per_class_table(evaluation), confusion_table(evaluation))


def per_class_table(evaluation: Evaluation) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="per class", title_justify="left")
    table.add_column("CLASS", no_wrap=True)
    for column in ("PRECISION", "RECALL", "F1", "SUPPORT"):
        table.add_column(column, justify="right", no_wrap=True)
    for name in evaluation.classes:
        metrics = evaluation.per_class.get(name)
        if metrics is None:
            table.add_row(Text(name), "-", "-", "-", "-")
            continue
        table.add_row(
            Text(name),
            f"{metrics.precision:.3f}",
            f"{metrics.recall:.3f}",
            f"{metrics.f1:.3f}",
            str(metrics.support),
        )
    return table


def confusion_table(evaluation: Evaluation) -> Table:
    """Rows are the true classes, columns the predicted ones; the diagonal (right) is green."""
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, title="confusion matrix", title_justify="left"
    )
    table.add_column("TRUE \\ PREDICTED", style="dim", no_wrap=True)
    for name in evaluation.classes:
        table.add_column(Text(name), justify="right", no_wrap=True)
    for i, row in enumerate(evaluation.confusion_matrix):
        label = evaluation.classes[i] if i < len(evaluation.classes) else str(i)
        cells = [
            Text(str(count), style=("bold green" if i == j else "red" if count else "dim"))
            for j, count in enumerate(row)
        ]
        table.add_row(Text(label), *cells)
    return table


def agents_table(agents: Sequence[Agent]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("NAME", style="bold", no_wrap=True)
    table.add_column("ID", style="dim")
    table.add_column("HOST")
    table.add_column("STATE")
    table.add_column("CPUS free/total", justify="right")
    table.add_column("GPUS free/total", justify="right")
    table.add_column("TASKS", justify="right")
    table.add_column("LAST SEEN")
    table.add_column("VERSION", style="dim")
    for agent in agents:
        table.add_row(
            Text(agent.name),
            agent.id,
            Text(agent.hostname),
            state_text(agent.state),
            f"{agent.free.cpus:g}/{agent.total.cpus:g}",
            f"{agent.free.gpus}/{agent.total.gpus}",
            str(len(agent.running_task_ids)),
            format_time(agent.last_seen),
            agent.version or "-",
        )
    return table
