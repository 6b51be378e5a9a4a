"""`matrec-ctl active-learning --operation OP ...`: the seed's form of the active-learning
commands. It runs the commands' own code (`matrec.sdk.ctl.active_learning`) on the configured
coordinator, or, with none, on the embedded cluster of an ActiveLearner's --storage-dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from matrec.sdk.ctl.active_learning_options import JsonOption, Strategy
from matrec.sdk.ctl.errors import EXIT_FAILURE, EXIT_INVALID_INPUT, print_error, stderr

if TYPE_CHECKING:
    from matrec.sdk.client import Client


class Operation(StrEnum):
    select = "select"
    feedback = "feedback"
    status = "status"
    check_triggers = "check-triggers"
    retrain = "retrain"


@dataclass(frozen=True)
class SeedOptions:
    """The options of the seed's form; None means "not given"."""

    operation: Operation
    project: str | None = None
    storage_dir: Path | None = None
    count: int | None = None
    strategy: str | None = None
    sample_id: str | None = None
    material_id: str | None = None
    batch_id: str | None = None
    trigger_id: str | None = None
    dataset: Path | None = None
    pool: Path | None = None
    model_job: str | None = None
    class_balance: bool = False
    overwrite: bool = False
    add_class: bool = False
    wait: bool = False
    as_json: bool = False


#: What each operation needs, as (option, SeedOptions field).
REQUIRED: dict[Operation, tuple[tuple[str, str], ...]] = {
    Operation.select: (("--count", "count"),),
    Operation.feedback: (
        ("--batch-id", "batch_id"),
        ("--sample-id", "sample_id"),
        ("--material-id", "material_id"),
    ),
}


