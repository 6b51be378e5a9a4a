"""What `matrec-ctl active-learning` and `matrec-ctl monitor` show: the Rich tables and panels
of projects, batches, candidates and triggers, and the monitor view that shows the retraining
triggers' checks live (lines in a pipe). These functions render what they are given; fetching
is the caller's (`active_learning_monitor`, the commands).

Rich and the SDK's heavier modules are imported inside the functions, so that importing this
module costs nothing at `matrec-ctl --help`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# The monitor's data, and its fetching, live apart; the names stay importable from here.
from matrec.sdk.ctl.active_learning_monitor import MonitorCheck, ProjectState
from matrec.sdk.ctl.active_learning_monitor import check_projects as check_projects

if TYPE_CHECKING:
    from matrec.sdk.labelling_files import LabelRow
    from matrec.sdk.types import (
        Candidate,
        Job,
        LabellingBatch,
        LearningProject,
        RetrainingTrigger,
    )
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

#: Uncertainty measures shown beside each candidate, when the scoring has them.
MEASURE_COLUMNS = (("entropy", "ENTROPY"), ("margin", "MARGIN"), ("bald", "BALD"))
#: Newest triggers the monitor view shows.
MONITOR_TRIGGERS = 10

BATCH_STYLES = {"open": "yellow", "partially_labelled": "cyan", "done": "bold green"}
TRIGGER_STYLES = {
    "fired": "bold yellow",
    "retraining": "bold cyan",
    "done": "bold green",
    "failed": "bold red",
}


# -- rendering ---------------------------------------------------------------------------------


def _styled(state: str, styles: dict[str, str]) -> Text:
    from rich.text import Text

    return Text(state, style=styles.get(state, ""))


def format_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def trigger_summary(trigger: RetrainingTrigger) -> str:
    """What the trigger measured, in a few words."""
    from matrec.sdk.ctl.render import format_duration, format_value

    d = trigger.details
    if trigger.kind == "feedback_count":
        return (
            f"{format_value(d.get('pending_feedback'))} new labels "
            f"≥ {format_value(d.get('threshold'))}"
        )
    if trigger.kind == "time":
        return (
            f"{format_duration(d.get('seconds_since_training'))} since training "
            f"≥ {format_duration(d.get('max_age_seconds'))}"
        )
    if trigger.kind == "uncertainty":
        return (
            f"mean entropy {_number(d.get('mean_normalised_entropy'))} "
            f"≥ {_number(d.get('threshold'))} over {format_value(d.get('samples'))} samples"
        )
    if trigger.kind == "drift":
        text = f"outputs p={_number(d.get('output_p_value'))}"
        if d.get("embedding_p_value") is not None:
            text += f", embeddings p={_number(d.get('embedding_p_value'))}"
        return text + f", alpha {format_value(d.get('alpha'))}"
    return ", ".join(f"{key}={format_value(value)}" for key, value in sorted(d.items()))


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "-"


def candidates_table(batch: LabellingBatch) -> Table:
    from matrec.sdk.ctl.render import format_time
    from rich import box
    from rich.table import Table
    from rich.text import Text

    measures = [
        (key, title)
        for key, title in MEASURE_COLUMNS
        if any(key in c.scores for c in batch.candidates)
    ]
    labelled = any(c.label for c in batch.candidates)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("SAMPLE", overflow="fold")
    table.add_column("PREDICTED", no_wrap=True)
    table.add_column("SCORE", justify="right", no_wrap=True)
    for _, title in measures:
        table.add_column(title, justify="right", no_wrap=True)
    if labelled:
        table.add_column("LABELLER", no_wrap=True)
        table.add_column("LABEL", style="bold", no_wrap=True)
        table.add_column("LABELLED", no_wrap=True)
    for number, candidate in enumerate(batch.candidates, start=1):
        row: list[RenderableType] = [
            str(number),
            Text(candidate.sample_id),
            Text(candidate.predicted_class),
            f"{candidate.score:.4f}",
            *(_measure(candidate, key) for key, _ in measures),
        ]
        if labelled:
            row += [
                Text(candidate.labelled_by if candidate.label else ""),
                Text(candidate.label or "-"),
                format_time(candidate.labelled_at) if candidate.label else "",
            ]
        table.add_row(*row)
    return table


def _measure(candidate: Candidate, key: str) -> str:
    value = candidate.scores.get(key)
    return "-" if value is None else f"{value:.4f}"


def batch_header(batch: LabellingBatch) -> Text:
    from rich.text import Text

    return Text.assemble(
        "batch ",
        (batch.id, "bold"),
        f" · {batch.strategy} · {batch.labelled}/{len(batch.candidates)} labelled · ",
        _styled(batch.state, BATCH_STYLES),
        f" · project {batch.project_id} · scoring {batch.scoring_job_id}",
    )


def projects_table(projects: Sequence[LearningProject]) -> Table:
    from matrec.sdk.ctl.render import format_time
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ID", style="bold", no_wrap=True)
    table.add_column("NAME")
    table.add_column("MODEL", no_wrap=True)
    table.add_column("VAL ACC", justify="right", no_wrap=True)
    table.add_column("CLASSES", justify="right", no_wrap=True)
    table.add_column("FEEDBACK new/total", justify="right", no_wrap=True)
    table.add_column("STRATEGY", no_wrap=True)
    table.add_column("LAST TRAINED", no_wrap=True)
    for project in projects:
        current = project.current
        table.add_row(
            project.id,
            Text(project.spec.get("name") or "-"),
            f"v{project.current_version}" if current else "-",
            format_accuracy(current.val_accuracy if current else None),
            str(len(project.classes)),
            f"{project.pending_feedback}/{project.total_feedback}",
            str(project.spec.get("strategy", "-")),
            format_time(project.last_trained_at),
        )
    return table


def versions_table(project: LearningProject) -> Table:
    from matrec.sdk.ctl.render import format_time, state_text
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("VERSION", "JOB", "STATE", "VAL ACC", "LABELS", "TRIGGER", "CREATED"):
        table.add_column(title, no_wrap=True, justify="right" if title == "VAL ACC" else "left")
    for version in project.versions:
        mark = " (current)" if version.version == project.current_version else ""
        table.add_row(
            f"v{version.version}{mark}",
            version.job_id or "-",
            state_text(version.state),
            format_accuracy(version.val_accuracy),
            str(version.feedback_samples),
            version.trigger_id or ("-" if version.version == 1 else "manual"),
            format_time(version.created_at),
        )
    return table


def batches_table(batches: Sequence[LabellingBatch], sizes: dict[str, int]) -> Table:
    from matrec.sdk.ctl.render import format_time
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("BATCH", "STRATEGY", "LABELLED", "STATE", "BY", "CREATED", "DONE"):
        table.add_column(title, no_wrap=True)
    for batch in batches:
        table.add_row(
            batch.id,
            batch.strategy,
            f"{batch.labelled}/{sizes.get(batch.id, len(batch.candidates))}",
            _styled(batch.state, BATCH_STYLES),
            batch.created_by or "-",
            format_time(batch.created_at),
            format_time(batch.closed_at) if batch.closed_at else "",
        )
    return table


def triggers_table(
    triggers: Sequence[RetrainingTrigger],
    *,
    project_column: bool = False,
    marked: Collection[str] = (),
) -> Table:
    """One row per trigger; the ids in `marked` get a star."""
    from matrec.sdk.ctl.render import format_time
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("TRIGGER", no_wrap=True)
    if project_column:
        table.add_column("PROJECT", no_wrap=True)
    for title in ("KIND", "STATE", "FIRED", "BY", "DETAILS", "JOB"):
        table.add_column(title, no_wrap=title != "DETAILS", overflow="fold")
    for trigger in triggers:
        row: list[RenderableType] = [f"{trigger.id} *" if trigger.id in marked else trigger.id]
        if project_column:
            row.append(trigger.project_id)
        row += [
            trigger.kind,
            _styled(trigger.state, TRIGGER_STYLES),
            format_time(trigger.fired_at),
            Text(trigger.fired_by or "monitor"),
            Text(trigger_summary(trigger)),
            trigger.job_id or "-",
        ]
        table.add_row(*row)
    return table


def _job_state(job_id: str, jobs: Mapping[str, Job | None]) -> Text:
    from matrec.sdk.ctl.render import state_text
    from rich.text import Text

    if not job_id:
        return Text("not submitted", style="dim")
    job = jobs.get(job_id)
    if job is None:
        return Text(f"{job_id} (gone)", style="dim")
    return Text.assemble(job_id, " ", state_text(job.state))


def project_detail(
    project: LearningProject,
    batches: Sequence[LabellingBatch],
    sizes: dict[str, int],
    triggers: Sequence[RetrainingTrigger],
    jobs: Mapping[str, Job | None],
) -> RenderableType:
    """Everything `status PROJECT` prints: settings, versions, batches and triggers. `jobs`
    holds the project's scoring jobs by id (None: gone), as `scoring_jobs` fetches them."""
    from matrec.sdk.ctl.render import format_time, key_value_table
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    spec = project.spec
    policy = spec.get("triggers") or {}
    summary: dict[str, Any] = {
        "id": project.id,
        "name": Text(spec.get("name") or "-"),
        "owner": Text(project.owner or "-"),
        "created": format_time(project.created_at),
        "dataset": Text(str(spec.get("dataset_path", "-"))),
        "pool": Text(str(spec.get("pool_path", "-"))),
        "started from": spec.get("model_job_id", "-"),
        "model": (
            f"v{project.current_version}" if project.current_version else "none succeeded yet"
        ),
        "classes": Text(", ".join(project.classes) or "-"),
        "feedback": f"{project.pending_feedback} new (not yet trained on), "
        f"{project.total_feedback} in all",
        "last trained": format_time(project.last_trained_at),
        "strategy": spec.get("strategy", "-"),
        "pool scoring": _job_state(project.pool_scoring_job_id, jobs),
        "drift reference": _job_state(project.reference_scoring_job_id, jobs),
        "triggers": Text(policy_text(policy)),
    }
    parts: list[RenderableType] = [
        Panel(key_value_table(summary), title="project", title_align="left", box=box.ROUNDED),
        Panel(versions_table(project), title="model versions", title_align="left"),
    ]
    if batches:
        parts.append(Panel(batches_table(batches, sizes), title="batches", title_align="left"))
    else:
        parts.append(Text(f"no batches; make one with `select {project.id}`", style="dim"))
    if triggers:
        parts.append(Panel(triggers_table(triggers), title="triggers", title_align="left"))
    else:
        parts.append(Text("no triggers fired", style="dim"))
    return Group(*parts)


