"""`matrec-ctl active-learning`: projects, candidate batches, labelling feedback, retraining
triggers and retraining: the commands and their argument handling.

A project ties a labelled dataset, a pool of unlabelled images and a trained model together. The
coordinator scores the pool with the model, `select` proposes the samples worth labelling, their
labels come back through `feedback` or `import`, and triggers (feedback count, time since
training, uncertainty, distribution shift) say when to retrain. What the commands print (and the
`matrec-ctl monitor` view) is in `active_learning_view`; batch files are read and written by
`matrec.sdk.labelling_files`. Like the rest of `matrec-ctl`, the SDK's grpc and protobuf are
imported only when a command runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

# The shared options and the seed's form live in modules of their own; their names stay
# importable from here.
from matrec.sdk.ctl.active_learning_options import PATH_KEYS as PATH_KEYS
from matrec.sdk.ctl.active_learning_options import (
    BatchArgument,
    FileFormat,
    JsonOption,
    ProjectArgument,
    ProjectFlags,
    Strategy,
    build_project_spec,
)
from matrec.sdk.ctl.active_learning_options import load_project_file as load_project_file
from matrec.sdk.ctl.active_learning_seed import REQUIRED as REQUIRED
from matrec.sdk.ctl.active_learning_seed import Operation as Operation
from matrec.sdk.ctl.active_learning_seed import SeedOptions as SeedOptions
from matrec.sdk.ctl.active_learning_seed import run_seed_operation as run_seed_operation
from matrec.sdk.ctl.active_learning_seed import seed_operation
from matrec.sdk.ctl.active_learning_view import (
    batch_header,
    candidates_table,
    failed_rows_table,
    project_detail,
    projects_table,
    triggers_table,
)
from matrec.sdk.ctl.connection import client_from_context
from matrec.sdk.ctl.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    print_error,
    stderr,
)
from matrec.sdk.labelling_files import format_batch_file, import_rows, read_batch_file
from rich.console import Console

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import LabellingBatch, LearningProject, RetrainingTrigger

active_learning_app = typer.Typer(
    name="active-learning",
    help="Active learning: pick the pool images worth labelling, record their labels and "
    "retrain when feedback piles up or the data drifts.\n\n"
    "[dim]$ matrec-ctl active-learning create --dataset ./wood --pool ./incoming "
    "--model-job job-733ad4e0b95d\n"
    "$ matrec-ctl active-learning select alp-5d1e2f3a4b6c --count 20\n"
    "$ matrec-ctl active-learning export alb-0a1b2c3d4e5f --format csv --output batch.csv\n"
    "$ matrec-ctl active-learning import alb-0a1b2c3d4e5f batch.csv\n"
    "$ matrec-ctl active-learning status alp-5d1e2f3a4b6c[/]\n\n"
    "The seed's form, [bold]--operation OP[/] with the options below, runs the same code on the "
    "configured coordinator (-c, MATREC_COORDINATOR, the config file) or, with none, on the "
    "embedded cluster of --storage-dir (as ActiveLearner does). Its project is --project, else "
    "the one remembered in --storage-dir; with --dataset and --pool a new one starts there.\n\n"
    "[dim]$ matrec-ctl active-learning --operation select --count 10 --storage-dir ./al\n"
    "$ matrec-ctl active-learning --operation feedback --batch-id alb-0a1b2c3d4e5f "
    "--sample-id img_7.png --material-id wood\n"
    "$ matrec-ctl active-learning --operation check-triggers --project alp-5d1e2f3a4b6c[/]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# soft_wrap: plain lines are not folded at 80 columns when the output is a pipe or a file.
console = Console(soft_wrap=True)

# -- the coordinator's messages ----------------------------------------------------------------


def cli_message(message: str) -> str:
    """The coordinator's advice names the request fields; here they are options."""
    for name in ("add_class", "overwrite"):
        message = message.replace(f"pass {name} ", f"pass --{name.replace('_', '-')} ")
    return message


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


