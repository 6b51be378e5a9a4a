"""`matrec-ctl certs`: a private CA and TLS certificates for a small cluster.

Like the rest of `matrec-ctl`, the work (and `cryptography`) is imported only when a command
runs, so `--help` stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from matrec.sdk.address import DEFAULT_ADDRESS
from matrec.sdk.ctl.errors import EXIT_FAILURE, print_error
from rich.console import Console

if TYPE_CHECKING:
    from matrec.common.tls import CertificatePaths

certs_app = typer.Typer(
    name="certs",
    help="TLS for the coordinator's port: a private CA and certificates for the cluster.\n\n"
    "[dim]$ matrec-ctl certs init ./certs --coordinator-host coord.example.com "
    "--agent gpu-host-1 --agent gpu-host-2[/]",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# soft_wrap: plain lines are not folded at 80 columns when the output is a pipe or a file.
console = Console(soft_wrap=True)


@certs_app.callback()
def certs() -> None:
    # A callback keeps `certs` a group with one command, so `certs init` works standalone too.
    pass


_LABELS = {"ca": "CA", "coordinator": "coordinator", "agents": "agent", "clients": "user"}


def _default_host() -> str:
    import socket

    return socket.gethostname()


def _files(paths: CertificatePaths) -> str:
    unique = dict.fromkeys([paths.ca, paths.cert, paths.key])
    return ", ".join(path.name for path in unique)


def _address(host: str) -> str:
    """HOST:PORT for the coordinator's first host name, on the default port."""
    port = DEFAULT_ADDRESS.rpartition(":")[2]
    host = host.strip().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _flags(*pairs: tuple[str, Path]) -> str:
    return " ".join(f"{flag} {shlex.quote(str(path))}" for flag, path in pairs)


@certs_app.command()
def init(
    directory: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Where to write ca/, coordinator/, agents/, clients/."),
    ],
    coordinator_host: Annotated[
        list[str] | None,
        typer.Option(
            "--coordinator-host",
            metavar="HOST",
            help="DNS name or IP address clients dial the coordinator at (repeatable; default "
            "this machine's hostname). localhost and 127.0.0.1 are always added.",
            show_default=False,
        ),
    ] = None,
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Agent to make a client certificate for; its --name (repeatable).",
            show_default=False,
        ),
    ] = None,
    client: Annotated[
        list[str] | None,
        typer.Option(
            "--client",
            metavar="NAME",
            help="matrec-ctl user to make a client certificate for (repeatable; default admin).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing CA (certificates it signed stop being trusted)."
        ),
    ] = False,
) -> None:
    """Create a CA and certificates: one for the coordinator, one per agent and per user.

    Copy each machine's own folder to it; keep [bold]DIR/ca/ca.key[/] off the cluster.

    [dim]$ matrec-ctl certs init ./certs --coordinator-host 10.0.0.5 --agent gpu-host-1[/]
    """
    from matrec.common.tls import TlsError, init_cluster_certificates
    from rich.table import Table

    hosts = coordinator_host or [_default_host()]
    agents = agent or []
    clients = client or ["admin"]
    try:
        written = init_cluster_certificates(directory, hosts, agents, clients, force=force)
    except (TlsError, OSError) as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_FAILURE) from None

    table = Table(title=f"Certificates in {directory}", title_justify="left")
    table.add_column("For")
    table.add_column("Name")
    table.add_column("Directory")
    table.add_column("Files")
    for key, paths in written.items():
        kind, _, name = key.partition("/")
        shown_name = name or (", ".join(hosts) if kind == "coordinator" else "")
        table.add_row(
            _LABELS.get(kind, kind), shown_name, str(paths.cert.parent) + "/", _files(paths)
        )
    console.print(table)

    console.print()
    console.print(
        "[bold]Flags to use[/] (with --tls-client-ca, every agent and user must present "
        "its certificate):"
    )
    coordinator = written["coordinator"]
    address = shlex.quote(_address(hosts[0]))
    commands = [
        "matrec-ctl server "
        + _flags(
            ("--tls-cert", coordinator.cert),
            ("--tls-key", coordinator.key),
            ("--tls-client-ca", coordinator.ca),
        )
    ]
    for name in agents:
        paths = written[f"agents/{name}"]
        commands.append(
            f"matrec-ctl agent --coordinator {address} --name {shlex.quote(name)} "
            + _flags(("--tls-ca", paths.ca), ("--tls-cert", paths.cert), ("--tls-key", paths.key))
        )
    for name in clients:
        paths = written[f"clients/{name}"]
        commands.append(
            f"matrec-ctl --coordinator {address} "
            + _flags(("--tls-ca", paths.ca), ("--tls-cert", paths.cert), ("--tls-key", paths.key))
            + " jobs"
        )
    for command in commands:
        console.print(f"  $ {command}", markup=False, highlight=False)
