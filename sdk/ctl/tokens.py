"""`matrec-ctl tokens`: API tokens for a coordinator started with --auth (admin only)."""

from __future__ import annotations

from typing import Annotated

import typer
from matrec.sdk.ctl.connection import client_from_context
from matrec.sdk.types import ApiToken
from rich.console import Console

tokens_app = typer.Typer(
    help="Create, list and revoke API tokens (needs an admin token).\n\n"
    "Roles: viewer (read), operator (also submit, and cancel its own jobs), admin (also tokens, "
    "and cancel anyone's), agent (an agent's own protocol, under the token's name). "
    "Permissions: --allow-scripts (submit script jobs), --cancel-any.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
console = Console(soft_wrap=True)


@tokens_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="Who it is for; for an agent token, the agent's --name.")
    ],
    role: Annotated[str, typer.Option(help="viewer, operator, admin or agent.")] = "viewer",
    ttl: Annotated[int, typer.Option(min=0, help="Seconds until it expires; 0: never.")] = 0,
    allow_scripts: Annotated[
        bool,
        typer.Option(
            "--allow-scripts",
            help="Also let it submit `script` jobs (arbitrary programs on agent hosts).",
        ),
    ] = False,
    cancel_any: Annotated[
        bool,
        typer.Option("--cancel-any", help="Also let it cancel other callers' jobs and studies."),
    ] = False,
) -> None:
    """Create a token and print it. It is shown only this once; keep it secret.

    [dim]$ matrec-ctl tokens create ci-pipeline --role operator[/]
    [dim]$ matrec-ctl tokens create gpu-01 --role agent  # for matrec-agent --name gpu-01[/]
    """
    permissions = [
        name for name, wanted in (("scripts", allow_scripts), ("cancel-any", cancel_any)) if wanted
    ]
    with client_from_context(ctx) as client:
        token, secret = client.create_token(name, role, ttl, permissions=permissions)
    # Only the secret goes to stdout, so that TOKEN=$(matrec-ctl tokens create ...) works.
    Console(stderr=True).print(
        f"token {token.id} for {token.name!r} ({token.role}); shown only this once", style="dim"
    )
    typer.echo(secret)


@tokens_app.command("list")
def list_tokens(ctx: typer.Context) -> None:
    """The tokens (never their secrets): id, name, role and permissions, when and by whom
    created, and whether live, expiring or revoked (when, by whom)."""
    from matrec.sdk.ctl.render import format_time
    from rich.table import Table

    with client_from_context(ctx) as client:
        tokens = client.list_tokens()
    table = Table()
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", no_wrap=True)
    # Narrow terminals fold these rather than cut the id or the name.
    for title in ("ROLE", "CREATED", "BY", "STATUS"):
        table.add_column(title, overflow="fold")
    for token in tokens:
        if token.revoked_at:
            status = f"revoked {format_time(token.revoked_at)} by {token.revoked_by or '?'}"
        elif token.expires_at:
            status = f"expires {format_time(token.expires_at)}"
        else:
            status = "live"
        table.add_row(
            token.id,
            token.name,
            " +".join((token.role, *token.permissions)),
            format_time(token.created_at),
            token.created_by,
            status,
        )
    console.print(table)


@tokens_app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="As `tokens list` shows.")],
) -> None:
    """Revoke a token: refused from the next call on."""
    with client_from_context(ctx) as client:
        token = client.revoke_token(token_id)
    console.print(f"token {token.id} ({token.name!r}) revoked")


@tokens_app.command("limit")
def limit(
    ctx: typer.Context,
    token: Annotated[
        str, typer.Argument(metavar="TOKEN", help="A token's id, or the name of one live token.")
    ],
    max_running_tasks: Annotated[
        int, typer.Option(min=0, help="Most tasks its jobs run at once; 0: no bound.")
    ] = 0,
    max_gpus: Annotated[
        int, typer.Option(min=0, help="Most GPUs its running tasks hold; 0: no bound.")
    ] = 0,
    max_queued_jobs: Annotated[
        int, typer.Option(min=0, help="Most of its jobs waiting; past it SubmitJob is refused.")
    ] = 0,
) -> None:
    """Bound what a token's jobs may hold (replaces its limits; all 0 removes them). A job over
    a running-task or GPU limit waits, with the reason in its history.

    [dim]$ matrec-ctl tokens limit alice --max-gpus 4 --max-queued-jobs 20[/]
    """
    with client_from_context(ctx) as client:
        token_id = _token_id(client.list_tokens(), token)
        updated = client.set_token_limits(
            token_id,
            max_running_tasks=max_running_tasks,
            max_gpus=max_gpus,
            max_queued_jobs=max_queued_jobs,
        )
    limits = updated.limits
    console.print(
        f"token {updated.id} ({updated.name!r}): at most {_bound(limits.max_running_tasks)} "
        f"running tasks, {_bound(limits.max_gpus)} GPUs, {_bound(limits.max_queued_jobs)} "
        "queued jobs"
    )


def _bound(value: int) -> str:
    return str(value) if value else "any"


def _token_id(tokens: list[ApiToken], wanted: str) -> str:
    if any(t.id == wanted for t in tokens):
        return wanted
    live = [t for t in tokens if t.name == wanted and t.revoked_at is None]
    if len(live) == 1:
        return live[0].id
    if not live:
        raise typer.BadParameter(f"no live token has the id or name {wanted!r}; see `tokens list`")
    ids = ", ".join(t.id for t in live)
    raise typer.BadParameter(f"{len(live)} live tokens are named {wanted!r} ({ids}); give an id")
