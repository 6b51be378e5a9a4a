"""`matrec-ctl hpo`: hyperparameter studies (submit, list, show, best, cancel, watch).

A study runs one ordinary job per trial: the `trial` template (kind, fixed config, resources)
with the sampled hyperparameters written into its config. The coordinator samples (mtpe, tpe,
random, grid, anneal), schedules up to `max_parallel` trials at once and prunes with ASHA or the
median rule. Like the rest of `matrec-ctl`, the SDK is imported only when a command runs.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from matrec.sdk.ctl.connection import client_from_context
from matrec.sdk.ctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, print_error, stderr
from rich.console import Console

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import Study

hpo_app = typer.Typer(
    name="hpo",
    help="Hyperparameter optimisation: a study runs one job per trial and searches a space.\n\n"
    "Like Optuna's studies or Ray Tune's Tuner: pick a sampler (--algorithm), a budget "
    "(--max-trials, --max-parallel) and early stopping (--pruner asha|median).\n\n"
    "[dim]$ matrec-ctl hpo submit --dataset ./wood --space space.json --pruner asha --watch\n"
    "$ matrec-ctl hpo show study-3f2a9c1d0b7e\n"
    "$ matrec-ctl hpo best study-3f2a9c1d0b7e > best.json[/]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# soft_wrap: plain lines are not folded at 80 columns when the output is a pipe or a file.
console = Console(soft_wrap=True)

#: Paths in a trial's config that become absolute (against the cwd, or the spec file's folder).
PATH_KEYS = ("dataset_path", "pretrained_path")


class Algorithm(StrEnum):
    """The samplers of `matrec.common.studies.ALGORITHMS` (a unit test keeps them equal)."""

    mtpe = "mtpe"
    tpe = "tpe"
    random = "random"
    grid = "grid"
    anneal = "anneal"


class Direction(StrEnum):
    maximize = "maximize"
    minimize = "minimize"


class PrunerKind(StrEnum):
    """The pruners of `matrec.common.studies.PRUNERS`."""

    none = "none"
    asha = "asha"
    median = "median"


class BestFormat(StrEnum):
    json = "json"
    args = "args"


@dataclass(frozen=True)
class StudyFlags:
    """The `hpo submit` options; None means "not given" (the spec file's value or the default)."""

    name: str | None = None
    kind: str | None = None
    dataset: Path | None = None
    space: str | None = None
    algorithm: str | None = None
    max_trials: int | None = None
    max_parallel: int | None = None
    objective: str | None = None
    direction: str | None = None
    seed: int | None = None
    grid_points: int | None = None
    startup_trials: int | None = None
    pruner: str | None = None
    min_resource: int | None = None
    reduction_factor: int | None = None
    min_trials: int | None = None
    max_attempts: int | None = None
    cpus: float | None = None
    gpus: int | None = None
    assignments: list[str] = field(default_factory=list)


# -- assembling the spec -----------------------------------------------------------------------


def parse_space(text: str) -> dict[str, Any]:
    """`--space`: inline JSON (it starts with "{") or the path of a JSON/YAML file."""
    from matrec.sdk.errors import InvalidSpecError

    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSpecError("--space", f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidSpecError("--space", "expected a JSON object")
        return data
    path = Path(text).expanduser()
    if not path.is_file():
        raise InvalidSpecError(
            "--space",
            f"{text!r} is neither a file nor inline JSON; e.g. "
            '\'{"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": true}}\'',
        )
    from matrec.sdk.ctl.spec_input import read_spec_file

    return read_spec_file(path, "--space")


def load_study_file(path: Path) -> dict[str, Any]:
    """A whole study spec; the trial's paths are resolved against the file's folder."""
    from matrec.sdk.ctl.spec_input import read_spec_file, resolve_paths

    spec = read_spec_file(path, "--spec")
    trial = spec.get("trial")
    resolve_paths(trial.get("config") if isinstance(trial, dict) else None, PATH_KEYS, path.parent)
    return spec


def build_study_spec(spec_file: Path | None, flags: StudyFlags) -> dict[str, Any]:
    """The spec from `spec_file` (if any), overridden by the flags that were given. Validated
    afterwards by `Client.create_study`, which names the offending field."""
    from matrec.sdk.ctl.spec_input import absolute, parse_assignment
    from matrec.sdk.errors import InvalidSpecError

    spec: dict[str, Any] = load_study_file(spec_file) if spec_file is not None else {}
    trial = spec.setdefault("trial", {})
    if not isinstance(trial, dict):
        raise InvalidSpecError("trial", "must be a job spec: kind, config, resources, ...")
    if flags.kind is not None:
        trial["kind"] = flags.kind
    trial.setdefault("kind", "finetune")
    config = trial.setdefault("config", {})
    if not isinstance(config, dict):
        raise InvalidSpecError("trial.config", "must be a mapping of settings")
    if flags.dataset is not None:
        config["dataset_path"] = absolute(flags.dataset, Path.cwd())
    config.update(parse_assignment(text) for text in flags.assignments)
    if flags.max_attempts is not None:
        trial["max_attempts"] = flags.max_attempts
    resources = {"cpus": flags.cpus, "gpus": flags.gpus}
    if any(value is not None for value in resources.values()):
        current = trial.setdefault("resources", {})
        if not isinstance(current, dict):
            raise InvalidSpecError("trial.resources", "must be a mapping of gpus, cpus, ...")
        current.update({k: v for k, v in resources.items() if v is not None})
    if flags.space is not None:
        spec["search_space"] = parse_space(flags.space)
    top = {
        "name": flags.name,
        "algorithm": flags.algorithm,
        "max_trials": flags.max_trials,
        "max_parallel": flags.max_parallel,
        "objective": flags.objective,
        "direction": flags.direction,
        "seed": flags.seed,
        "grid_points": flags.grid_points,
        "n_startup_trials": flags.startup_trials,
    }
    spec.update({key: value for key, value in top.items() if value is not None})
    _apply_pruner(spec, flags)
    return spec


def _apply_pruner(spec: dict[str, Any], flags: StudyFlags) -> None:
    from matrec.sdk.errors import InvalidSpecError

    settings = {
        "min_resource": flags.min_resource,
        "reduction_factor": flags.reduction_factor,
        "min_trials": flags.min_trials,
    }
    given = {key: value for key, value in settings.items() if value is not None}
    if flags.pruner is None and not given:
        return
    pruner = spec.setdefault("pruner", {})
    if not isinstance(pruner, dict):
        raise InvalidSpecError("pruner", "must be a mapping: kind, min_resource, ...")
    if flags.pruner is not None:
        pruner["kind"] = flags.pruner
    pruner.update(given)
    kind = pruner.get("kind", "none")
    # A setting the chosen pruner does not use is a mistake worth a line, not a silent no-op.
    uses = {"asha": ("min_resource", "reduction_factor"), "median": ("min_resource", "min_trials")}
    for key in given:
        if key not in uses.get(kind, ()):
            option = "--" + key.replace("_", "-")
            users = " or ".join(k for k, keys in uses.items() if key in keys)
            raise InvalidSpecError(option, f"only applies with --pruner {users} (pruner: {kind})")


# -- following a study -------------------------------------------------------------------------


def follow_study(
    client: Client,
    study_id: str,
    out: Console,
    *,
    interval: float = 1.0,
    timeout: float | None = None,
) -> None:
    """Show the study live (plain lines in a pipe) until it ends, then its summary line.
    Exit code 0 when it completed, 1 otherwise, 130 when interrupted."""
    from matrec.sdk.ctl.study_view import follow

    try:
        follow(client.watch_study(study_id, interval=interval, timeout=timeout), out)
    except KeyboardInterrupt:
        out.print(
            f"stopped watching; study {study_id} keeps running "
            f"(matrec-ctl hpo cancel {study_id} stops it)",
            style="dim",
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _finish(client.get_study(study_id), out)


def _finish(study: Study, out: Console) -> None:
    from matrec.sdk.ctl.study_view import study_summary

    out.print(study_summary(study))
    if study.state != "completed":
        raise typer.Exit(EXIT_FAILURE)


# -- commands ----------------------------------------------------------------------------------

StudyArgument = Annotated[
    str, typer.Argument(metavar="STUDY", help="Study id (study-…), as `hpo submit` prints it.")
]


@hpo_app.command()
def submit(
    ctx: typer.Context,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            metavar="FILE",
            help="A whole study spec, JSON (or YAML with PyYAML): name, trial, search_space, "
            "algorithm, ...; the flags below override it.",
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(help="ImageFolder dataset every finetune trial trains on."),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="Job kind of the trials: finetune (default) or diagnostic (no training)."
        ),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            metavar="JSON|FILE",
            help="Search space, inline JSON or a JSON/YAML file: each config setting to tune "
            'maps to {"type": "float", "min", "max", "log", "step"}, '
            '{"type": "int", "min", "max", "step", "log"} or '
            '{"type": "categorical", "choices": [...]}.',
        ),
    ] = None,
    algorithm: Annotated[
        Algorithm | None,
        typer.Option(
            help="Sampler: mtpe (Optuna's multivariate Tree-structured Parzen Estimator), tpe "
            "(hyperopt's TPE, one parameter at a time), random, grid (every combination; floats "
            "get --grid-points values) or anneal. Default mtpe."
        ),
    ] = None,
    max_trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Trials to run (Optuna's n_trials, Ray Tune's num_samples). Default 10; "
            "grid: the whole grid.",
        ),
    ] = None,
    max_parallel: Annotated[
        int | None,
        typer.Option(
            min=1, help="Trials running at once (Ray Tune's max_concurrent_trials). Default 2."
        ),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            metavar="METRIC",
            help="Metric to optimise: for finetune val/accuracy (default), val/macro_f1, "
            "val/loss, train/accuracy, train/loss_epoch; for diagnostic diagnostic/score.",
        ),
    ] = None,
    direction: Annotated[
        Direction | None,
        typer.Option(help="Default: the metric's natural one (maximize accuracy, minimize loss)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="Sampler seed, for a reproducible study. Default 0.")
    ] = None,
    grid_points: Annotated[
        int | None,
        typer.Option(min=2, help="grid: values per float parameter without a step. Default 5."),
    ] = None,
    startup_trials: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="mtpe/tpe/anneal: random trials before the model is used "
            "(Optuna's n_startup_trials). Default min(10, max(2, max-trials/4)).",
        ),
    ] = None,
    pruner: Annotated[
        PrunerKind | None,
        typer.Option(
            help="Early stopping of poor trials: asha (asynchronous successive halving, like "
            "Ray Tune's ASHAScheduler), median (like Optuna's MedianPruner) or none (default).",
        ),
    ] = None,
    min_resource: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="asha: the first rung, in objective reports (epochs for finetune); median: "
            "reports before a trial can be pruned. Default 1.",
        ),
    ] = None,
    reduction_factor: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="asha: rungs at min-resource * factor^k; the best 1/factor go on. Default 3.",
        ),
    ] = None,
    min_trials: Annotated[
        int | None,
        typer.Option(min=1, help="median: trials to compare against before pruning. Default 3."),
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="A fixed config setting of every trial, e.g. epochs=6; value parsed as JSON "
            "when it can be (repeatable).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name of the study.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, help="Attempts per trial task before the trial fails.")
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs each trial needs.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs each trial needs.")] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Block until the study ends (no live view): print its id, then a summary "
            "line; exit code 1 unless it completed.",
        ),
    ] = False,
    watch_study: Annotated[
        bool,
        typer.Option("--watch", "-w", help="Follow the study live after submitting."),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", min=0, help="With --wait or --watch: give up after this long."
        ),
    ] = None,
) -> None:
    """Start a study; print its id.

    The spec is checked here and by the coordinator, which also checks that the dataset exists. A bad spec is one error line naming the field, exit code 2.

    A search space maps config settings to ranges, e.g. space.json: {"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": true}, "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64}, "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}}

    [dim]$ matrec-ctl hpo submit --dataset ./wood --space space.json --set epochs=6 \\
        --max-trials 20 --max-parallel 4 --pruner asha --watch
    $ matrec-ctl hpo submit --spec study.json --max-trials 50 --wait
    $ matrec-ctl hpo submit --kind diagnostic --set steps=6 --pruner asha \\
        --space '{"score": {"type": "float", "min": 0, "max": 1}}'[/]
    """  # noqa: E501
    flags = StudyFlags(
        name=name,
        kind=kind,
        dataset=dataset,
        space=space,
        algorithm=None if algorithm is None else algorithm.value,
        max_trials=max_trials,
        max_parallel=max_parallel,
        objective=objective,
        direction=None if direction is None else direction.value,
        seed=seed,
        grid_points=grid_points,
        startup_trials=startup_trials,
        pruner=None if pruner is None else pruner.value,
        min_resource=min_resource,
        reduction_factor=reduction_factor,
        min_trials=min_trials,
        max_attempts=max_attempts,
        cpus=cpus,
        gpus=gpus,
        assignments=assignments or [],
    )
    spec = build_study_spec(spec_file, flags)
    with client_from_context(ctx) as client:
        study = client.create_study(spec)
        if watch_study:
            console.print(f"submitted study [bold]{study.id}[/]")
            follow_study(client, study.id, console, timeout=timeout)
            return
        typer.echo(study.id)
        if wait:
            _finish(client.wait_study(study.id, timeout=timeout), console)


