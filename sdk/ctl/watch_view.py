"""Following a job: the state folded from WatchJob events, a Rich live view and a plain printer.

Progress comes from the training metrics: the "epoch" metric (epochs completed, sent at each epoch
end with the global step) gives the steps per epoch, and the newest step of any metric says how
far the current epoch is. The speed is measured over the current attempt only, so a task resumed
from a checkpoint after a requeue gets an honest ETA.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from matrec.sdk.ctl.render import (
    format_duration,
    format_time,
    format_value,
    job_duration,
    state_text,
)
from matrec.sdk.ctl.terminal_chart import sparkline
from matrec.sdk.types import (
    HistoryEntry,
    Job,
    JobEvent,
    JobUpdate,
    LogLine,
    LogsEvent,
    Metric,
    MetricsEvent,
    WatchEvent,
)
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

#: (metric key, title) of the live view's latest metrics: train loss as of the newest step.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("train/loss", "train loss"),
    ("train/accuracy", "train acc"),
    ("val/loss", "val loss"),
    ("val/accuracy", "val acc"),
    ("lr", "lr"),
)
#: Series drawn as terminal charts in the live view (per step for train loss, per epoch else).
CHART_KEYS: tuple[tuple[str, str], ...] = (
    ("train/loss", "train loss"),
    ("val/loss", "val loss"),
    ("train/accuracy", "train acc"),
    ("val/accuracy", "val acc"),
)
CHART_WIDTH = 40
#: The same for the line printed at each epoch end: train loss averaged over the epoch.
EPOCH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("train/loss_epoch", "train loss"),
    *METRIC_COLUMNS[1:],
)


@dataclass(frozen=True)
class Progress:
    epoch: int  # epochs completed
    epochs: int | None  # epochs planned, if the config says
    fraction: float | None  # of the whole task; None until an epoch has ended
    eta_seconds: float | None


@dataclass
class TaskMetrics:
    """The metrics of one task's newest attempt."""

    attempt: int
    latest: dict[str, Metric] = field(default_factory=dict)
    first: Metric | None = None  # earliest step of this attempt: where the speed is measured from
    newest: Metric | None = None  # newest step of this attempt
    newest_arrival: float = 0.0  # time.monotonic() when `newest` arrived

    def add(self, metric: Metric, arrival: float) -> None:
        current = self.latest.get(metric.key)
        if current is None or metric.step >= current.step:
            self.latest[metric.key] = metric
        if self.first is None or metric.step < self.first.step:
            self.first = metric
        if self.newest is None or metric.step > self.newest.step:
            self.newest = metric
            self.newest_arrival = arrival

    def value(self, key: str) -> float | None:
        metric = self.latest.get(key)
        return None if metric is None else metric.value

    def progress(self, epochs: int | None, now: float) -> Progress:
        epoch_metric = self.latest.get("epoch")
        epoch = int(epoch_metric.value) if epoch_metric else 0
        if epochs is None or epoch_metric is None or epoch < 1 or self.newest is None:
            return Progress(epoch, epochs, None, None)
        total_steps = epoch_metric.step / epoch * epochs
        fraction = min(self.newest.step / total_steps, 1.0)
        return Progress(epoch, epochs, fraction, self._eta(total_steps, now))

    def _eta(self, total_steps: float, now: float) -> float | None:
        first, newest = self.first, self.newest
        if first is None or newest is None or first.time is None or newest.time is None:
            return None
        seconds = (newest.time - first.time).total_seconds()
        if seconds <= 0 or newest.step <= first.step:
            return None
        steps_per_second = (newest.step - first.step) / seconds
        # Metric times come from the agent's clock; the countdown since then uses ours.
        remaining = (total_steps - newest.step) / steps_per_second - (now - self.newest_arrival)
        return max(remaining, 0.0)


