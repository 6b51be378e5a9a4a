"""`matrec-ctl`: submit, watch and inspect training jobs; run a coordinator, an agent or a demo.

Commands import the SDK (grpc, protobuf, pydantic) only when they run, so `--help` stays fast.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from matrec.common.paths import absolute_path
from matrec.sdk.address import ADDRESS_ENV, DEFAULT_ADDRESS, TLS_ENV, TOKEN_ENV
from matrec.sdk.ctl.active_learning import active_learning_app
from matrec.sdk.ctl.audit import audit
from matrec.sdk.ctl.certs import certs_app
from matrec.sdk.ctl.config_cmd import config_app
from matrec.sdk.ctl.connection import client_from_context
from matrec.sdk.ctl.demo import DEMO_EPOCHS
from matrec.sdk.ctl.distributed import distributed
from matrec.sdk.ctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, ReportingGroup, print_error
from matrec.sdk.ctl.hpo import hpo_app
from matrec.sdk.ctl.tokens import tokens_app
from matrec.sdk.ctl.train import train
from matrec.sdk.ctl.web_ui import ui
from rich.console import Console

if TYPE_CHECKING:
    from matrec.sdk.client import Client

app = typer.Typer(
    name="matrec-ctl",
    cls=ReportingGroup,
    help="Train material-recognition models on a matrec cluster.\n\n"
    "Try it all on this machine: [bold]matrec-ctl demo[/]",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
dataset_app = typer.Typer(help="Create datasets.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(dataset_app, name="dataset")
app.add_typer(hpo_app, name="hpo")
app.add_typer(active_learning_app, name="active-learning")
app.add_typer(tokens_app, name="tokens")
app.add_typer(certs_app, name="certs")
app.command()(audit)
app.command()(ui)

# soft_wrap: plain lines are not folded at 80 columns when the output is a pipe or a file.
console = Console(soft_wrap=True)

# Forwarding commands hand every argument, --help included, to the program they start.
FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _version(value: bool) -> None:
    if value:
        from importlib import metadata  # only here: importing it costs 25 ms of every start

        typer.echo(f"matrec-ctl {metadata.version('matrec')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            "-c",
            envvar=ADDRESS_ENV,
            metavar="HOST:PORT",
            help=f"Coordinator to talk to; else `coordinator` in the config file, else "
            f"{DEFAULT_ADDRESS}.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            metavar="TOKEN",
            help="API token, for a coordinator started with --auth; else `token` in the "
            "config file.",
            show_default=False,
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", envvar="MATREC_TLS_CA", help="Talk TLS, trusting this CA (PEM)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert", envvar="MATREC_TLS_CERT", help="Client certificate (mutual TLS)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", envvar="MATREC_TLS_KEY", help="Its private key."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    ctx.obj = coordinator
    # Every Client a command makes reads these; paths absolute, as everywhere they are read.
    if token:
        os.environ[TOKEN_ENV] = token
    for variable, path in zip(TLS_ENV, (tls_ca, tls_cert, tls_key), strict=True):
        if path is not None:
            os.environ[variable] = str(absolute_path(path))


# -- processes ---------------------------------------------------------------------------------


@app.command()
def doctor() -> None:
    """Check this machine: the tools the tests need, torch, torchvision and Horovod.

    Each system tool is found (path, version) or missing, with how to install it (`make NAME`,
    which `make setup` runs). Exit code 1 when something required is missing.
    """
    from matrec.sdk.ctl.doctor import doctor as run_doctor

    raise typer.Exit(run_doctor())


@app.command(context_settings=FORWARD)
def server(ctx: typer.Context) -> None:
    """Run a coordinator in the foreground (arguments go to matrec-coordinator).

    [dim]$ matrec-ctl server --port 50051 --data-dir ~/.matrec/coordinator
    $ matrec-ctl server --help[/]
    """
    try:
        from matrec.coordinator.main import main as coordinator_main
    except ImportError as exc:
        print_error(f"the coordinator cannot be loaded: {exc}")
        raise typer.Exit(EXIT_FAILURE) from None
    coordinator_main(list(ctx.args))


@app.command(context_settings=FORWARD)
def agent(ctx: typer.Context) -> None:
    """Run an agent in the foreground (arguments go to matrec-agent).

    [dim]$ matrec-ctl agent --coordinator 10.0.0.5:50051 --name gpu-host-1 --gpus 8
    $ matrec-ctl agent --help[/]
    """
    try:
        from matrec.agent.main import main as agent_main
    except ImportError as exc:
        print_error(f"the agent cannot be loaded: {exc}")
        raise typer.Exit(EXIT_FAILURE) from None
    agent_main(list(ctx.args))


# -- jobs --------------------------------------------------------------------------------------


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="Job spec, JSON (or YAML with PyYAML); flags override it."
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(help="ImageFolder dataset (train/ and val/, or class folders)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Backbone, e.g. resnet18, resnet50.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels.")] = None,
    pretrained: Annotated[
        Path | None, typer.Option(help="Local weights to start from (checkpoint or state_dict).")
    ] = None,
    pretrained_weights: Annotated[
        str | None,
        typer.Option(
            help="torchvision weights to start from, e.g. IMAGENET1K_V1 (agents must be online)."
        ),
    ] = None,
    model_type: Annotated[
        str | None,
        typer.Option(help="cnn (backbone only) or hybrid (backbone + texture descriptors)."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="What trains: full, head_only, last_n, gradual or discriminative."),
    ] = None,
    trainable_blocks: Annotated[
        int | None, typer.Option(help="Blocks below the head that train with last_n.")
    ] = None,
    augmentation: Annotated[
        str | None,
        typer.Option(
            metavar="PRESET|LIST",
            help="none, light, strong, or a comma list of random_resized_crop, hflip, vflip, "
            "rotation, color_jitter, blur.",
        ),
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw or sgd.")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Learning-rate schedule: cosine, step or constant.")
    ] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option(help="Linear learning-rate warm-up, in epochs.")
    ] = None,
    label_smoothing: Annotated[
        float | None, typer.Option(help="Label smoothing of the loss, 0 to <1.")
    ] = None,
    early_stopping: Annotated[
        int | None,
        typer.Option(
            metavar="EPOCHS", help="Stop after this many epochs without a lower validation loss."
        ),
    ] = None,
    grad_clip: Annotated[
        float | None, typer.Option(metavar="NORM", help="Clip the gradient norm to this.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name of the job.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts per task before the job fails.")
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs each task needs.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs each task needs.")] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any other config setting, value parsed as JSON when it can be (repeatable).",
        ),
    ] = None,
    watch_job: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job live after submitting.")
    ] = False,
) -> None:
    """Submit a fine-tune job; print its id.

    The spec is checked here, then by the coordinator, which also checks the dataset exists.

    Relative paths become absolute: flags against this directory, spec files against their own.

    [dim]$ matrec-ctl submit --dataset ./demo-output/dataset --epochs 5 --watch
    $ matrec-ctl submit --dataset ./wood --pretrained textures.pt --model-type hybrid \\
        --strategy head_only --augmentation strong --early-stopping 3
    $ matrec-ctl submit --file spec.json --set lr_decay=0.3 --gpus 1[/]
    """
    from matrec.sdk.ctl.spec_input import SubmitFlags, build_spec

    flags = SubmitFlags(
        dataset=dataset,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        image_size=image_size,
        pretrained=pretrained,
        pretrained_weights=pretrained_weights,
        model_type=model_type,
        strategy=strategy,
        trainable_blocks=trainable_blocks,
        augmentation=augmentation,
        optimizer=optimizer,
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        early_stopping=early_stopping,
        grad_clip=grad_clip,
        name=name,
        max_attempts=max_attempts,
        cpus=cpus,
        gpus=gpus,
        assignments=assignments or [],
    )
    spec = build_spec(file, flags)
    with client_from_context(ctx) as client:
        job = client.submit_job(spec)
        if not watch_job:
            typer.echo(job.id)
            return
        console.print(f"submitted job [bold]{job.id}[/]")
        _follow(client, job.id, logs=False)


@app.command()
def jobs(
    ctx: typer.Context,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            help="Only jobs in this state: queued, running, succeeded, failed, cancelled "
            "(repeatable).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 100,
    mine: Annotated[bool, typer.Option("--mine", help="Only the jobs you submitted.")] = False,
    owner: Annotated[str, typer.Option(help="Only the jobs of this owner (a token's name).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List jobs, newest first, with who submitted each.

    [dim]$ matrec-ctl jobs --state running --state queued[/]
    [dim]$ matrec-ctl jobs --mine[/]
    """
    from matrec.sdk.ctl.render import jobs_table, to_json

    with client_from_context(ctx) as client:
        found = client.list_jobs(state, limit=limit, owner=owner, mine=mine)
    if as_json:
        typer.echo(to_json(found))
    elif not found:
        console.print("no jobs", style="dim")
    else:
        console.print(jobs_table(found))