def seed_operation(
    ctx: typer.Context,
    operation: Annotated[
        Operation | None,
        typer.Option(
            help="The seed's form of the commands below: select, feedback, status, "
            "check-triggers (evaluate the triggers now) or retrain.",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            metavar="PROJECT",
            help="Project id (alp-…); default: the one remembered in --storage-dir.",
            show_default=False,
        ),
    ] = None,
    storage_dir: Annotated[
        Path | None,
        typer.Option(
            help="An ActiveLearner's folder (project.json; cluster/ when embedded). "
            "Default: ~/.matrec/active-learning.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(min=1, help="select: samples to propose.", show_default=False),
    ] = None,
    strategy: Annotated[
        Strategy | None,
        typer.Option(help="select: the strategy; default: the project's.", show_default=False),
    ] = None,
    class_balance: Annotated[
        bool, typer.Option("--class-balance", help="select: spread over predicted classes.")
    ] = False,
    batch_id: Annotated[
        str | None, typer.Option(metavar="BATCH", help="feedback: batch id.", show_default=False)
    ] = None,
    sample_id: Annotated[
        str | None,
        typer.Option(metavar="SAMPLE", help="feedback: sample id.", show_default=False),
    ] = None,
    material_id: Annotated[
        str | None,
        typer.Option(metavar="LABEL", help="feedback: the correct class.", show_default=False),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="feedback: replace a different label.")
    ] = False,
    add_class: Annotated[
        bool, typer.Option("--add-class", help="feedback: accept a class the model lacks.")
    ] = False,
    trigger_id: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help="retrain: the fired trigger it answers.", show_default=False
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="retrain: follow the job until it ends.")
    ] = False,
    dataset: Annotated[
        Path | None,
        typer.Option(help="A new project's labelled dataset.", show_default=False),
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option(help="A new project's unlabelled images.", show_default=False),
    ] = None,
    model_job: Annotated[
        str | None,
        typer.Option(
            metavar="JOB",
            help="A new project's model job; without it a first model is trained.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The seed's form (see the group's help): dispatch --operation to the commands' code."""
    if ctx.invoked_subcommand is not None:
        if operation is not None:
            print_error(
                f"--operation {operation.value} and the command {ctx.invoked_subcommand!r}: "
                "use one of them"
            )
            raise typer.Exit(EXIT_INVALID_INPUT)
        return
    if operation is None:
        print_error(
            "pass --operation (select, feedback, status, check-triggers, retrain) or a command; "
            "see matrec-ctl active-learning --help"
        )
        raise typer.Exit(EXIT_INVALID_INPUT)
    options = SeedOptions(
        operation=operation,
        project=project,
        storage_dir=storage_dir,
        count=count,
        strategy=None if strategy is None else strategy.value,
        sample_id=sample_id,
        material_id=material_id,
        batch_id=batch_id,
        trigger_id=trigger_id,
        dataset=dataset,
        pool=pool,
        model_job=model_job,
        class_balance=class_balance,
        overwrite=overwrite,
        add_class=add_class,
        wait=wait,
        as_json=as_json,
    )
    missing = [flag for flag, name in REQUIRED.get(operation, ()) if getattr(options, name) is None]
    if missing:
        print_error(f"--operation {operation.value} needs {', '.join(missing)}")
        raise typer.Exit(EXIT_INVALID_INPUT)
    from matrec.sdk.ctl.config_cmd import configured_coordinator

    run_seed_operation(configured_coordinator(ctx), options)


def run_seed_operation(coordinator: str | None, options: SeedOptions) -> None:
    """Run one seed-form operation on `coordinator` (None: the embedded cluster of the storage
    dir), with the commands' own code."""
    from matrec.sdk.active_learning import DEFAULT_STORAGE_DIR, PROJECT_FILE, ActiveLearner
    from matrec.sdk.ctl.active_learning import show_status

    storage = (options.storage_dir or Path(DEFAULT_STORAGE_DIR)).expanduser()
    remembered = (storage / PROJECT_FILE).is_file()
    if options.operation is Operation.feedback and coordinator is not None:
        # A batch id names its project: no project needed.
        with _connect(coordinator) as client:
            _feedback(client, options)
        return
    if options.project is None and not remembered:
        starting = options.dataset is not None and options.pool is not None
        if options.operation is Operation.status and coordinator is not None and not starting:
            with _connect(coordinator) as client:
                show_status(client, None, options.as_json)
            return
        if not starting:
            print_error(
                f"no project: none is remembered in {storage}; pass --project ID, the "
                "--storage-dir of an ActiveLearner, or --dataset and --pool (and --model-job) "
                "to start one there"
            )
            raise typer.Exit(EXIT_INVALID_INPUT)
    if coordinator is not None and options.project is not None:
        with _connect(coordinator) as client:
            _dispatch(client, options.project, options, embedded=False)
        return
    if coordinator is None:
        stderr.print(
            f"no coordinator configured: the embedded cluster in {storage / 'cluster'} runs for "
            "this call",
            style="dim",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    try:
        learner = ActiveLearner(
            storage,
            project_id=options.project,
            dataset_path=options.dataset,
            pool_path=options.pool,
            model_job_id=options.model_job,
            coordinator=coordinator,
        )
    except ValueError as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    with learner:
        _dispatch(learner.client, learner.project_id, options, embedded=coordinator is None)


def _connect(address: str) -> Client:
    from matrec.sdk.client import Client

    return Client(address)


def _feedback(client: Client, options: SeedOptions) -> None:
    from matrec.sdk.ctl.active_learning import record_one

    assert options.batch_id and options.sample_id and options.material_id
    record_one(
        client,
        options.batch_id,
        options.sample_id,
        options.material_id,
        overwrite=options.overwrite,
        add_class=options.add_class,
    )


def _dispatch(client: Client, project_id: str, options: SeedOptions, *, embedded: bool) -> None:
    from matrec.sdk.ctl.active_learning import (
        show_selection,
        show_status,
        show_triggers,
        start_retraining,
    )

    operation = options.operation
    if operation is Operation.status:
        show_status(client, project_id, options.as_json)
    elif operation is Operation.select:
        assert options.count is not None
        from matrec.sdk.active_learning import select_when_scored
        from matrec.sdk.errors import JobFailedError

        try:
            batch = select_when_scored(
                client,
                project_id,
                options.count,
                options.strategy or "",
                class_balance=options.class_balance,
            )
        except JobFailedError as exc:
            print_error(f"scoring the pool failed (job {exc.job_id}, {exc.state}): {exc.error}")
            raise typer.Exit(EXIT_FAILURE) from None
        where = f" --storage-dir {options.storage_dir}" if options.storage_dir else ""
        show_selection(
            batch,
            options.count,
            options.as_json,
            how_to_label=f"label them: matrec-ctl active-learning --operation feedback "
            f"--batch-id {batch.id} --sample-id SAMPLE --material-id LABEL{where}",
        )
    elif operation is Operation.feedback:
        _feedback(client, options)
    elif operation is Operation.check_triggers:
        show_triggers(client.check_triggers(project_id), options.as_json)
    else:
        # An embedded cluster stops with this command: wait for the job to end.
        start_retraining(
            client, project_id, options.trigger_id or "", wait=options.wait or embedded
        )
