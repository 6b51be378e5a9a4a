"""The SDK client a command talks through: the coordinator address the `matrec-ctl` callback
resolved (-c, MATREC_COORDINATOR) is the context object. The SDK is imported only here, when a
command runs, so `--help` stays fast."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from matrec.sdk.client import Client


def client_from_context(ctx: typer.Context) -> Client:
    from matrec.sdk.client import Client

    return Client(ctx.obj)
