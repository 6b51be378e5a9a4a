"""`matrec-ctl top`: the cluster at a glance, redrawn from the coordinator's WatchCluster stream."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from matrec.sdk.types import Agent, ClusterSnapshot, Job
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATE_STYLES = {
    "connected": "green",
    "draining": "yellow",
    "disconnected": "dim",
    "queued": "yellow",
    "running": "cyan",
}


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f}"


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "-"
    seconds = int((now - since).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def summary_line(snapshot: ClusterSnapshot) -> str:
    connected = sum(1 for a in snapshot.agents if a.state == "connected")
    states = ", ".join(f"{n} {s}" for s, n in sorted(snapshot.jobs_by_state.items())) or "no jobs"
    return (
        f"agents {connected}/{len(snapshot.agents)} connected · queue {snapshot.queue_depth} · "
        f"jobs: {states} · {snapshot.metric_points_per_second:.1f} metric pts/s"
    )


def _agent_row(agent: Agent) -> list[RenderableType]:
    usage = agent.usage
    gpu = "-"
    if agent.total.gpus:
        gpu = f"{agent.free.gpus}/{agent.total.gpus} free"
        if usage and usage.gpu_utilization:
            load = " ".join(f"{u:.0f}%" for u in usage.gpu_utilization)
            mem = " ".join(_gib(m) for m in usage.gpu_memory_used_bytes)
            gpu += f" · {load} · {mem} GiB"
    return [
        Text(agent.name),
        Text(agent.state, style=STATE_STYLES.get(agent.state, "")),
        f"{agent.free.cpus:g}/{agent.total.cpus:g}",
        f"{usage.cpu_percent:.0f}%" if usage else "-",
        f"{_gib(usage.memory_used_bytes)}/{_gib(agent.total.memory_bytes)}" if usage else "-",
        gpu,
        str(len(agent.running_task_ids)),
    ]


def _job_row(job: Job, agent_names: dict[str, str], now: datetime) -> list[RenderableType]:
    task = job.tasks[0] if job.tasks else None
    agent = agent_names.get(task.agent_id, task.agent_id) if task and task.agent_id else "-"
    attempt = f"{task.attempt}/{task.max_attempts}" if task else "-"
    return [
        job.id,
        job.spec.name or "-",
        job.spec.kind,
        Text(job.state, style=STATE_STYLES.get(job.state, "")),
        attempt,
        agent or "-",
        _age(job.created_at, now),
    ]


def render_top(snapshot: ClusterSnapshot) -> RenderableType:
    now = snapshot.time or datetime.now(UTC)
    agents = Table(title="agents", title_justify="left", expand=True, box=None)
    for column in ("NAME", "STATE", "CPUS FREE", "CPU", "MEM GiB", "GPUS", "TASKS"):
        agents.add_column(column, no_wrap=column in ("STATE", "TASKS"))
    for agent in snapshot.agents:
        agents.add_row(*_agent_row(agent))
    jobs = Table(title="active jobs", title_justify="left", expand=True, box=None)
    for column in ("JOB", "NAME", "KIND", "STATE", "ATTEMPT", "AGENT", "AGE"):
        jobs.add_column(column, no_wrap=column in ("JOB", "STATE"))
    names = {a.id: a.name for a in snapshot.agents}
    for job in snapshot.active_jobs:
        jobs.add_row(*_job_row(job, names, now))
    if not snapshot.active_jobs:
        jobs.add_row(Text("no queued or running jobs", style="dim"), "", "", "", "", "", "")
    return Group(Text(summary_line(snapshot), style="bold"), Text(""), agents, Text(""), jobs)


def follow_top(snapshots: Iterable[ClusterSnapshot], console: Console) -> None:
    """Redraw on every snapshot; when output is not a terminal, print one line per snapshot."""
    if not console.is_terminal:
        for snapshot in snapshots:
            console.print(summary_line(snapshot), soft_wrap=True)
        return
    with Live(console=console, auto_refresh=False, transient=False) as live:
        for snapshot in snapshots:
            live.update(render_top(snapshot), refresh=True)
