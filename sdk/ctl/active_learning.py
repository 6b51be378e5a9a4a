"""`matrec-ctl active-learning`: projects, candidate batches, labelling feedback, retraining
triggers and retraining; and the live view behind `matrec-ctl monitor`.

A project ties a labelled dataset, a pool of unlabelled images and a trained model together. The
coordinator scores the pool with the model, `select` proposes the samples worth labelling, their
labels come back through `feedback` or `import`, and triggers (feedback count, time since
training, uncertainty, distribution shift) say when to retrain. Like the rest of `matrec-ctl`,
the SDK is imported only when a command runs.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from matrec.sdk.ctl.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    print_error,
    stderr,
)
from rich.console import Console

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import (
        Candidate,
        LabellingBatch,
        LearningProject,
        ModelVersion,
        RetrainingTrigger,
    )
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

active_learning_app = typer.Typer(
    name="active-learning",
    help="Active learning: pick the pool images worth labelling, record their labels and "
    "retrain when feedback piles up or the data drifts.\n\n"
    "[dim]$ matrec-ctl active-learning create --dataset ./wood --pool ./incoming "
    "--model-job job-733ad4e0b95d\n"
    "$ matrec-ctl active-learning select alp-5d1e2f3a4b6c --count 20\n"
    "$ matrec-ctl active-learning export alb-0a1b2c3d4e5f --format csv --output batch.csv\n"
    "$ matrec-ctl active-learning import alb-0a1b2c3d4e5f batch.csv\n"
    "$ matrec-ctl active-learning status alp-5d1e2f3a4b6c[/]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# soft_wrap: plain lines are not folded at 80 columns when the output is a pipe or a file.
console = Console(soft_wrap=True)

#: The columns of an exported batch, in order; `import` accepts exactly these.
EXPORT_COLUMNS = ("sample_id", "sample_uri", "predicted_class", "score", "label")
#: Paths of a project spec that become absolute (against the cwd, or the spec file's folder).
PATH_KEYS = ("dataset_path", "pool_path")
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


class Strategy(StrEnum):
    """The strategies of `matrec.common.active_learning.selection.STRATEGIES` (a test keeps
    them equal; importing that module here would load numpy for every `--help`)."""

    random = "random"
    least_confidence = "least_confidence"
    margin = "margin"
    entropy = "entropy"
    bald = "bald"
    coreset = "coreset"
    cluster_margin = "cluster_margin"
    hybrid = "hybrid"


class FileFormat(StrEnum):
    csv = "csv"
    json = "json"


def _client(ctx: typer.Context) -> Client:
    from matrec.sdk.client import Client

    return Client(ctx.obj)


# -- assembling a project spec -----------------------------------------------------------------


@dataclass(frozen=True)
class ProjectFlags:
    """The `create` options; None means "not given" (the spec file's value or the default)."""

    name: str | None = None
    dataset: Path | None = None
    pool: Path | None = None
    model_job: str | None = None
    strategy: str | None = None
    mc_dropout_passes: int | None = None
    feedback_threshold: int | None = None
    max_age: float | None = None
    uncertainty_threshold: float | None = None
    drift: bool | None = None
    drift_alpha: float | None = None
    auto_retrain: bool | None = None
    retrain_epochs: int | None = None


def _absolute(path: Path, base: Path) -> str:
    path = path.expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_project_file(path: Path) -> dict[str, Any]:
    """A project spec as a JSON object; its paths are resolved against the file's folder."""
    from matrec.sdk.errors import InvalidSpecError

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidSpecError("--spec", f"cannot read {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InvalidSpecError("--spec", f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidSpecError("--spec", f"{path}: expected a JSON object at the top level")
    for key in PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = _absolute(Path(data[key]), base=path.parent)
    return data


def _section(spec: dict[str, Any], key: str) -> dict[str, Any]:
    from matrec.sdk.errors import InvalidSpecError

    section = spec.setdefault(key, {})
    if not isinstance(section, dict):
        raise InvalidSpecError(key, "must be a JSON object")
    return section


def build_project_spec(spec_file: Path | None, flags: ProjectFlags) -> dict[str, Any]:
    """The spec from `spec_file` (if any), overridden by the flags that were given. The three
    things every project needs are checked here, naming the option that gives them."""
    from matrec.sdk.errors import InvalidSpecError

    spec = load_project_file(spec_file) if spec_file is not None else {}
    cwd = Path.cwd()
    top: dict[str, Any] = {
        "name": flags.name,
        "dataset_path": None if flags.dataset is None else _absolute(flags.dataset, cwd),
        "pool_path": None if flags.pool is None else _absolute(flags.pool, cwd),
        "model_job_id": flags.model_job,
        "strategy": flags.strategy,
        "mc_dropout_passes": flags.mc_dropout_passes,
    }
    spec.update({key: value for key, value in top.items() if value is not None})
    triggers = {
        "feedback_threshold": flags.feedback_threshold,
        "max_age_seconds": flags.max_age,
        "uncertainty_threshold": flags.uncertainty_threshold,
        "drift": flags.drift,
        "drift_alpha": flags.drift_alpha,
        "auto_retrain": flags.auto_retrain,
    }
    given = {key: value for key, value in triggers.items() if value is not None}
    if given:
        _section(spec, "triggers").update(given)
    if flags.retrain_epochs is not None:
        _section(spec, "retrain")["epochs"] = flags.retrain_epochs
    for key, option in (
        ("dataset_path", "--dataset"),
        ("pool_path", "--pool"),
        ("model_job_id", "--model-job"),
    ):
        if not spec.get(key):
            raise InvalidSpecError(key, f"required: pass {option} (or set {key} in --spec)")
    return spec


# -- batch files (export / import) -------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    """One row of an imported batch file. `where` says where it is (line 3, item 2)."""

    where: str
    sample_id: str
    label: str  # "" when the row has no label yet


def export_rows(batch: LabellingBatch) -> list[dict[str, Any]]:
    return [
        {
            "sample_id": c.sample_id,
            "sample_uri": c.sample_uri,
            "predicted_class": c.predicted_class,
            "score": c.score,
            "label": c.label,
        }
        for c in batch.candidates
    ]


def format_batch_file(batch: LabellingBatch, fmt: FileFormat) -> str:
    """The batch as CSV (an empty label cell when unlabelled) or a JSON list (label null)."""
    rows = export_rows(batch)
    if fmt is FileFormat.json:
        return json.dumps(rows, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": repr(row["score"]), "label": row["label"] or ""})
    return out.getvalue()


def _check_columns(path: Path, columns: Iterable[str]) -> None:
    from matrec.sdk.errors import InvalidSpecError

    present = list(columns)
    unknown = [c for c in present if c not in EXPORT_COLUMNS]
    expected = ", ".join(EXPORT_COLUMNS)
    if unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise InvalidSpecError(
            str(path), f"unknown columns {names}; a batch file has the columns {expected}"
        )
    for required in ("sample_id", "label"):
        if required not in present:
            raise InvalidSpecError(
                str(path),
                f"no {required} column; a batch file has the columns {expected} "
                "(as `active-learning export` writes it)",
            )


def read_batch_file(path: Path) -> list[LabelRow]:
    """The rows of a batch file as `export` writes it: CSV, or a JSON list of objects (chosen by
    the suffix; otherwise by the first character). Raises InvalidSpecError, naming the file, for
    anything that is not such a file: unknown or missing columns, a row without a sample id, a
    sample twice. Nothing has been recorded when it raises."""
    from matrec.sdk.errors import InvalidSpecError

    try:
        # utf-8-sig: spreadsheets put a byte-order mark in front of the header.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidSpecError(str(path), f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidSpecError(str(path), "not a UTF-8 text file (CSV or JSON)") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() != ".csv" and text.lstrip().startswith(("[", "{"))
    )
    rows = _json_rows(path, text) if is_json else _csv_rows(path, text)
    seen: dict[str, str] = {}
    for row in rows:
        if not row.sample_id:
            raise InvalidSpecError(str(path), f"{row.where}: no sample_id")
        if row.sample_id in seen:
            raise InvalidSpecError(
                str(path),
                f"{row.where}: sample {row.sample_id!r} again (first at {seen[row.sample_id]})",
            )
        seen[row.sample_id] = row.where
    return rows


def _csv_rows(path: Path, text: str) -> list[LabelRow]:
    from matrec.sdk.errors import InvalidSpecError

    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InvalidSpecError(str(path), "empty; expected a CSV header line")
    _check_columns(path, (name.strip() for name in reader.fieldnames))
    rows = []
    for record in reader:
        cells = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None}
        if None in record:
            raise InvalidSpecError(str(path), f"line {reader.line_num}: more cells than columns")
        rows.append(LabelRow(f"line {reader.line_num}", cells["sample_id"], cells["label"]))
    return rows


def _json_rows(path: Path, text: str) -> list[LabelRow]:
    from matrec.sdk.errors import InvalidSpecError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(str(path), f"invalid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InvalidSpecError(str(path), "expected a JSON list of rows, as `export` writes it")
    columns: set[str] = set()
    for item in data:
        if not isinstance(item, dict):
            raise InvalidSpecError(str(path), "expected a JSON list of objects (one per sample)")
        columns.update(item)
    _check_columns(path, sorted(columns) if data else EXPORT_COLUMNS)
    rows = []
    for number, item in enumerate(data, start=1):
        values = {}
        for key in ("sample_id", "label"):
            value = item.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidSpecError(str(path), f"item {number}: {key} must be a string")
            values[key] = (value or "").strip()
        rows.append(LabelRow(f"item {number}", values["sample_id"], values["label"]))
    return rows


@dataclass
class ImportResult:
    recorded: list[LabelRow] = field(default_factory=list)
    unchanged: list[LabelRow] = field(default_factory=list)
    unlabelled: list[LabelRow] = field(default_factory=list)
    failed: list[tuple[LabelRow, str]] = field(default_factory=list)


def import_rows(
    client: Client,
    batch_id: str,
    rows: Sequence[LabelRow],
    *,
    overwrite: bool,
    add_class: bool,
) -> ImportResult:
    """Record the label of every row that has one. A row the coordinator refuses (unknown
    sample, unknown class, a different label already there) is a failure with its reason; the
    other rows are still recorded. An unreachable coordinator stops the import."""
    from matrec.sdk.errors import CoordinatorUnavailableError, MatrecError

    result = ImportResult()
    for row in rows:
        if not row.label:
            result.unlabelled.append(row)
            continue
        try:
            _, changed = client.record_feedback(
                batch_id, row.sample_id, row.label, overwrite=overwrite, add_class=add_class
            )
        except CoordinatorUnavailableError:
            raise
        except MatrecError as exc:
            result.failed.append((row, cli_message(str(exc))))
            continue
        (result.recorded if changed else result.unchanged).append(row)
    return result


def cli_message(message: str) -> str:
    """The coordinator's advice names the request fields; here they are options."""
    for name in ("add_class", "overwrite"):
        message = message.replace(f"pass {name} ", f"pass --{name.replace('_', '-')} ")
    return message


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
    for title in ("BATCH", "STRATEGY", "LABELLED", "STATE", "CREATED", "DONE"):
        table.add_column(title, no_wrap=True)
    for batch in batches:
        table.add_row(
            batch.id,
            batch.strategy,
            f"{batch.labelled}/{sizes.get(batch.id, len(batch.candidates))}",
            _styled(batch.state, BATCH_STYLES),
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
    for title in ("KIND", "STATE", "FIRED", "DETAILS", "JOB"):
        table.add_column(title, no_wrap=title != "DETAILS", overflow="fold")
    for trigger in triggers:
        row: list[RenderableType] = [f"{trigger.id} *" if trigger.id in marked else trigger.id]
        if project_column:
            row.append(trigger.project_id)
        row += [
            trigger.kind,
            _styled(trigger.state, TRIGGER_STYLES),
            format_time(trigger.fired_at),
            Text(trigger_summary(trigger)),
            trigger.job_id or "-",
        ]
        table.add_row(*row)
    return table


def _job_state(client: Client, job_id: str) -> Text:
    from matrec.sdk.ctl.render import state_text
    from matrec.sdk.errors import NotFoundError
    from rich.text import Text

    if not job_id:
        return Text("not submitted", style="dim")
    try:
        job = client.get_job(job_id)
    except NotFoundError:
        return Text(f"{job_id} (gone)", style="dim")
    return Text.assemble(job_id, " ", state_text(job.state))


def project_detail(
    client: Client,
    project: LearningProject,
    batches: Sequence[LabellingBatch],
    sizes: dict[str, int],
    triggers: Sequence[RetrainingTrigger],
) -> RenderableType:
    """Everything `status PROJECT` prints: settings, versions, batches and triggers."""
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
        "pool scoring": _job_state(client, project.pool_scoring_job_id),
        "drift reference": _job_state(client, project.reference_scoring_job_id),
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


# -- following a job ---------------------------------------------------------------------------


def _follow_job(client: Client, job_id: str) -> None:
    """The live job view (lines in a pipe) until the job ends; exit code 1 unless it succeeded."""
    from matrec.sdk.ctl.watch_view import follow, summary

    try:
        follow(client.watch(job_id), console, show_logs=False)
    except KeyboardInterrupt:
        console.print(
            f"stopped watching; job {job_id} keeps running (matrec-ctl cancel {job_id} stops it)",
            style="dim",
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    job = client.get_job(job_id)
    console.print(summary(job))
    if job.state != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


# -- commands ----------------------------------------------------------------------------------

ProjectArgument = Annotated[
    str, typer.Argument(metavar="PROJECT", help="Project id (alp-…), as `create` prints it.")
]
BatchArgument = Annotated[
    str, typer.Argument(metavar="BATCH", help="Batch id (alb-…), as `select` prints it.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@active_learning_app.command()
def create(
    ctx: typer.Context,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            metavar="FILE",
            help="A whole project spec as JSON: name, dataset_path, pool_path, model_job_id, "
            "strategy, mc_dropout_passes, triggers {...}, retrain {...}; the flags below "
            "override it.",
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="The labelled ImageFolder dataset the model trained on; retraining adds the "
            "new labels to it."
        ),
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option(
            help="Unlabelled images: a folder (searched recursively) or a manifest "
            "(.txt one path a line, .csv/.json with a path column)."
        ),
    ] = None,
    model_job: Annotated[
        str | None,
        typer.Option(metavar="JOB", help="The succeeded finetune job whose model starts it."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name of the project.")] = None,
    strategy: Annotated[
        Strategy | None,
        typer.Option(
            help="Default selection strategy: uncertainty (least_confidence, margin, entropy; "
            "bald needs --mc-dropout-passes >= 2), diversity (coreset, cluster_margin), hybrid "
            "or random. Default entropy."
        ),
    ] = None,
    mc_dropout_passes: Annotated[
        int | None,
        typer.Option(min=0, max=100, help="MC-dropout passes when scoring. Default 0 (none)."),
    ] = None,
    feedback_threshold: Annotated[
        int | None,
        typer.Option(
            min=0, metavar="N", help="Trigger after N new labels; 0 turns it off. Default 50."
        ),
    ] = None,
    max_age: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Trigger this long after the last training (604800: weekly). Default 0 (off).",
        ),
    ] = None,
    uncertainty_threshold: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            metavar="X",
            help="Trigger when the pool's mean normalised entropy (0..1) reaches X. "
            "Default 0 (off).",
        ),
    ] = None,
    drift: Annotated[
        bool | None,
        typer.Option(
            "--drift/--no-drift",
            help="Trigger on distribution shift of the pool against the training data. Default on.",
            show_default=False,
        ),
    ] = None,
    drift_alpha: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, metavar="A", help="Significance of the drift test. Default 0.05."
        ),
    ] = None,
    auto_retrain: Annotated[
        bool | None,
        typer.Option(
            "--auto-retrain/--no-auto-retrain",
            help="Retrain as soon as a trigger fires (otherwise `retrain` does). Default off.",
            show_default=False,
        ),
    ] = None,
    retrain_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Epochs of retraining jobs (default: the model job's)."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Block until the pool is scored, so that `select` can run."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a project from a trained model and a pool; print its id.

    The coordinator scores the pool with the model at once (and the training data, as the reference for the drift test); when that job has finished, `select` proposes what to label.

    [dim]$ matrec-ctl active-learning create --dataset ./wood --pool ./incoming \\
        --model-job job-733ad4e0b95d --feedback-threshold 20 --max-age 604800
    $ matrec-ctl active-learning create --spec project.json --auto-retrain[/]
    """  # noqa: E501
    flags = ProjectFlags(
        name=name,
        dataset=dataset,
        pool=pool,
        model_job=model_job,
        strategy=None if strategy is None else strategy.value,
        mc_dropout_passes=mc_dropout_passes,
        feedback_threshold=feedback_threshold,
        max_age=max_age,
        uncertainty_threshold=uncertainty_threshold,
        drift=drift,
        drift_alpha=drift_alpha,
        auto_retrain=auto_retrain,
        retrain_epochs=retrain_epochs,
    )
    spec = build_project_spec(spec_file, flags)
    with _client(ctx) as client:
        project = client.create_learning_project(spec)
        if as_json:
            typer.echo(_to_json(project))
        else:
            # Only the id goes to stdout, so that PROJECT=$(matrec-ctl active-learning create ...)
            # works; what happens next goes to stderr.
            typer.echo(project.id)
            _print_next_steps(project)
        if wait and project.pool_scoring_job_id:
            _wait_for_scoring(client, project.pool_scoring_job_id)


def _print_next_steps(project: LearningProject) -> None:
    classes = ", ".join(project.classes) or "unknown yet"
    lines = [
        f"project {project.id} starts from job {project.spec.get('model_job_id')} "
        f"(model v1; classes {classes})",
        f"scoring the pool: job {project.pool_scoring_job_id or '-'}; the training data, as the "
        f"drift reference: job {project.reference_scoring_job_id or '-'}",
        f"when the pool is scored: matrec-ctl active-learning select {project.id} --count 20",
        f"follow it: matrec-ctl watch {project.pool_scoring_job_id or '<job>'} · "
        f"status: matrec-ctl active-learning status {project.id}",
    ]
    for line in lines:
        stderr.print(line, style="dim", soft_wrap=True, highlight=False, markup=False)


def _wait_for_scoring(client: Client, job_id: str) -> None:
    from matrec.sdk.ctl.watch_view import summary

    stderr.print(f"waiting for scoring job {job_id}…", style="dim", highlight=False)
    job = client.wait(job_id)
    stderr.print(summary(job), soft_wrap=True)
    if job.state != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


def _to_json(value: Any) -> str:
    """`to_json`, also for a dict of dataclasses or lists of them."""
    from matrec.sdk.ctl.render import to_json

    if isinstance(value, dict):
        return json.dumps({key: json.loads(to_json(item)) for key, item in value.items()}, indent=2)
    return to_json(value)


@active_learning_app.command()
def status(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="PROJECT|BATCH",
            help="A project id (alp-…) or a batch id (alb-…); none: every project.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the projects; one project in full; or one batch with its candidates.

    A project: its settings, model versions (job, state, validation accuracy), classes, feedback (new since the last training / in all), its scoring jobs, batches (labelled x/y, state) and fired triggers.

    [dim]$ matrec-ctl active-learning status
    $ matrec-ctl active-learning status alp-5d1e2f3a4b6c
    $ matrec-ctl active-learning status alb-0a1b2c3d4e5f[/]
    """  # noqa: E501
    with _client(ctx) as client:
        if target is None:
            projects = client.list_learning_projects()
            if as_json:
                typer.echo(_to_json(projects))
            elif not projects:
                console.print(
                    "no projects; start one with `matrec-ctl active-learning create`", style="dim"
                )
            else:
                console.print(projects_table(projects))
            return
        if target.startswith("alb-"):
            _show_batch(client.get_batch(target), as_json)
            return
        project = client.get_learning_project(target)
        # Listed batches come without their candidates (`status BATCH` shows them).
        batches = client.list_batches(project.id)
        sizes = {b.id: b.size for b in batches}
        triggers = client.list_triggers(project.id)
        if as_json:
            data = {"project": project, "batches": batches, "triggers": triggers}
            typer.echo(_to_json(data))
            return
        console.print(project_detail(client, project, batches, sizes, triggers))


def _show_batch(batch: LabellingBatch, as_json: bool) -> None:
    if as_json:
        typer.echo(_to_json(batch))
        return
    console.print(batch_header(batch))
    console.print(candidates_table(batch))


@active_learning_app.command()
def score(
    ctx: typer.Context,
    project_id: ProjectArgument,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the job has finished.")] = False,
) -> None:
    """Score the pool again with the current model (new images arrived); print the job's id.

    `select` uses the newest finished pool scoring; the uncertainty and drift triggers too.

    [dim]$ matrec-ctl active-learning score alp-5d1e2f3a4b6c --wait[/]
    """
    with _client(ctx) as client:
        job_id = client.score_pool(project_id)
        typer.echo(job_id)
        if wait:
            _wait_for_scoring(client, job_id)
        else:
            stderr.print(f"follow it: matrec-ctl watch {job_id}", style="dim", highlight=False)


@active_learning_app.command()
def select(
    ctx: typer.Context,
    project_id: ProjectArgument,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Samples to propose.")],
    strategy: Annotated[
        Strategy | None,
        typer.Option(help="Selection strategy; default: the project's."),
    ] = None,
    class_balance: Annotated[
        bool,
        typer.Option("--class-balance", help="Spread the batch evenly over the predicted classes."),
    ] = False,
    seed: Annotated[int, typer.Option(min=0, help="Seed of random and clustering choices.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Propose a batch of pool samples to label, most informative first; print it.

    Samples already labelled or waiting in an open batch are never proposed again. Needs a finished pool scoring (see `score`).

    [dim]$ matrec-ctl active-learning select alp-5d1e2f3a4b6c --count 20 --strategy hybrid
    $ matrec-ctl active-learning select alp-5d1e2f3a4b6c -n 12 --class-balance[/]
    """  # noqa: E501
    with _client(ctx) as client:
        batch = client.select_samples(
            project_id,
            count,
            "" if strategy is None else strategy.value,
            class_balance=class_balance,
            seed=seed,
        )
    if as_json:
        typer.echo(_to_json(batch))
        return
    _show_batch(batch, as_json=False)
    if len(batch.candidates) < count:
        stderr.print(
            f"only {len(batch.candidates)} unlabelled samples were left in the pool", style="dim"
        )
    stderr.print(
        f"label them: matrec-ctl active-learning feedback {batch.id} SAMPLE LABEL, or export "
        f"{batch.id} --format csv, fill the label column and import it",
        style="dim",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


@active_learning_app.command()
def feedback(
    ctx: typer.Context,
    batch_id: BatchArgument,
    sample_id: Annotated[
        str, typer.Argument(metavar="SAMPLE", help="Sample id, as `select` lists it.")
    ],
    label: Annotated[str, typer.Argument(metavar="LABEL", help="The correct class.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a different label recorded before.")
    ] = False,
    add_class: Annotated[
        bool,
        typer.Option(
            "--add-class", help="Accept a class the model does not know yet (a new material)."
        ),
    ] = False,
) -> None:
    """Record the correct class of one candidate.

    The same label again changes nothing (exit code 0). A different label than the one recorded needs --overwrite; a class outside the model's needs --add-class. An unknown batch or sample is exit code 1, an unusable label 2.

    [dim]$ matrec-ctl active-learning feedback alb-0a1b2c3d4e5f oak/img_0042.png wood
    $ matrec-ctl active-learning feedback alb-0a1b2c3d4e5f img_7.png fabric --add-class[/]
    """  # noqa: E501
    from matrec.sdk.errors import CoordinatorUnavailableError, InvalidSpecError, MatrecError

    with _client(ctx) as client:
        try:
            candidate, changed = client.record_feedback(
                batch_id, sample_id, label, overwrite=overwrite, add_class=add_class
            )
        except CoordinatorUnavailableError:
            raise
        except MatrecError as exc:
            print_error(cli_message(str(exc)))
            code = EXIT_INVALID_INPUT if isinstance(exc, InvalidSpecError) else EXIT_FAILURE
            raise typer.Exit(code) from None
    what = "recorded" if changed else "unchanged, already labelled"
    console.print(
        f"{what} {candidate.label!r} for {candidate.sample_id} "
        f"(the model predicted {candidate.predicted_class!r})",
        highlight=False,
        markup=False,
    )


@active_learning_app.command()
def export(
    ctx: typer.Context,
    batch_id: BatchArgument,
    fmt: Annotated[
        FileFormat,
        typer.Option(
            "--format", "-f", help="csv (empty label cells) or json (a list, label null)."
        ),
    ] = FileFormat.csv,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write; stdout if not given."),
    ] = None,
) -> None:
    """Write a batch for an external labelling tool: sample_id, sample_uri, predicted_class, score, label.

    Fill in the label column and bring it back with `import`.

    [dim]$ matrec-ctl active-learning export alb-0a1b2c3d4e5f --format csv --output batch.csv[/]
    """  # noqa: E501
    with _client(ctx) as client:
        batch = client.get_batch(batch_id)
    text = format_batch_file(batch, fmt)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    stderr.print(
        f"batch {batch.id}: {len(batch.candidates)} samples ({batch.labelled} labelled) "
        f"written to {output}",
        style="dim",
        highlight=False,
        markup=False,
    )


@active_learning_app.command("import")
def import_labels(
    ctx: typer.Context,
    batch_id: BatchArgument,
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="CSV or JSON, as `export` writes it."),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace different labels recorded before.")
    ] = False,
    add_class: Annotated[
        bool, typer.Option("--add-class", help="Accept classes the model does not know yet.")
    ] = False,
) -> None:
    """Record the labels of a batch file: every row with a label; rows without one are skipped.

    The file is checked first: unknown columns, no sample_id or label column, or a sample twice are an error (exit code 2) and nothing is recorded. Then each row is recorded on its own: the report counts recorded, unchanged (same label already there) and failed rows with each failure's reason; exit code 1 if any row failed.

    [dim]$ matrec-ctl active-learning import alb-0a1b2c3d4e5f batch.csv[/]
    """  # noqa: E501
    rows = read_batch_file(file)
    with _client(ctx) as client:
        result = import_rows(client, batch_id, rows, overwrite=overwrite, add_class=add_class)
        batch = client.get_batch(batch_id)
    console.print(
        f"recorded {len(result.recorded)}, unchanged {len(result.unchanged)}, "
        f"failed {len(result.failed)}, without a label {len(result.unlabelled)}",
        highlight=False,
    )
    console.print(batch_header(batch))
    if result.failed:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="failed", title_justify="left")
        for title in ("ROW", "SAMPLE", "LABEL", "REASON"):
            table.add_column(title, overflow="fold", no_wrap=title == "ROW")
        for row, reason in result.failed:
            table.add_row(row.where, Text(row.sample_id), Text(row.label), Text(reason, "red"))
        console.print(table)
        raise typer.Exit(EXIT_FAILURE)


@active_learning_app.command()
def triggers(
    ctx: typer.Context,
    project_id: ProjectArgument,
    as_json: JsonOption = False,
) -> None:
    """List the project's fired triggers, oldest first: kind, state, what was measured, job.

    A trigger is fired, then retraining (its job runs), then done or failed. The coordinator evaluates triggers every --trigger-check-interval; `matrec-ctl monitor` does so at yours.

    [dim]$ matrec-ctl active-learning triggers alp-5d1e2f3a4b6c[/]
    """  # noqa: E501
    with _client(ctx) as client:
        found = client.list_triggers(project_id)
    if as_json:
        typer.echo(_to_json(found))
    elif not found:
        console.print("no triggers fired", style="dim")
    else:
        console.print(triggers_table(found))


@active_learning_app.command()
def retrain(
    ctx: typer.Context,
    project_id: ProjectArgument,
    trigger: Annotated[
        str,
        typer.Option(metavar="ID", help="The fired trigger this answers (marked as handled)."),
    ] = "",
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Follow the job live until it ends; exit code 1 unless it succeeded."
        ),
    ] = False,
) -> None:
    """Retrain from the latest model with every label so far; print the job's id.

    The new model becomes the next version once the job succeeds; its pool is then scored again.

    [dim]$ matrec-ctl active-learning retrain alp-5d1e2f3a4b6c --trigger trg-1a2b3c4d5e6f --wait[/]
    """
    with _client(ctx) as client:
        job_id, version = client.retrain(project_id, trigger)
        if not wait:
            typer.echo(job_id)
            stderr.print(
                f"model version {version} of {project_id}; follow it: matrec-ctl watch {job_id}",
                style="dim",
                highlight=False,
            )
            return
        console.print(f"retraining job [bold]{job_id}[/]: model version {version} of {project_id}")
        _follow_job(client, job_id)


# -- the monitor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectState:
    project: LearningProject
    triggers: list[RetrainingTrigger]

    @property
    def retraining(self) -> list[ModelVersion]:
        """Versions after the first: the retraining jobs."""
        return [v for v in self.project.versions if v.version > 1]


@dataclass(frozen=True)
class MonitorCheck:
    """One evaluation of the triggers of every watched project."""

    checked_at: datetime
    projects: list[ProjectState]
    fired: list[RetrainingTrigger]


def check_projects(client: Client, project_ids: Sequence[str]) -> MonitorCheck:
    """Evaluate the triggers of `project_ids` (every project when empty) and read their state."""
    ids = list(project_ids) or [p.id for p in client.list_learning_projects()]
    fired: list[RetrainingTrigger] = []
    states = []
    for project_id in ids:
        fired += client.check_triggers(project_id)
        states.append(
            ProjectState(client.get_learning_project(project_id), client.list_triggers(project_id))
        )
    return MonitorCheck(datetime.now(UTC), states, fired)


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
    client: Client,
    project_ids: Sequence[str],
    out: Console,
    *,
    interval: float,
    once: bool,
    tally: MonitorTally,
) -> None:
    """Evaluate the triggers every `interval` seconds until interrupted; with `once`, evaluate
    them once and print the view and what fired. A live view on a terminal, lines in a pipe.

    The first check's errors end the run (an unknown project, no coordinator); later, an
    unreachable coordinator is shown and the next check tries again."""
    first = check_projects(client, project_ids)
    tally.checks, tally.fired = 1, len(first.fired)
    if once:
        out.print(render_monitor(first))
        _print_fired(out, first)
        return
    if out.is_terminal:
        _monitor_live(client, project_ids, out, interval, first, tally)
    else:
        _monitor_plain(client, project_ids, out, interval, first, tally)


def _next_check(
    client: Client, project_ids: Sequence[str], tally: MonitorTally
) -> tuple[MonitorCheck | None, str]:
    """The next check, or the reason it could not be made."""
    from matrec.sdk.errors import CoordinatorUnavailableError

    try:
        check = check_projects(client, project_ids)
    except CoordinatorUnavailableError as exc:
        return None, str(exc)
    tally.checks += 1
    tally.fired += len(check.fired)
    return check, ""


def _monitor_live(
    client: Client,
    project_ids: Sequence[str],
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
            check, error = _next_check(client, project_ids, tally)
            if check is not None:
                latest = check
            due = time.monotonic() + interval


def _monitor_plain(
    client: Client,
    project_ids: Sequence[str],
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
        check, error = _next_check(client, project_ids, tally)


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
