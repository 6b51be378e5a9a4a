"""`matrec-coordinator`: run the coordinator until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from matrec.common.lifetime import stop_with_parent
from matrec.common.logs import configure_logging
from matrec.coordinator.settings import CoordinatorSettings, parse_settings

log = logging.getLogger("matrec.coordinator")


async def serve(settings: CoordinatorSettings) -> None:
    from matrec.coordinator.server import Coordinator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def parent_gone() -> None:
        if not stop.is_set():
            log.info("the process that started this coordinator has ended; stopping")
        stop.set()

    stop_with_parent(
        loop, parent_gone, parent_fd=settings.parent_fd, parent_pid=settings.parent_pid
    )
    coordinator = Coordinator(settings)
    port = await coordinator.start()
    address = f"{settings.host}:{port}"
    metrics = (
        f", metrics on :{coordinator.metrics_port}/metrics" if coordinator.metrics_port else ""
    )
    log.info(
        "matrec coordinator listening on %s (database %s%s)",
        address,
        _where(settings.effective_database_url),
        metrics,
    )
    if settings.ready_file is not None:
        tmp = settings.ready_file.with_suffix(".tmp")
        tmp.write_text(address)
        tmp.replace(settings.ready_file)
    await stop.wait()
    log.info("shutting down")
    await coordinator.stop()
    if settings.ready_file is not None:
        settings.ready_file.unlink(missing_ok=True)  # it names an address no longer served


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
    # Imported once the flags are parsed: `--help` does not pay for SQLAlchemy, grpc and numpy.
    from matrec.coordinator.availability import DATABASE_DOWN_ERRORS

    try:
        asyncio.run(serve(settings))
    except OSError as error:
        sys.exit(f"error: {error}")
    except DATABASE_DOWN_ERRORS as error:
        # The driver's own text names host and port, never the password.
        reason = " ".join(str(error.orig or error).split())
        sys.exit(
            f"error: cannot open the database {_where(settings.effective_database_url)}: "
            f"{reason} (start it, or fix --database-url / MATREC_DATABASE_URL)"
        )


def _where(url: str) -> str:
    """The database URL without its credentials."""
    return url.split("@")[-1] if "@" in url else url


if __name__ == "__main__":
    main()