@hpo_app.command("list")
def list_studies(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="At most this many studies.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List studies, newest first: state, algorithm, trials finished, best value.

    [dim]$ matrec-ctl hpo list --limit 10[/]
    """
    from matrec.sdk.ctl.render import to_json
    from matrec.sdk.ctl.study_view import studies_table

    with client_from_context(ctx) as client:
        found = client.list_studies(limit=limit)
    if as_json:
        typer.echo(to_json(found))
    elif not found:
        console.print("no studies; start one with `matrec-ctl hpo submit`", style="dim")
    else:
        console.print(studies_table(found))


@hpo_app.command()
def show(
    ctx: typer.Context,
    study_id: StudyArgument,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the study as JSON, with every trial's curve.")
    ] = False,
) -> None:
    """Show a study: its settings, progress and best trial, then every trial, best first.

    Pruned trials show the rung and resource they were stopped at, failed ones their error.

    [dim]$ matrec-ctl hpo show study-3f2a9c1d0b7e[/]
    """
    from matrec.sdk.ctl.render import to_json
    from matrec.sdk.ctl.study_view import study_detail

    with client_from_context(ctx) as client:
        study = client.get_study(study_id)
    if as_json:
        typer.echo(to_json(study))
    else:
        console.print(study_detail(study, width=console.width))


@hpo_app.command()
def best(
    ctx: typer.Context,
    study_id: StudyArgument,
    fmt: Annotated[
        BestFormat,
        typer.Option(
            "--format",
            "-f",
            help="json: the parameters as a JSON object; args: as --set options for "
            "`matrec-ctl submit`.",
        ),
    ] = BestFormat.json,
) -> None:
    """Print the best trial's hyperparameters on stdout (its objective goes to stderr).

    Exit code 1 while no trial has completed.

    [dim]$ matrec-ctl hpo best study-3f2a9c1d0b7e > best.json
    $ matrec-ctl submit --dataset ./wood $(matrec-ctl hpo best study-3f2a9c1d0b7e -f args)[/]
    """
    from matrec.sdk.ctl.study_view import counts_text, format_objective

    with client_from_context(ctx) as client:
        study = client.get_study(study_id)
    trial = study.best
    if trial is None:
        so_far = counts_text(study) or "no trials"
        print_error(f"study {study.id} has no completed trial yet ({so_far}, {study.state})")
        raise typer.Exit(EXIT_FAILURE)
    if fmt is BestFormat.json:
        typer.echo(json.dumps(trial.params, indent=2, sort_keys=True))
    else:
        typer.echo(" ".join(_set_options(trial.params)))
    note = "" if study.finished else f" · study {study.state}, best so far"
    stderr.print(
        f"trial {trial.number}: {study.objective} {format_objective(trial.objective_value)} "
        f"({study.spec.get('direction')}) · job {trial.job_id}{note}",
        style="dim",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


def _set_options(params: dict[str, Any]) -> list[str]:
    """`--set key=value` for each parameter, quoted for a shell; a string value that would parse
    as JSON (e.g. "1") is written as a JSON string so that it stays a string."""
    options = []
    for key in sorted(params):
        value = params[key]
        if isinstance(value, str):
            try:
                json.loads(value)
                text = json.dumps(value)
            except json.JSONDecodeError:
                text = value
        else:
            text = json.dumps(value)
        options += ["--set", shlex.quote(f"{key}={text}")]
    return options


@hpo_app.command()
def cancel(
    ctx: typer.Context,
    study_id: StudyArgument,
    reason: Annotated[str, typer.Option(help="Why; kept as the study's error text.")] = "",
) -> None:
    """Cancel a study: no new trials start and the running ones are cancelled.

    [dim]$ matrec-ctl hpo cancel study-3f2a9c1d0b7e --reason "wrong dataset"[/]
    """
    from matrec.sdk.ctl.study_view import state_text

    with client_from_context(ctx) as client:
        study = client.cancel_study(study_id, reason)
    if study.finished:
        console.print("study", study.id, state_text(study.state))
    else:
        console.print(f"study {study.id}: cancel requested; its running trials are being stopped")


@hpo_app.command()
def watch(
    ctx: typer.Context,
    study_id: StudyArgument,
    interval: Annotated[
        float,
        typer.Option(min=0.2, help="Shortest time between two updates, in seconds."),
    ] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(metavar="SECONDS", min=0, help="Give up after this long.")
    ] = None,
) -> None:
    """Follow a study live until it ends: exit code 0 if it completed, 1 otherwise.

    On a terminal: a progress bar (trials finished of max_trials), the best trial so far and the trial table, best first, updating as trials report (running ones show their newest value @ resource). Hyperparameter columns that do not fit the width are left out.

    In a pipe: one line per trial start and end, and each new best.

    [dim]$ matrec-ctl hpo watch study-3f2a9c1d0b7e
    $ matrec-ctl watch study-3f2a9c1d0b7e   (the same)[/]
    """  # noqa: E501
    with client_from_context(ctx) as client:
        follow_study(client, study_id, console, interval=interval, timeout=timeout)