def policy_text(policy: dict[str, Any]) -> str:
    """The project's trigger settings in one line; thresholds of 0 are off."""
    from matrec.sdk.ctl.render import format_duration, format_value

    parts = []
    if policy.get("feedback_threshold"):
        parts.append(f"{format_value(policy['feedback_threshold'])} new labels")
    if policy.get("max_age_seconds"):
        parts.append(f"{format_duration(policy['max_age_seconds'])} since training")
    if policy.get("uncertainty_threshold"):
        parts.append(f"mean entropy ≥ {format_value(policy['uncertainty_threshold'])}")
    if policy.get("drift"):
        parts.append(f"drift (alpha {format_value(policy.get('drift_alpha'))})")
    text = ", ".join(parts) or "none"
    return text + ("; retrains by itself" if policy.get("auto_retrain") else "; retrain by hand")


def failed_rows_table(failed: Sequence[tuple[LabelRow, str]]) -> Table:
    """The rows of a batch file the coordinator refused, each with its reason."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="failed", title_justify="left")
    for title in ("ROW", "SAMPLE", "LABEL", "REASON"):
        table.add_column(title, overflow="fold", no_wrap=title == "ROW")
    for row, reason in failed:
        table.add_row(row.where, Text(row.sample_id), Text(row.label), Text(reason, "red"))
    return table


# -- the monitor -------------------------------------------------------------------------------


def render_monitor(check: MonitorCheck, footer: str = "") -> RenderableType:
    """Projects, the newest triggers (fired in this check marked) and the retraining jobs."""
    from matrec.sdk.ctl.render import format_time, state_text
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    fired_now = {t.id for t in check.fired}
    projects = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("PROJECT", "NAME", "MODEL", "VAL ACC", "NEW FEEDBACK", "WAITING", "TRIGGERS"):
        projects.add_column(title, no_wrap=title not in ("NAME", "TRIGGERS"))
    for state in check.projects:
        project = state.project
        current = project.current
        threshold = (project.spec.get("triggers") or {}).get("feedback_threshold")
        pending = f"{project.pending_feedback}"
        if threshold:
            pending += f" / {threshold:g}"
        waiting = sum(1 for t in state.triggers if t.state == "fired")
        projects.add_row(
            project.id,
            Text(project.spec.get("name") or "-"),
            f"v{project.current_version}" if current else "-",
            format_accuracy(current.val_accuracy if current else None),
            pending,
            Text(str(waiting), style="bold yellow" if waiting else "dim"),
            Text(policy_text(project.spec.get("triggers") or {}), style="dim"),
        )
    newest = sorted(
        (t for s in check.projects for t in s.triggers),
        key=lambda t: t.fired_at or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )[:MONITOR_TRIGGERS]
    header = Text.assemble(
        ("active learning", "bold"),
        f" · projects: {len(check.projects)} · checked {format_time(check.checked_at)}",
    )
    if check.fired:
        header.append(f" · {len(check.fired)} fired now", style="bold yellow")
    parts: list[RenderableType] = [header, projects]
    if newest:
        table = triggers_table(newest, project_column=True, marked=fired_now)
        table.title = "newest triggers (* fired in this check)"
        table.title_justify = "left"
        parts.append(table)
    else:
        parts.append(Text("no triggers fired yet", style="dim"))
    jobs = [(s.project, v) for s in check.projects for v in s.retraining]
    if jobs:
        table = Table(
            box=box.SIMPLE_HEAD, pad_edge=False, title="retraining jobs", title_justify="left"
        )
        for title in ("PROJECT", "VERSION", "JOB", "STATE", "VAL ACC", "LABELS", "TRIGGER"):
            table.add_column(title, no_wrap=True)
        for project, version in jobs[-MONITOR_TRIGGERS:]:
            table.add_row(
                project.id,
                f"v{version.version}",
                version.job_id or "-",
                state_text(version.state),
                format_accuracy(version.val_accuracy),
                str(version.feedback_samples),
                version.trigger_id or "manual",
            )
        parts.append(table)
    if footer:
        parts.append(Text(footer, style="dim"))
    return Panel(Group(*parts), box=box.ROUNDED)


def fired_line(trigger: RetrainingTrigger) -> str:
    return (
        f"project {trigger.project_id}: trigger {trigger.id} fired: {trigger.kind} "
        f"({trigger_summary(trigger)})"
    )


def _print_fired(out: Console, check: MonitorCheck) -> None:
    if not check.fired:
        out.print("no trigger fired", style="dim")
        return
    for trigger in check.fired:
        out.print(fired_line(trigger), highlight=False, markup=False)
        out.print(
            f"  retrain: matrec-ctl active-learning retrain {trigger.project_id} "
            f"--trigger {trigger.id}",
            style="dim",
            highlight=False,
            markup=False,
        )


@dataclass
class MonitorTally:
    """What a monitor run did, for its closing line."""

    checks: int = 0
    fired: int = 0


def run_monitor(
    check_now: Callable[[], MonitorCheck],
    out: Console,
    *,
    interval: float,
    once: bool,
    tally: MonitorTally,
) -> None:
    """Show `check_now()` (the triggers evaluated, `check_projects`) every `interval` seconds
    until interrupted; with `once`, one check's view and what fired. A live view on a
    terminal, lines in a pipe.

    The first check's errors end the run (an unknown project, no coordinator); later, an
    unreachable coordinator is shown and the next check tries again."""
    first = check_now()
    tally.checks, tally.fired = 1, len(first.fired)
    if once:
        out.print(render_monitor(first))
        _print_fired(out, first)
        return
    if out.is_terminal:
        _monitor_live(check_now, out, interval, first, tally)
    else:
        _monitor_plain(check_now, out, interval, first, tally)


def _next_check(
    check_now: Callable[[], MonitorCheck], tally: MonitorTally
) -> tuple[MonitorCheck | None, str]:
    """The next check, or the reason it could not be made."""
    from matrec.sdk.errors import CoordinatorUnavailableError

    try:
        check = check_now()
    except CoordinatorUnavailableError as exc:
        return None, str(exc)
    tally.checks += 1
    tally.fired += len(check.fired)
    return check, ""


def _monitor_live(
    check_now: Callable[[], MonitorCheck],
    out: Console,
    interval: float,
    latest: MonitorCheck,
    tally: MonitorTally,
) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    error = ""
    due = time.monotonic() + interval

    def view() -> RenderableType:
        seconds = max(0, round(due - time.monotonic()))
        footer = (
            f"next check in {seconds}s (every {interval:g}s) · {tally.checks} checks, "
            f"{tally.fired} triggers fired · Ctrl-C stops"
        )
        shown = render_monitor(latest, footer)
        return Group(shown, Text(f"error: {error}", style="bold red")) if error else shown

    with Live(get_renderable=view, console=out, refresh_per_second=2):
        while True:
            time.sleep(max(0.0, due - time.monotonic()))
            check, error = _next_check(check_now, tally)
            if check is not None:
                latest = check
            due = time.monotonic() + interval


def _monitor_plain(
    check_now: Callable[[], MonitorCheck],
    out: Console,
    interval: float,
    first: MonitorCheck,
    tally: MonitorTally,
) -> None:
    """One line per project to start with, then one per fired trigger and per retraining job
    that changed state."""
    from matrec.sdk.ctl.render import format_time

    def say(text: str, style: str = "") -> None:
        out.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    say(f"monitoring {len(first.projects)} projects, checking every {interval:g}s (Ctrl-C stops)")
    versions: dict[tuple[str, int], str] = {}
    check: MonitorCheck | None = first
    error = ""
    while True:
        if check is None:
            say(f"{format_time(datetime.now(UTC))} {error}; trying again in {interval:g}s", "red")
        else:
            stamp = format_time(check.checked_at)
            for state in check.projects:
                project = state.project
                if check is first:
                    say(f"{stamp} {_project_line(state)}")
                for version in state.retraining:
                    key = (project.id, version.version)
                    if versions.get(key) != version.state:
                        versions[key] = version.state
                        accuracy = (
                            f", val accuracy {format_accuracy(version.val_accuracy)}"
                            if version.val_accuracy is not None
                            else ""
                        )
                        say(
                            f"{stamp} project {project.id}: model v{version.version} "
                            f"(job {version.job_id}) {version.state}{accuracy}"
                        )
            for trigger in check.fired:
                say(f"{stamp} {fired_line(trigger)}", "bold")
        time.sleep(interval)
        check, error = _next_check(check_now, tally)


def _project_line(state: ProjectState) -> str:
    project = state.project
    current = project.current
    model = (
        f"model v{project.current_version} (val accuracy {format_accuracy(current.val_accuracy)})"
        if current
        else "no model yet"
    )
    waiting = sum(1 for t in state.triggers if t.state == "fired")
    return (
        f"project {project.id}: {model}, {project.pending_feedback} new labels of "
        f"{project.total_feedback}, {waiting} triggers waiting"
    )
