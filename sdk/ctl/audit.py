"""`matrec-ctl audit`: the coordinator's audit log of state-changing calls (admin only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from matrec.sdk.ctl.connection import client_from_context
from rich.console import Console

console = Console(soft_wrap=True)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `7d` (ago) or an ISO 8601 time (UTC unless it names a zone)."""
    match = _AGO.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor a time (2026-12-07T09:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def audit(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option(help="Only entries since then: 30m, 2h, 7d, or a time (ISO 8601).")
    ] = "",
    who: Annotated[str, typer.Option(help="Only this caller's entries (a token's name).")] = "",
    limit: Annotated[int, typer.Option(min=1, help="At most this many (the newest).")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The audit log: every state-changing call, who made it, what it named or made, from
    where, and whether it was allowed (needs an admin token).

    [dim]$ matrec-ctl audit --since 2h --who alice[/]
    """
    from matrec.sdk.ctl.render import format_time, to_json
    from rich import box
    from rich.table import Table
    from rich.text import Text

    start = parse_since(since) if since else None
    with client_from_context(ctx) as client:
        entries = client.audit_log(start, who, limit)
    if as_json:
        typer.echo(to_json(entries))
        return
    if not entries:
        console.print("no audit entries", style="dim")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("TIME", "WHO", "CALL", "TARGETS", "PEER", "OUTCOME"):
        table.add_column(title, overflow="fold")
    for entry in entries:
        outcome = Text(entry.outcome, style="green" if entry.outcome == "allowed" else "red")
        if entry.reason:
            outcome.append(f" {entry.reason}", style="dim")
        table.add_row(
            format_time(entry.time),
            Text(entry.who),
            entry.method.rsplit("/", 1)[-1],
            Text(" ".join(f"{k}={v}" for k, v in sorted(entry.targets.items()))),
            Text(entry.peer),
            outcome,
        )
    console.print(table)