@app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a job: its spec, tasks, history and result.

    [dim]$ matrec-ctl show job-733ad4e0b95d[/]
    """
    from matrec.sdk.ctl.render import job_detail, to_json

    with client_from_context(ctx) as client:
        job = client.get_job(job_id)
    if as_json:
        typer.echo(to_json(job))
    else:
        console.print(job_detail(job))


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the job's history.")] = "",
) -> None:
    """Cancel a job's queued and running tasks.

    [dim]$ matrec-ctl cancel job-733ad4e0b95d --reason "wrong dataset"[/]
    """
    from matrec.sdk.ctl.render import state_text

    with client_from_context(ctx) as client:
        job = client.cancel_job(job_id, reason)
    if job.finished:
        console.print("job", job.id, state_text(job.state))
    else:
        console.print(f"job {job.id}: cancel requested; its running tasks are being stopped")


@app.command()
def watch(
    ctx: typer.Context,
    job_id: Annotated[
        str, typer.Argument(metavar="JOB|STUDY", help="Job id, or an HPO study id (study-…).")
    ],
    logs: Annotated[bool, typer.Option("--logs", "-l", help="Also show worker log lines.")] = False,
) -> None:
    """Follow a job or an HPO study live until it ends: exit code 0 if it succeeded, 1 otherwise.

    A live view on a terminal (tasks, epoch progress with ETA, metrics); lines in a pipe.
    A study shows its trials, best first, pruned and failed ones marked (as `hpo watch`).

    [dim]$ matrec-ctl watch job-733ad4e0b95d --logs
    $ matrec-ctl watch study-3f2a9c1d0b7e[/]
    """
    with client_from_context(ctx) as client:
        if job_id.startswith("study-"):
            from matrec.sdk.ctl.hpo import follow_study

            follow_study(client, job_id, console)
            return
        _follow(client, job_id, logs=logs)


def _follow(client: Client, job_id: str, *, logs: bool) -> None:
    from matrec.sdk.ctl.watch_view import follow, summary

    try:
        follow(client.watch(job_id, include_logs=logs), console, show_logs=logs)
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


@app.command()
def agents(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the agents the coordinator knows, with their free and total resources."""
    from matrec.sdk.ctl.render import agents_table, to_json

    with client_from_context(ctx) as client:
        found = client.list_agents()
    if as_json:
        typer.echo(to_json(found))
    elif not found:
        console.print("no agents; start one with `matrec-ctl agent`", style="dim")
    else:
        console.print(agents_table(found))