class WatchState:
    """What a watcher knows about a job, folded from the events of one WatchJob stream."""

    def __init__(self, log_lines: int = 8, history_lines: int = 6) -> None:
        self.job: Job | None = None
        self.history: deque[JobEvent] = deque(maxlen=history_lines)
        self.logs: deque[LogLine] = deque(maxlen=log_lines)
        self.tasks: dict[str, TaskMetrics] = {}
        # (task, key) -> step -> (attempt, value): a retried attempt's point replaces the old one.
        self.curves: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}
        self.lock = threading.Lock()

    def apply(self, event: WatchEvent, arrival: float | None = None) -> None:
        arrival = time.monotonic() if arrival is None else arrival
        with self.lock:
            if isinstance(event, JobUpdate):
                self.job = event.job
            elif isinstance(event, HistoryEntry):
                self.history.append(event.event)
            elif isinstance(event, MetricsEvent):
                for metric in event.metrics:
                    self._add_metric(metric, arrival)
            elif isinstance(event, LogsEvent):
                self.logs.extend(event.lines)

    def _add_metric(self, metric: Metric, arrival: float) -> None:
        if any(metric.key == key for key, _ in CHART_KEYS):
            curve = self.curves.setdefault((metric.task_id, metric.key), {})
            known = curve.get(metric.step)
            if known is None or metric.attempt >= known[0]:
                curve[metric.step] = (metric.attempt, metric.value)
        task = self.tasks.get(metric.task_id)
        if task is None or metric.attempt > task.attempt:
            task = self.tasks[metric.task_id] = TaskMetrics(metric.attempt)
        elif metric.attempt < task.attempt:
            return  # late metrics of an attempt that has been superseded
        task.add(metric, arrival)

    @property
    def epochs(self) -> int | None:
        if self.job is None:
            return None
        epochs = self.job.spec.config.get("epochs")
        return int(epochs) if isinstance(epochs, int | float) else None

    def task_label(self, task_id: str) -> str:
        if self.job is not None:
            for task in self.job.tasks:
                if task.id == task_id:
                    return f"task {task.index}"
        return f"task {task_id[:8]}"

    def curve(self, task_id: str, key: str) -> list[float]:
        """The values of one series, in step order."""
        points = self.curves.get((task_id, key), {})
        return [points[step][1] for step in sorted(points)]

    def progress(self, task_id: str, now: float | None = None) -> Progress | None:
        metrics = self.tasks.get(task_id)
        if metrics is None:
            return None
        return metrics.progress(self.epochs, time.monotonic() if now is None else now)


# -- the live view -----------------------------------------------------------------------------


def render(state: WatchState, show_logs: bool) -> RenderableType:
    with state.lock:
        job = state.job
        if job is None:
            return Text("waiting for the coordinator…", style="dim")
        now = time.monotonic()
        parts: list[RenderableType] = [_header(job), _tasks(state, job, now)]
        if state.tasks:
            parts.append(_metrics(state, job))
        charts = _charts(state, job)
        if charts.row_count:
            parts.append(charts)
        if state.history:
            parts.append(_history(state))
        if show_logs:
            parts.append(_logs(state))
    title = Text.assemble((job.name or job.id, "bold"), f" · {job.kind}")
    return Panel(Group(*parts), title=title, title_align="left", box=box.ROUNDED)


def _header(job: Job) -> Text:
    text = Text.assemble("job ", (job.id, "bold"), "  ", state_text(job.state))
    if job.cancel_requested and not job.finished:
        text.append(" (cancel requested)", style="magenta")
    if job.started_at is not None:
        text.append(f"  elapsed {format_duration(job_duration(job))}", style="dim")
    if job.error:
        text.append(f"\n{job.error}", style="red")
    return text


def _tasks(state: WatchState, job: Job, now: float) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    for title in ("TASK", "STATE", "ATTEMPT", "AGENT", "PROGRESS", "EPOCH", "ETA"):
        table.add_column(title, no_wrap=True)
    for task in job.tasks:
        progress = state.progress(task.id, now)
        bar: RenderableType = ""
        epoch = eta = ""
        if progress is not None and task.state in ("assigned", "running"):
            # total=None pulses: the steps per epoch are unknown until the first epoch ends.
            bar = ProgressBar(
                total=None if progress.fraction is None else 1.0,
                completed=progress.fraction or 0.0,
                width=30,
            )
            eta = format_duration(progress.eta_seconds)
        if progress is not None:
            epoch = f"{progress.epoch}/{progress.epochs or '?'}"
            if progress.fraction is not None:
                epoch += f" · {progress.fraction:.0%}"
        table.add_row(
            str(task.index),
            state_text(task.state),
            f"{task.attempt}/{task.max_attempts}",
            Text(task.agent_id or "-"),
            bar,
            epoch,
            eta,
        )
    return table


def _metrics(state: WatchState, job: Job) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.add_column("TASK")
    for _, title in METRIC_COLUMNS:
        table.add_column(title.upper(), justify="right")
    for task in job.tasks:
        metrics = state.tasks.get(task.id)
        if metrics is not None:
            values = [format_value(metrics.value(key)) for key, _ in METRIC_COLUMNS]
            table.add_row(str(task.index), *values)
    return table


