"""`matrec-ctl config show`: the effective configuration of the SDK's unified API, and how the
seed-style commands (`train`, `active-learning --operation`, `distributed`) find their coordinator.

One precedence everywhere (`matrec.sdk.config`): a flag > the environment (MATREC_*, then the
seed's names) > the config file > the default. For the coordinator, the flag is the command's
own ``--coordinator`` or matrec-ctl's ``-c/--coordinator`` when given on the command line; with
none configured these commands start an embedded one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from matrec.sdk.ctl.errors import EXIT_INVALID_INPUT, print_error
from rich.console import Console

if TYPE_CHECKING:
    from matrec.sdk.config import MatrecConfig

config_app = typer.Typer(
    name="config",
    help="The configuration of the unified API (`matrec-ctl train`, EnhancedTrainingAPI).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

console = Console(soft_wrap=True)


def coordinator_flag(ctx: typer.Context, given: str | None = None) -> str | None:
    """The coordinator a command was given on its command line: its own ``--coordinator``
    (`given`), else matrec-ctl's ``-c`` if typed (not its default, not the environment, which
    `load_config` reads itself); None when neither."""
    if given:
        return given
    root = ctx.find_root()
    source = root.get_parameter_source("coordinator")
    if source is not None and source.name == "COMMANDLINE":
        value = root.params.get("coordinator")
        return str(value) if value else None
    return None


def effective_config(
    ctx: typer.Context, config_file: Path | None = None, **overrides: object
) -> MatrecConfig:
    """`load_config` with the command line's coordinator; a bad setting is one error line and
    exit code 2."""
    from matrec.sdk.config import ConfigError, load_config

    try:
        return load_config(config_file=config_file, coordinator=coordinator_flag(ctx), **overrides)
    except (ConfigError, ValueError) as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_INVALID_INPUT) from None


def configured_coordinator(ctx: typer.Context, given: str | None = None) -> str | None:
    """The coordinator by the configuration's precedence (flag > MATREC_COORDINATOR > config
    file); None: none is configured, so the command runs an embedded one."""
    flag = coordinator_flag(ctx, given)
    if flag:
        return flag
    return effective_config(ctx).coordinator


@config_app.command()
def show(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config-file",
            metavar="FILE",
            help="Read this TOML file instead of $MATREC_CONFIG or ~/.matrec/config.toml.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration: each setting's value and where it came from.

    Sources, first wins: a flag (argument), the environment (MATREC_* before the seed's names: SUPABASE_URL, SUPABASE_KEY, NUM_WORKERS, VISUALIZATION_LEVEL, ENABLE_TRANSFER_LEARNING, ENABLE_HYPERPARAMETER_OPT, ENABLE_ACTIVE_LEARNING), the config file, the default. Secrets (token, supabase_key, the database password) are masked.

    [dim]$ matrec-ctl config show
    $ NUM_WORKERS=8 matrec-ctl config show --json[/]
    """  # noqa: E501
    from rich.table import Table
    from rich.text import Text

    config = effective_config(ctx, config_file)
    rows = config.describe()
    if as_json:
        document = {name: {"value": value, "source": source} for name, value, source in rows}
        typer.echo(json.dumps(document, indent=2))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim", overflow="fold")
    for name, value, source in rows:
        table.add_row(name, Text(value or "-"), source)
    # In a pipe, long values (paths, URLs) stay on their line instead of folding at 80 columns.
    out = console if console.is_terminal else Console(width=400)
    out.print(table)