@app.command()
def top(
    ctx: typer.Context,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.2, help="Shortest time between two redraws, in seconds."),
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
) -> None:
    """Live view of the cluster: agents and their load, queued and running jobs, throughput.

    The coordinator pushes a new snapshot when something changes (its WatchCluster stream), so nothing polls. When the output is not a terminal, one summary line per snapshot is printed.

    Example: [bold]matrec-ctl top --interval 1[/]
    """  # noqa: E501
    from matrec.sdk.ctl.top_view import follow_top, render_top

    with client_from_context(ctx) as client:
        snapshots = client.watch_cluster(interval)
        if once:
            console.print(render_top(next(iter(snapshots))))
            return
        follow_top(snapshots, console)


@app.command()
def monitor(
    ctx: typer.Context,
    project_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PROJECT",
            help="Active-learning projects to watch; none: every project.",
            show_default=False,
        ),
    ] = None,
    check_interval: Annotated[
        float,
        typer.Option(
            "--check-interval", min=1.0, metavar="S", help="Seconds between two trigger checks."
        ),
    ] = 60.0,
    once: Annotated[
        bool,
        typer.Option("--once", help="Check once, print the view and what fired, and exit."),
    ] = False,
) -> None:
    """Evaluate the retraining triggers of active-learning projects and show them live.

    Every S seconds the triggers (feedback count, time since training, uncertainty, drift) are evaluated; the view shows each project's model and new feedback, the newest triggers and the retraining jobs. In a pipe: one line per fired trigger and per retraining job that changes state. Ctrl-C ends it (exit code 0).

    The coordinator also evaluates them on its own every --trigger-check-interval; a trigger fires once either way. A fired trigger is answered by `matrec-ctl active-learning retrain PROJECT --trigger ID`.

    [dim]$ matrec-ctl monitor --check-interval 30
    $ matrec-ctl monitor alp-5d1e2f3a4b6c --once[/]
    """  # noqa: E501
    from matrec.sdk.ctl.active_learning_monitor import check_projects
    from matrec.sdk.ctl.active_learning_view import MonitorTally, run_monitor

    tally = MonitorTally()
    with client_from_context(ctx) as client:
        try:
            run_monitor(
                lambda: check_projects(client, project_ids or []),
                console,
                interval=check_interval,
                once=once,
                tally=tally,
            )
        except KeyboardInterrupt:
            if not tally.checks:
                raise
            console.print(
                f"stopped monitoring after {tally.checks} checks; {tally.fired} triggers fired",
                style="dim",
            )