@active_learning_app.command()
def create(
    ctx: typer.Context,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            metavar="FILE",
            help="A whole project spec as JSON or YAML: name, dataset_path, pool_path, "
            "model_job_id, strategy, mc_dropout_passes, triggers {...}, retrain {...}; the flags "
            "below override it.",
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
    with client_from_context(ctx) as client:
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
    with client_from_context(ctx) as client:
        show_status(client, target, as_json)


def show_status(client: Client, target: str | None, as_json: bool) -> None:
    """Every project (`target` None), one project in full, or one batch (an alb- id)."""
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
    from matrec.sdk.ctl.active_learning_monitor import scoring_jobs

    jobs = scoring_jobs(client, project)
    console.print(project_detail(project, batches, sizes, triggers, jobs))


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
    with client_from_context(ctx) as client:
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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the batch id, for scripts.")
    ] = False,
) -> None:
    """Propose a batch of pool samples to label, most informative first; print it.

    Samples already labelled or waiting in an open batch are never proposed again. Needs a finished pool scoring (see `score`).

    [dim]$ matrec-ctl active-learning select alp-5d1e2f3a4b6c --count 20 --strategy hybrid
    $ matrec-ctl active-learning select alp-5d1e2f3a4b6c -n 12 --class-balance
    $ BATCH=$(matrec-ctl active-learning select alp-5d1e2f3a4b6c -n 10 --quiet)[/]
    """  # noqa: E501
    with client_from_context(ctx) as client:
        batch = client.select_samples(
            project_id,
            count,
            "" if strategy is None else strategy.value,
            class_balance=class_balance,
            seed=seed,
        )
    if quiet:
        typer.echo(batch.id)
        return
    show_selection(batch, count, as_json)


def show_selection(
    batch: LabellingBatch, count: int, as_json: bool, *, how_to_label: str = ""
) -> None:
    """A batch `select` proposed (`count` asked for), and how to label it (`how_to_label`;
    default: the `feedback`, `export` and `import` commands)."""
    if as_json:
        typer.echo(_to_json(batch))
        return
    _show_batch(batch, as_json=False)
    if len(batch.candidates) < count:
        stderr.print(
            f"only {len(batch.candidates)} unlabelled samples were left in the pool", style="dim"
        )
    stderr.print(
        how_to_label
        or f"label them: matrec-ctl active-learning feedback {batch.id} SAMPLE LABEL, or export "
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
    with client_from_context(ctx) as client:
        record_one(client, batch_id, sample_id, label, overwrite=overwrite, add_class=add_class)


def record_one(
    client: Client,
    batch_id: str,
    sample_id: str,
    label: str,
    *,
    overwrite: bool,
    add_class: bool,
) -> None:
    """Record one label and say what changed; a refused label is one error line (exit code 1,
    or 2 for an unusable label)."""
    from matrec.sdk.errors import CoordinatorUnavailableError, InvalidSpecError, MatrecError

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
    with client_from_context(ctx) as client:
        batch = client.get_batch(batch_id)
    text = format_batch_file(batch, "json" if fmt is FileFormat.json else "csv")
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
    with client_from_context(ctx) as client:
        result = import_rows(client, batch_id, rows, overwrite=overwrite, add_class=add_class)
        batch = client.get_batch(batch_id)
    console.print(
        f"recorded {len(result.recorded)}, unchanged {len(result.unchanged)}, "
        f"failed {len(result.failed)}, without a label {len(result.unlabelled)}",
        highlight=False,
    )
    console.print(batch_header(batch))
    if result.failed:
        failed = [(row, cli_message(reason)) for row, reason in result.failed]
        console.print(failed_rows_table(failed))
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
    with client_from_context(ctx) as client:
        found = client.list_triggers(project_id)
    show_triggers(found, as_json)


def show_triggers(found: Sequence[RetrainingTrigger], as_json: bool) -> None:
    if as_json:
        typer.echo(_to_json(list(found)))
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
    with client_from_context(ctx) as client:
        start_retraining(client, project_id, trigger, wait=wait)


def start_retraining(client: Client, project_id: str, trigger: str, *, wait: bool) -> None:
    """Submit the retraining job: print its id, or with `wait` follow it until it ends."""
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


# The seed's form: matrec-ctl active-learning --operation OP (sdk/ctl/active_learning_seed.py).
active_learning_app.callback(invoke_without_command=True)(seed_operation)
