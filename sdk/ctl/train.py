"""`matrec-ctl train`: the seed's unified training (EnhancedTrainingAPI) from the terminal.

`python -m matrec.sdk.training_api` with the seed's flags runs this same command (one parser
for both: `run_seed_command_line`); it builds a `matrec.sdk.training_request.TrainingRequest`
for `run_training`. While it runs, a spinner shows the API's current phase (its progress
callback; each fallback it takes is one warning line); then a summary (or, with --json, the
TrainingResult as JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from matrec.sdk.ctl.config_cmd import coordinator_flag
from matrec.sdk.ctl.errors import EXIT_INTERRUPTED, EXIT_INVALID_INPUT, print_error, stderr
from matrec.sdk.training_request import DEFAULT_MAX_TRIALS
from rich.console import Console
from rich.markup import escape
from rich.text import Text

if TYPE_CHECKING:
    from matrec.sdk.training_progress import TrainingProgress, TrainingUpdate
    from matrec.sdk.training_result import TrainingResult
    from rich.table import Table

# soft_wrap: plain lines are not folded at 80 columns when the output is a pipe or a file.
console = Console(soft_wrap=True)

#: Where the API logs its phases and fallbacks when no progress callback is given (this command
#: gives one).
API_LOGGER = "matrec.sdk.training_api"


# The choices of `python -m matrec.sdk.training_api` (a unit test keeps them equal; importing
# the API here would load grpc for every `--help`).
class ModelType(StrEnum):
    cnn = "cnn"
    hybrid = "hybrid"


class VisualizationLevel(StrEnum):
    minimal = "minimal"
    standard = "standard"
    detailed = "detailed"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def train(
    ctx: typer.Context,
    dataset: Annotated[
        Path,
        typer.Option(
            help="ImageFolder dataset root (train/ and val/, or one folder per class).",
            show_default=False,
        ),
    ],
    model_type: Annotated[
        ModelType,
        typer.Option(help="cnn (backbone only) or hybrid (backbone + texture descriptors)."),
    ] = ModelType.hybrid,
    use_distributed: Annotated[
        bool | None,
        typer.Option(
            "--use-distributed/--no-use-distributed",
            help="Train with --num-workers ranks (Horovod, else torch.distributed). "
            "Default: MATREC_USE_DISTRIBUTED, else off.",
            show_default=False,
        ),
    ] = None,
    optimize_hyperparams: Annotated[
        bool | None,
        typer.Option(
            "--optimize-hyperparams/--no-optimize-hyperparams",
            help="Search learning rate, dropout and dense units first (a TPE study). "
            "Default: ENABLE_HYPERPARAMETER_OPT, else off.",
            show_default=False,
        ),
    ] = None,
    use_transfer_learning: Annotated[
        bool | None,
        typer.Option(
            "--use-transfer-learning/--no-use-transfer-learning",
            help="Start from --pretrained-path with gradual unfreezing (without local weights: "
            "from scratch, and says so). Default: ENABLE_TRANSFER_LEARNING, else on.",
            show_default=False,
        ),
    ] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            metavar="N",
            help="Worker processes: ranks of the fine-tune, parallel trials. "
            "Default: NUM_WORKERS, else 4.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of the final fine-tune.")] = 10,
    max_trials: Annotated[
        int, typer.Option(min=1, help="Trials of the hyperparameter study.")
    ] = DEFAULT_MAX_TRIALS,
    hpo_epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Epochs of each trial (default: --epochs).", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Backbone, e.g. resnet18 (the default) or resnet50.", show_default=False),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(min=8, help="Input side in pixels.", show_default=False)
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Images per step.", show_default=False)
    ] = None,
    pretrained_path: Annotated[
        Path | None,
        typer.Option(
            help="Local weights to start from (a matrec model or a torchvision state_dict). "
            "Default: MATREC_PRETRAINED_PATH.",
            show_default=False,
        ),
    ] = None,
    base_dir: Annotated[
        Path | None,
        typer.Option(
            help="The embedded cluster and the reports live here. "
            "Default: MATREC_BASE_DIR, else ~/.matrec/training.",
            show_default=False,
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Run on this cluster (as -c does). Default: MATREC_COORDINATOR, else an "
            "embedded coordinator and agent started for this training.",
            show_default=False,
        ),
    ] = None,
    visualization_level: Annotated[
        VisualizationLevel | None,
        typer.Option(help="What the reports show. Default: standard.", show_default=False),
    ] = None,
    device: Annotated[
        Device | None,
        typer.Option(
            help="auto (a GPU where the agents have one), cpu or cuda.", show_default=False
        ),
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any other finetune config field, value parsed as JSON when it can be "
            "(repeatable).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the TrainingResult as JSON on stdout.")
    ] = False,
) -> None:
    """Train a model with every improvement asked for: transfer learning, hyperparameter optimisation, distributed training, reports.

    The same flags as `python -m matrec.sdk.training_api`; left out, they take their value from the environment, then the config file (see `matrec-ctl config show`). Without a configured coordinator the training runs on an embedded one with a local agent, started and stopped for it. Ends with the best hyperparameters, the validation accuracy, the report's path and the fallbacks taken (no GPU, no Horovod, no local pretrained model, no Supabase database).

    [dim]$ matrec-ctl train --dataset ./materials --model-type hybrid --use-distributed \\
        --optimize-hyperparams --use-transfer-learning --num-workers 4
    $ matrec-ctl train --dataset ./wood --pretrained-path textures.pt --epochs 5 --json[/]
    """  # noqa: E501
    from matrec.sdk.config import ConfigError
    from matrec.sdk.training_request import TrainingRequest, run_training

    request = TrainingRequest(
        dataset=str(dataset),
        model_type=model_type.value,
        use_distributed=use_distributed,
        optimize_hyperparams=optimize_hyperparams,
        use_transfer_learning=use_transfer_learning,
        num_workers=num_workers,
        epochs=epochs,
        max_trials=max_trials,
        hpo_epochs=hpo_epochs,
        model=model,
        image_size=image_size,
        batch_size=batch_size,
        pretrained_path=None if pretrained_path is None else str(pretrained_path),
        base_dir=None if base_dir is None else str(base_dir),
        coordinator=coordinator_flag(ctx, coordinator),
        visualization_level=None if visualization_level is None else visualization_level.value,
        device=None if device is None else device.value,
        settings=tuple(assignments or ()),
    )
    try:
        request.finetune_config()
    except ValueError as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    try:
        with phase_display(stderr) as show:
            result = run_training(request, progress=show)
    except (ConfigError, ValueError) as exc:
        # Bad settings or arguments, found before anything ran (MatrecError, a failed job or
        # study, is reported by the command group).
        print_error(str(exc))
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except KeyboardInterrupt:
        print_error(
            "interrupted: an embedded cluster is stopped with its jobs; on a configured "
            "coordinator they keep running (matrec-ctl jobs, matrec-ctl cancel JOB)"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    # In a pipe, long values (paths, fallback notes) stay on their line instead of folding.
    out = console if console.is_terminal else Console(width=400)
    out.print(result_table(result))


# -- python -m matrec.sdk.training_api ---------------------------------------------------------

SEED_PROG = "python -m matrec.sdk.training_api"


def run_seed_command_line(argv: Sequence[str] | None = None) -> int:
    """`python -m matrec.sdk.training_api ARGS`, the seed's invocation: this command's options
    (through `build_parser`), its phases and fallbacks logged to stderr, the result's summary
    (or, with --json, the TrainingResult as JSON) on stdout. Exit code 2 for a malformed
    --set, 1 when the settings or the training fail; returns it."""
    from dataclasses import fields

    from matrec.sdk.config import ConfigError
    from matrec.sdk.errors import MatrecError
    from matrec.sdk.training_request import TrainingRequest, run_training

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    given = {f.name: getattr(args, f.name) for f in fields(TrainingRequest) if f.name != "settings"}
    request = TrainingRequest(**given, settings=tuple(args.assignments))
    try:
        request.finetune_config()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_training(request)
    except (MatrecError, ConfigError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2) if args.as_json else result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """This command's options as an argparse parser, generated from the command itself (for
    code that inspects the seed's `python -m matrec.sdk.training_api` grammar)."""
    import typer.main

    single = typer.Typer()
    single.command()(train)
    command = typer.main.get_command(single)
    hints = typing.get_type_hints(train)
    summary = (command.help or "").split("\n\n")[0]  # the rest holds matrec-ctl's examples
    parser = argparse.ArgumentParser(prog=SEED_PROG, description=summary)
    for param in command.params:
        if param.name not in hints or not param.opts[0].startswith("-"):
            continue  # typer's --install-completion and --show-completion
        kind = next(
            (t for t in typing.get_args(hints[param.name]) if t is not type(None)),
            hints[param.name],
        )
        options: dict[str, Any] = {"dest": param.name, "help": getattr(param, "help", None)}
        if param.secondary_opts:
            options.update(action=argparse.BooleanOptionalAction, default=None)
        elif kind is bool:
            options.update(action="store_true")
        elif param.multiple:
            options.update(action="append", default=[], metavar=param.metavar)
        else:
            default = param.default
            options.update(required=param.required, default=getattr(default, "value", default))
            if param.metavar:
                options["metavar"] = param.metavar
            if isinstance(kind, type) and issubclass(kind, Enum):
                options["choices"] = tuple(member.value for member in kind)
            elif kind is int:
                options["type"] = int
        parser.add_argument(*param.opts, **options)
    return parser


