"""Rendering hyperparameter studies: tables for `matrec-ctl hpo`, the live view, plain lines.

Trials are listed best first (`Study.ranked`): completed trials by their objective, then pruned
ones by the value they had reached, then the running and failed ones by number. Every value
shown is the study's own number, formatted; nothing is recomputed here.

When a table is wider than the terminal, hyperparameter columns are dropped from the right (a
note says how many); the trial number, state, objective and job id always stay.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from matrec.sdk.ctl.render import format_duration, format_time, format_value, key_value_table
from matrec.sdk.types import Study, Trial
from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

STUDY_STYLES: dict[str, str] = {
    "running": "bold cyan",
    "completed": "bold green",
    "failed": "bold red",
    "cancelled": "magenta",
}
TRIAL_STYLES: dict[str, str] = {
    "running": "cyan",
    "completed": "green",
    "pruned": "yellow",
    "failed": "bold red",
    "cancelled": "magenta",
}
FINISHED_TRIAL_STATES = ("completed", "pruned", "failed", "cancelled")
#: Longest error text shown in a failed trial's state cell (the whole text is in `hpo show --json`).
SHORT_ERROR = 24
#: Significant digits of objective values (hyperparameters get format_value's 4).
OBJECTIVE_DIGITS = 6

# Measures tables to decide which hyperparameter columns fit; never printed to.
_MEASURE = Console(file=io.StringIO(), width=100_000, color_system=None)


# -- numbers and words -------------------------------------------------------------------------


def format_objective(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{OBJECTIVE_DIGITS}g}"


def format_param(value: Any) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format_value(value)
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={format_param(params[name])}" for name in sorted(params))


def state_text(state: str) -> Text:
    return Text(state, style=STUDY_STYLES.get(state, ""))


def short_error(error: str, limit: int = SHORT_ERROR) -> str:
    lines = error.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > limit or len(lines) > 1:
        return first[: limit - 1].rstrip() + "…"
    return first


def trial_state_text(trial: Trial) -> Text:
    """The state cell: completed; pruned @ rung 1 (resource 2); failed: <start of the error>."""
    style = TRIAL_STYLES.get(trial.state, "")
    if trial.state == "pruned" and trial.pruned_rung is not None:
        return Text(
            f"pruned @ rung {trial.pruned_rung} (resource {trial.pruned_resource})", style=style
        )
    if trial.state == "failed" and trial.error.strip():
        return Text(f"failed: {short_error(trial.error)}", style=style)
    return Text(trial.state, style=style)


def latest_value(trial: Trial) -> tuple[int, float] | None:
    """The newest intermediate report of a trial: (resource, value)."""
    if not trial.intermediate:
        return None
    newest = max(trial.intermediate, key=lambda v: (v.resource, v.step))
    return newest.resource, newest.value


def objective_text(trial: Trial, best: bool = False) -> Text:
    """The final value of a completed trial, the value reached by a pruned one, and for a running
    one its newest report with the resource ("0.4475 @ 3", dim)."""
    if trial.objective_value is not None:
        style = "bold green" if best else ("dim" if trial.state == "pruned" else "")
        return Text(format_objective(trial.objective_value), style=style)
    latest = latest_value(trial)
    if trial.state == "running" and latest is not None:
        resource, value = latest
        return Text(f"{format_objective(value)} @ {resource}", style="dim")
    return Text("-", style="dim")


def direction_arrow(study: Study) -> str:
    return "↑" if study.maximize else "↓"


def param_names(study: Study) -> list[str]:
    """The search space's parameters (sorted by name), then any other key a trial has."""
    names = sorted(study.spec.get("search_space") or {})
    extra = {name for trial in study.trials for name in trial.params} - set(names)
    return names + sorted(extra)


def max_trials(study: Study) -> int:
    return int(study.spec.get("max_trials") or 0) or len(study.trials)


def finished_trials(study: Study) -> int:
    return sum(1 for trial in study.trials if trial.state in FINISHED_TRIAL_STATES)