# -- reports ----------------------------------------------------------------------------------


class ReportFormat(StrEnum):
    html = "html"
    json = "json"
    png = "png"


FormatOption = Annotated[
    ReportFormat,
    typer.Option(
        "--format",
        "-f",
        help="html: one self-contained file; json: see report.schema.json; png: the charts.",
    ),
]


@app.command()
def report(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="JOB|STUDY", help="Job or study id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: FormatOption = ReportFormat.html,
) -> None:
    """Write a report of a job or of an HPO study.

    A job's report: learning curves, confusion matrix (counts and normalised), per-class
    metrics. A study's: the optimisation history, the objective against each hyperparameter,
    every trial's intermediate curve, the best trial and the trial table. Something still
    running gets a report of what is stored so far.

    [dim]$ matrec-ctl report job-733ad4e0b95d --format html --out report.html[/]
    [dim]$ matrec-ctl report study-e8295547f041 --format png --out study.png[/]
    """
    from matrec.sdk import reports

    with client_from_context(ctx) as client:
        if target.startswith("study-"):
            study = reports.fetch_study_report(client, target)
            out.write_bytes(reports.export_study_report(study, fmt.value))
            console.print(
                f"study {study.study_id} ({study.state}): {fmt.value} report written to {out}"
            )
            return
        found = reports.fetch_report(client, target)
    out.write_bytes(reports.export_report(found, fmt.value))
    console.print(f"job {found.job_id} ({found.state}): {fmt.value} report written to {out}")


@app.command()
def compare(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="JOB...", help="Job ids.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write; a table if not given.")
    ] = None,
    fmt: FormatOption = ReportFormat.html,
) -> None:
    """Compare jobs: final validation accuracy, macro-F1, epochs, model and strategy.

    [dim]$ matrec-ctl compare job-733ad4e0b95d job-91c0d2a4e7f1 --format html --out cmp.html[/]
    """
    from matrec.sdk.reports import compare as build_comparison
    from matrec.sdk.reports import export_comparison, fetch_report
    from matrec.sdk.reports.compare import comparison_table

    with client_from_context(ctx) as client:
        reports = [fetch_report(client, job_id) for job_id in job_ids]
    if out is None:
        console.print(comparison_table(build_comparison(reports)))
        return
    out.write_bytes(export_comparison(reports, fmt.value))
    console.print(f"comparison of {len(reports)} jobs: {fmt.value} written to {out}")