# -- while it runs -----------------------------------------------------------------------------


@contextmanager
def phase_display(out: Console) -> Iterator[TrainingProgress]:
    """The API's progress callback, shown on `out` (stderr, so that stdout holds only the
    result): a spinner with the current phase and the time so far on a terminal, plain phase
    lines otherwise; each fallback as one warning line."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=out,
        transient=True,
        disable=not out.is_terminal,
    )
    first = "starting: checking the configuration and the cluster"
    line = progress.add_task(escape(first), total=None)

    def show(update: TrainingUpdate) -> None:
        if update.kind == "fallback":
            out.print(Text(f"warning: {update.text}", style="yellow"), soft_wrap=True)
        elif out.is_terminal:
            progress.update(line, description=escape(update.text))
        else:
            out.print(Text(update.text, style="dim"), soft_wrap=True)

    with progress:
        yield show


# -- the result --------------------------------------------------------------------------------


def result_table(result: TrainingResult) -> Table:
    """The TrainingResult as label/value rows: what it trained, its accuracy, the study's best
    hyperparameters, the reports and each fallback taken."""
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    start = result.pretrained_path or "scratch (no pretrained model)"
    rows: list[tuple[str, str]] = [
        ("job", result.job_id),
        (
            "val accuracy",
            f"{result.val_accuracy:.4f}  (macro-F1 {result.evaluation.macro_f1:.4f})",
        ),
        ("model", result.model_path),
        (
            "trained",
            f"{result.model_type} on {result.device}, {result.workers_per_host} "
            f"worker{'s' if result.workers_per_host != 1 else ''}, from {start}",
        ),
    ]
    if result.best_params is not None:
        rows.append(("study", f"{result.hpo_study_id} (best {_number(result.hpo_best_value)})"))
        for name, value in sorted(result.best_params.items()):
            rows.append((f"  {name}", _number(value)))
    else:
        rows.append(("best params", "- (no hyperparameter search)"))
    rows.append(("report", result.report_path or "- (not written)"))
    if result.study_report_path:
        rows.append(("study report", result.study_report_path))
    for note in result.degraded:
        rows.append(("fallback", note))
    rows.append(("took", f"{result.seconds:.1f} s"))
    for label, value in rows:
        table.add_row(label, Text(value))
    return table


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