def trial_counts(study: Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    return counts


def counts_text(study: Study) -> str:
    """Trial counts, e.g. "1 running, 2 completed, 3 pruned", in the order trials move through."""
    counts = trial_counts(study)
    order = ("running", "completed", "pruned", "failed", "cancelled")
    return ", ".join(f"{counts[state]} {state}" for state in order if counts.get(state))


def pruner_text(study: Study) -> str:
    pruner = study.spec.get("pruner") or {}
    kind = pruner.get("kind", "none")
    if kind == "asha":
        return (
            f"asha (min resource {pruner.get('min_resource')}, "
            f"reduction factor {pruner.get('reduction_factor')})"
        )
    if kind == "median":
        return (
            f"median (after {pruner.get('min_resource')} reports, "
            f"against at least {pruner.get('min_trials')} trials)"
        )
    return str(kind)


def objective_label(study: Study) -> str:
    return f"{study.objective} ({study.spec.get('direction', 'maximize')})"


def best_text(study: Study) -> Text:
    """The best trial, e.g. "trial 3: 0.894973  score=0.895", or why there is none yet."""
    best = study.best
    if best is None:
        return Text("no completed trial yet", style="dim")
    text = Text.assemble(
        f"trial {best.number}: ",
        (format_objective(best.objective_value), "bold green"),
    )
    if best.params:
        text.append(f"  {format_params(best.params)}", style="dim")
    return text


def study_duration(study: Study) -> float | None:
    if study.created_at is None:
        return None
    end = study.finished_at or datetime.now(study.created_at.tzinfo)
    return (end - study.created_at).total_seconds()


# -- tables ------------------------------------------------------------------------------------


def _trial_rows(
    study: Study, trials: Sequence[Trial], names: Sequence[str]
) -> list[list[RenderableType]]:
    rows: list[list[RenderableType]] = []
    for trial in trials:
        best = trial.number == study.best_trial_number
        params = [
            Text(format_param(trial.params[name])) if name in trial.params else Text("-")
            for name in names
        ]
        rows.append(
            [
                Text(str(trial.number), style="bold" if best else ""),
                trial_state_text(trial),
                objective_text(trial, best=best),
                *params,
                Text(trial.job_id or "-", style="dim"),
            ]
        )
    return rows


def _table(
    study: Study,
    names: Sequence[str],
    rows: Iterable[list[RenderableType]],
    compact: bool = False,
    state_width: int | None = None,
) -> Table:
    # compact: without the blank lines above and below (the live view counts its lines).
    # state_width: the most the state column may take, the rest of it cut with an ellipsis.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=not compact)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("STATE", overflow="ellipsis", no_wrap=True, max_width=state_width)
    table.add_column(f"OBJECTIVE {direction_arrow(study)}", justify="right", no_wrap=True)
    for name in names:
        table.add_column(Text(name.upper()), justify="right", no_wrap=True, overflow="ellipsis")
    table.add_column("JOB", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _visible_rows(rows: list[Trial], max_rows: int | None) -> list[Trial]:
    """At most `max_rows` trials: the best ones, but the running ones always."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    running = [t for t in rows if t.state == "running"]
    keep = max(max_rows - len(running), 0)
    chosen = {t.number for t in [t for t in rows if t.state != "running"][:keep]}
    chosen.update(t.number for t in running[:max_rows])
    return [t for t in rows if t.number in chosen]


def trials_table(
    study: Study, width: int | None = None, max_rows: int | None = None, compact: bool = False
) -> RenderableType:
    """The trials, best first: #, state, objective, one column per hyperparameter, job id.

    `width`: hyperparameter columns that would make the table wider are left out (from the
    right; a note names them). `max_rows`: show the best trials and all running ones, and say
    how many were left out. `compact`: no blank edge lines, short notes (the live view).
    """
    if not study.trials:
        return Text("no trials yet", style="dim")
    names = param_names(study)
    ranked = study.ranked()
    shown = _visible_rows(ranked, max_rows)
    rows = _trial_rows(study, shown, names)
    keep = len(names)
    if width is not None:
        while keep > 0 and _width(study, names, rows, keep, compact) > width:
            keep -= 1
    state_width = None
    if width is not None and keep == 0:
        # Still too wide: the state column gives way (its text ends in "…"), not the others.
        excess = _width(study, names, rows, 0, compact) - width
        if excess > 0:
            natural = max([len("STATE"), *(cell_len(str(row[1])) for row in rows)])
            state_width = max(natural - excess, len("running"))
    kept = (_drop_params(row, len(names), keep) for row in rows)
    table = _table(study, names[:keep], kept, compact, state_width)
    notes: list[str] = []
    if keep < len(names):
        hidden = ", ".join(names[keep:])
        notes.append(
            f"not shown, too narrow: {hidden}"
            if compact
            else f"not shown, too narrow: {hidden} (matrec-ctl hpo show {study.id} --json)"
        )
    if len(shown) < len(ranked):
        more = len(ranked) - len(shown)
        notes.append(
            f"{more} more trials"
            if compact
            else f"{more} more trials (matrec-ctl hpo show {study.id} lists them)"
        )
    if not notes:
        return table
    return Group(table, *(Text(note, style="dim") for note in notes))


def _drop_params(row: list[RenderableType], count: int, keep: int) -> list[RenderableType]:
    # A row is #, state, objective, `count` parameters, job.
    return [*row[: 3 + keep], *row[3 + count :]]


def _width(
    study: Study,
    names: Sequence[str],
    rows: list[list[RenderableType]],
    keep: int,
    compact: bool,
) -> int:
    kept = (_drop_params(row, len(names), keep) for row in rows)
    table = _table(study, names[:keep], kept, compact)
    return Measurement.get(_MEASURE, _MEASURE.options, table).maximum


def study_header(study: Study) -> Table:
    trial = study.spec.get("trial") or {}
    algorithm = str(study.spec.get("algorithm", "-"))
    if "seed" in study.spec:
        algorithm += f" (seed {study.spec['seed']})"
    total = max_trials(study)
    progress = f"{finished_trials(study)}/{total} trials finished"
    if study.trials:
        progress += f" · {counts_text(study)}"
    state = state_text(study.state)
    summary: dict[str, Any] = {
        "id": study.id,
        "name": study.name or "-",
        "state": state,
        "owner": Text(study.owner or "-"),
        "algorithm": algorithm,
        "objective": objective_label(study),
        "pruner": pruner_text(study),
        "trials": f"{progress} · at most {study.spec.get('max_parallel', '?')} in parallel",
        "best": best_text(study),
        "trial kind": str(trial.get("kind", "-")),
        "created": format_time(study.created_at),
        "duration": format_duration(study_duration(study)),
    }
    fixed = trial.get("config") or {}
    if fixed:
        summary["fixed config"] = Text(
            ", ".join(f"{k}={format_param(v)}" for k, v in sorted(fixed.items()))
        )
    if study.cancelled_by:
        summary["cancelled by"] = Text(study.cancelled_by)
    if study.error:
        summary["error"] = Text(study.error, style="red")
    return key_value_table(summary)


def study_detail(study: Study, width: int | None = None) -> RenderableType:
    """Everything `matrec-ctl hpo show` prints: the header and the whole trial table."""
    header = Panel(study_header(study), title="study", title_align="left", box=box.ROUNDED)
    return Group(header, trials_table(study, width=width))


def studies_table(studies: Sequence[Study]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("ID", style="bold", no_wrap=True)
    table.add_column("NAME")
    table.add_column("STATE", no_wrap=True)
    table.add_column("ALGORITHM", no_wrap=True)
    table.add_column("TRIALS", justify="right", no_wrap=True)
    table.add_column("BEST", justify="right", no_wrap=True)
    for study in studies:
        best = study.best
        table.add_row(
            study.id,
            Text(study.name or "-"),
            state_text(study.state),
            str(study.spec.get("algorithm", "-")),
            f"{finished_trials(study)}/{max_trials(study)}",
            format_objective(None if best is None else best.objective_value),
        )
    return table


# -- the live view -----------------------------------------------------------------------------


def progress_line(study: Study, width: int | None = None) -> Table:
    """The progress bar of trials finished out of max_trials, and the count of each state."""
    done, total = finished_trials(study), max_trials(study)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    bar_width = 30 if width is None else max(min(30, width // 3), 10)
    counts = Text(f"{done}/{total} trials")
    if study.trials:
        counts.append(f"  {counts_text(study)}", style="dim")
    grid.add_row(ProgressBar(total=max(total, 1), completed=done, width=bar_width), counts)
    return grid


def _height(renderable: RenderableType, width: int) -> int:
    return len(_MEASURE.render_lines(renderable, _MEASURE.options.update_width(width), pad=False))


def render_live(
    study: Study | None, width: int | None = None, height: int | None = None
) -> RenderableType:
    """The live view: state, progress bar, best so far and the trial table, fitted to the
    terminal: hyperparameter columns by `width`; by `height`, the best trials and every running
    one, then how many more there are."""
    if study is None:
        return Text("waiting for the coordinator…", style="dim")
    header = Text.assemble("study ", (study.id, "bold"), "  ", state_text(study.state))
    header.append(f"  elapsed {format_duration(study_duration(study))}", style="dim")
    settings = Text(
        f"{objective_label(study)} · pruner {pruner_text(study)}",
        style="dim",
        no_wrap=True,
        overflow="ellipsis",
    )
    best = Text.assemble(("best so far ", "dim"), best_text(study))
    best.no_wrap, best.overflow = True, "ellipsis"
    chrome: list[RenderableType] = [header, settings]
    if study.error:
        chrome.append(Text(study.error, style="red"))
    inner = None if width is None else max(width - 4, 20)  # the panel's border and padding
    chrome += [progress_line(study, inner), best]
    table = trials_table(study, width=inner, compact=True)
    if height is not None:
        measure_width = inner or _MEASURE.width
        # Rows left after the panel's border, the lines above the table and one spare line.
        room = height - 3 - _height(Group(*chrome), measure_width)
        if _height(table, measure_width) > room:
            one_row = trials_table(study, width=inner, max_rows=1, compact=True)
            overhead = _height(one_row, measure_width) - 1
            table = trials_table(study, inner, max_rows=max(room - overhead, 1), compact=True)
    title = Text.assemble(
        (study.name or study.id, "bold"), f" · {study.spec.get('algorithm', '?')}"
    )
    return Panel(Group(*chrome, table), title=title, title_align="left", box=box.ROUNDED)


def follow_live(studies: Iterable[Study], console: Console) -> Study | None:
    """Redraw the live view for each new state of the study; return the last one."""
    latest: list[Study] = []

    def current() -> RenderableType:
        return render_live(latest[-1] if latest else None, console.width, console.height)

    with Live(get_renderable=current, console=console, refresh_per_second=4):
        for study in studies:
            latest[:] = [study]
    return latest[-1] if latest else None


# -- plain lines, for logs and pipes ----------------------------------------------------------


class StudyPrinter:
    """One line per change: each trial's start and end (in the order they happened, numbered
    by how many trials had finished), a new best, the study's end."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.study: Study | None = None
        self._states: dict[int, str] = {}
        self._study_state: str | None = None
        self._best: int | None = None
        self._ended = 0

    def handle(self, study: Study) -> None:
        if self._study_state is None:
            self._study_state = "running"
            self._print(
                f"study {study.id} ({study.name or 'unnamed'}): {study.spec.get('algorithm')}, "
                f"{objective_label(study)}, pruner {pruner_text(study)}, "
                f"{max_trials(study)} trials, {study.spec.get('max_parallel')} at a time",
                study.created_at,
            )
        self.study = study
        # (time, 0 for a start / 1 for an end, trial): a trial that started and ended between
        # two updates gets both lines, in that order.
        changes: list[tuple[datetime | None, int, Trial]] = []
        for trial in study.trials:
            known = self._states.get(trial.number)
            if known == trial.state:
                continue
            self._states[trial.number] = trial.state
            if known is None:
                changes.append((trial.created_at, 0, trial))
            if trial.state != "running":
                changes.append((trial.finished_at, 1, trial))
        now = datetime.now().astimezone()
        changes.sort(key=lambda c: (c[0] or now, c[1], c[2].number))
        for when, end, trial in changes:
            if end:
                self._print_end(study, trial, when)
            else:
                started = f"trial {trial.number} started ({trial.job_id or 'no job'})"
                self._print(f"{started}: {format_params(trial.params)}", when)
        if study.best_trial_number is not None and study.best_trial_number != self._best:
            self._best = study.best_trial_number
            self._print(Text.assemble("best so far: ", best_text(study)))
        if study.state != self._study_state:
            self._study_state = study.state
            self._print(
                Text.assemble(f"study {study.id}: ", state_text(study.state)), study.finished_at
            )

    def _print_end(self, study: Study, trial: Trial, when: datetime | None) -> None:
        self._ended += 1
        line = Text(f"[{self._ended}/{max_trials(study)}] trial {trial.number} ")
        line.append_text(trial_state_text(trial))
        if trial.objective_value is not None:
            line.append(f": {study.objective} {format_objective(trial.objective_value)}")
        line.append(f"  {format_params(trial.params)}", style="dim")
        self._print(line, when)

    def _print(self, line: str | Text, when: datetime | None = None) -> None:
        stamp = format_time(when or datetime.now().astimezone())
        text = Text(f"{stamp} ", style="dim")
        text.append_text(line if isinstance(line, Text) else Text(line))
        self.console.print(text, soft_wrap=True, highlight=False)


def follow_plain(studies: Iterable[Study], console: Console) -> Study | None:
    printer = StudyPrinter(console)
    for study in studies:
        printer.handle(study)
    return printer.study


def follow(studies: Iterable[Study], console: Console) -> Study | None:
    """A live view on a terminal, plain lines otherwise; return the study's last state."""
    if console.is_terminal:
        return follow_live(studies, console)
    return follow_plain(studies, console)


def study_summary(study: Study) -> Text:
    """The closing line: outcome, duration, trial counts and the best trial."""
    text = Text.assemble("study ", (study.id, "bold"), " ", state_text(study.state))
    duration = study_duration(study)
    if duration is not None and study.finished:
        text.append(f" after {format_duration(duration)}")
    text.append(f" · {len(study.trials)} trials")
    if study.trials:
        text.append(f" ({counts_text(study)})")
    best = study.best
    if best is not None:
        text.append(f" · best trial {best.number}: {study.objective} ")
        text.append(format_objective(best.objective_value), style="bold green")
        if best.params:
            text.append(f" ({format_params(best.params)})")
    if study.error:
        text.append(f": {study.error}", style="red")
    return text
