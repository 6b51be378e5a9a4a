"""`matrec-ctl ui`: serve the web dashboard (`matrec.sdk.web`), a client of the coordinator
like every other command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from matrec.common.hosts import is_loopback
from matrec.sdk.ctl.errors import EXIT_FAILURE, print_error


def ui(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; loopback unless --allow-remote.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="Every user signs in with their own matrec token (the coordinator judges each "
            "request by its role); else every page uses this command's token.",
        ),
    ] = False,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Listen on a non-loopback --host (needs --auth, and --https-cert/--https-key "
            "unless --insecure).",
        ),
    ] = False,
    https_cert: Annotated[
        Path | None, typer.Option("--https-cert", help="Serve HTTPS with this certificate (PEM).")
    ] = None,
    https_key: Annotated[Path | None, typer.Option("--https-key", help="Its private key.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow plain HTTP on a non-loopback --host.")
    ] = False,
) -> None:
    """Serve the web dashboard: runs with live learning curves, the cluster.

    [dim]$ matrec-ctl ui                      # http://127.0.0.1:8765
    $ matrec-ctl -c coord:50051 ui --auth --allow-remote --host 0.0.0.0 \\
          --https-cert web.pem --https-key web.key[/]
    """
    if (https_cert is None) != (https_key is None):
        print_error("--https-cert and --https-key go together")
        raise typer.Exit(EXIT_FAILURE)
    if not is_loopback(host):
        if not allow_remote:
            print_error(f"--host {host} is not loopback; add --allow-remote (and --auth)")
            raise typer.Exit(EXIT_FAILURE)
        if not auth:
            print_error("a dashboard reachable from other hosts needs --auth (sign-in with tokens)")
            raise typer.Exit(EXIT_FAILURE)
        if https_cert is None and not insecure:
            print_error(
                f"--host {host} without HTTPS would send tokens in the clear; give "
                "--https-cert/--https-key, or --insecure on a trusted network"
            )
            raise typer.Exit(EXIT_FAILURE)
    try:
        import uvicorn
        from matrec.sdk.web.app import WebSettings, create_app
    except ImportError as exc:
        print_error(f"the dashboard needs its extra: pip install 'matrec[ui]' ({exc})")
        raise typer.Exit(EXIT_FAILURE) from None
    from matrec.sdk.address import default_address, default_tls, default_token

    ca, cert, key = default_tls()
    hosts = ("*",) if not is_loopback(host) else ("127.0.0.1", "localhost", "::1", host)
    settings = WebSettings(
        coordinator=ctx.obj or default_address(),
        auth=auth,
        token=default_token(),
        secure_cookies=https_cert is not None,
        allowed_hosts=hosts,
        tls_ca=ca,
        tls_cert=cert,
        tls_key=key,
    )
    scheme = "https" if https_cert else "http"
    typer.echo(f"matrec dashboard on {scheme}://{host}:{port} (coordinator {settings.coordinator})")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(https_cert) if https_cert else None,
        ssl_keyfile=str(https_key) if https_key else None,
    )