def _charts(state: WatchState, job: Job) -> Table:
    """One row per series with at least two points: its curve, first, min/max and last value."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("TASK", "SERIES", "CURVE", "FIRST", "MIN", "MAX", "LAST"):
        table.add_column(
            title,
            no_wrap=True,
            justify="right" if title in ("FIRST", "MIN", "MAX", "LAST") else "left",
        )
    for task in job.tasks:
        for key, title in CHART_KEYS:
            values = state.curve(task.id, key)
            if len(values) < 2:
                continue
            table.add_row(
                str(task.index),
                title,
                Text(sparkline(values, CHART_WIDTH), style="cyan"),
                format_value(values[0]),
                format_value(min(values)),
                format_value(max(values)),
                format_value(values[-1]),
            )
    return table


def _history(state: WatchState) -> Table:
    table = Table.grid(padding=(0, 1))
    for event in state.history:
        table.add_row(
            Text(format_time(event.time), style="dim"),
            Text(event.kind, style="bold"),
            Text(event.message),
        )
    return table


def _logs(state: WatchState) -> RenderableType:
    if not state.logs:
        return Text("no log lines yet", style="dim")
    lines = Text(no_wrap=True, overflow="ellipsis")
    for index, line in enumerate(state.logs):
        if index:
            lines.append("\n")
        lines.append(f"{state.task_label(line.task_id)}| ", style="dim")
        lines.append(line.text)
    return Panel(lines, title="logs", title_align="left", box=box.SIMPLE)


def follow_live(events: Iterable[WatchEvent], console: Console, show_logs: bool) -> Job | None:
    """Show the live view until the events end; return the last state of the job."""
    state = WatchState()
    with Live(
        get_renderable=lambda: render(state, show_logs),
        console=console,
        refresh_per_second=4,
    ):
        for event in events:
            state.apply(event)
    return state.job


# -- plain lines, for logs and pipes ----------------------------------------------------------


class PlainPrinter:
    """One line per change: job state, history entries, epoch ends and (optionally) log lines."""

    def __init__(self, console: Console, show_logs: bool) -> None:
        self.console = console
        self.show_logs = show_logs
        self.state = WatchState()
        self._job_state: str | None = None
        self._printed_epochs: set[tuple[str, int, int]] = set()

    def handle(self, event: WatchEvent) -> None:
        state = self.state
        state.apply(event)
        if isinstance(event, JobUpdate) and event.job.state != self._job_state:
            self._job_state = event.job.state
            self._print(Text.assemble("job ", event.job.id, ": ", state_text(event.job.state)))
        elif isinstance(event, HistoryEntry):
            entry = event.event
            where = f" [{state.task_label(entry.task_id)}]" if entry.task_id else ""
            self._print(f"{format_time(entry.time)} {entry.kind}{where}: {entry.message}")
        elif isinstance(event, MetricsEvent):
            for metric in event.metrics:
                if metric.key == "epoch":
                    self._print_epoch(metric)
        elif isinstance(event, LogsEvent) and self.show_logs:
            for line in event.lines:
                self._print(Text(f"{state.task_label(line.task_id)}| {line.text}", style="dim"))

    def _print_epoch(self, metric: Metric) -> None:
        key = (metric.task_id, metric.attempt, int(metric.value))
        task = self.state.tasks.get(metric.task_id)
        if key in self._printed_epochs or task is None:
            return
        self._printed_epochs.add(key)
        values = ", ".join(
            f"{title} {format_value(task.value(name))}"
            for name, title in EPOCH_COLUMNS
            if task.value(name) is not None
        )
        epochs = self.state.epochs
        self._print(
            f"{self.state.task_label(metric.task_id)} epoch {int(metric.value)}/{epochs or '?'}: "
            f"{values}"
        )

    def _print(self, line: str | Text) -> None:
        self.console.print(line, soft_wrap=True, highlight=False, markup=False)


def follow_plain(events: Iterable[WatchEvent], console: Console, show_logs: bool) -> Job | None:
    printer = PlainPrinter(console, show_logs)
    for event in events:
        printer.handle(event)
    return printer.state.job


def follow(events: Iterable[WatchEvent], console: Console, show_logs: bool) -> Job | None:
    """A live view on a terminal, plain lines otherwise; return the job's last state."""
    if console.is_terminal:
        return follow_live(events, console, show_logs)
    return follow_plain(events, console, show_logs)


def summary(job: Job) -> Text:
    """The closing line of a watch: outcome, duration and, on success, the key results."""
    text = Text.assemble("job ", (job.id, "bold"), " ", state_text(job.state))
    duration = job_duration(job)
    if duration is not None:
        text.append(f" after {format_duration(duration)}")
    if job.state == "succeeded":
        accuracy = job.result.get("val_accuracy")
        if accuracy is not None:
            text.append(" · validation accuracy ")
            text.append(format_value(accuracy), style="bold green")
        model_path = job.result.get("model_path")
        if model_path:
            text.append(f" · model {model_path}")
    elif job.error:
        text.append(f": {job.error}", style="red")
    return text
