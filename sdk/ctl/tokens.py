"""`matrec-ctl tokens`: API tokens for a coordinator started with --auth (admin only)."""

from __future__ import annotations

from typing import Annotated

import typer
from matrec.sdk.ctl.connection import client_from_context
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
    """The tokens (never their secrets): id, name, role, permissions, who created and revoked
    them, and when."""
    from matrec.sdk.ctl.render import format_time
    from rich.table import Table

    with client_from_context(ctx) as client:
        tokens = client.list_tokens()
    table = Table("ID", "NAME", "ROLE", "PERMISSIONS", "CREATED", "BY", "EXPIRES", "REVOKED")
    for token in tokens:
        revoked = format_time(token.revoked_at) if token.revoked_at else ""
        if token.revoked_by:
            revoked += f" by {token.revoked_by}"
        table.add_row(
            token.id,
            token.name,
            token.role,
            ", ".join(token.permissions) or "-",
            format_time(token.created_at),
            token.created_by,
            format_time(token.expires_at) if token.expires_at else "never",
            revoked,
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