@app.command()
def artifacts(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id.")],
) -> None:
    """List the files a job produced (model, last checkpoint), with their sizes.

    [dim]$ matrec-ctl artifacts job-733ad4e0b95d[/]
    """
    from matrec.sdk.ctl.render import artifacts_table

    with client_from_context(ctx) as client:
        console.print(artifacts_table(client.list_artifacts(job_id)))


@app.command()
def download(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id.")],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="File to write, or a folder to put it in: an existing one, or a name ending "
            "in / (created).",
        ),
    ] = ".",
    kind: Annotated[
        str, typer.Option(help="Which artifact: model or checkpoint (the newest of that kind).")
    ] = "model",
    uri: Annotated[
        str, typer.Option(help="A specific file, as `matrec-ctl artifacts` lists it.")
    ] = "",
) -> None:
    """Copy a job's model (or checkpoint) from the cluster, with a progress bar.

    Resumes an interrupted download (the bytes so far wait in OUT.part) and checks the file's
    SHA-256 before putting it in place.

    [dim]$ matrec-ctl download job-733ad4e0b95d --out models/[/]
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with (
        Progress(
            "[bold]download",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as progress,
        client_from_context(ctx) as client,
    ):
        bar = progress.add_task(kind, total=None)
        path = client.download_artifact(
            job_id,
            out,
            kind=kind,
            uri=uri,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    console.print(f"{path} ({path.stat().st_size:,} bytes, SHA-256 checked)")


# -- datasets and the demo ---------------------------------------------------------------------


@dataset_app.command("demo")
def dataset_demo(
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", help="Where to write it (created; replaced if a demo)."),
    ],
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    patch_size: Annotated[int, typer.Option(min=8, help="Image side in pixels.")] = 64,
    train_per_class: Annotated[int, typer.Option(min=1, help="Training images per class.")] = 80,
    val_per_class: Annotated[int, typer.Option(min=1, help="Validation images per class.")] = 20,
) -> None:
    """Write the built-in material dataset (brick, grass, gravel, fur, wood, metal).

    Cut from the photographs that ship with scikit-image: no download needed.

    [dim]$ matrec-ctl dataset demo ./materials --patch-size 96[/]
    """
    from matrec.sdk.ctl.demo import make_dataset

    make_dataset(
        path,
        console,
        seed=seed,
        patch_size=patch_size,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
    )


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the dataset, databases, artifacts and logs go.")
    ] = Path("demo-output"),
    epochs: Annotated[int, typer.Option(min=1, help="Fine-tune epochs.")] = DEMO_EPOCHS,
    agents: Annotated[int, typer.Option(min=1, help="Agents to start.")] = 2,
    keep_running: Annotated[
        bool, typer.Option(help="Leave the coordinator and agents up afterwards, until Ctrl-C.")
    ] = False,
) -> None:
    """Run everything on this machine: demo dataset, coordinator, agents and one fine-tune.

    Starts them as local processes and fine-tunes resnet18 on the demo dataset, shown live.

    Then prints the validation accuracy and the model's path, and stops everything again.

    [dim]$ matrec-ctl demo --workdir /tmp/matrec-demo --epochs 3[/]
    """
    from matrec.sdk.ctl.demo import run_demo

    code = run_demo(
        workdir,
        epochs=epochs,
        agents=agents,
        keep_running=keep_running,
        console=console,
    )
    if code:
        raise typer.Exit(code)


# -- the seed's unified training, worker start-up and configuration -----------------------------

# Their code is in sdk/ctl/train.py, sdk/ctl/distributed.py and sdk/ctl/config_cmd.py.
app.command()(train)
app.command()(distributed)
app.add_typer(config_app, name="config")


def main() -> None:
    app()
