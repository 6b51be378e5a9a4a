"""`matrec-agent`: serve a coordinator until SIGTERM, then hand running work back."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from matrec.agent.daemon import AgentDaemon
from matrec.agent.settings import AgentSettings, parse_settings
from matrec.agent.telemetry import AgentTelemetry
from matrec.common.lifetime import stop_with_parent
from matrec.common.logs import configure_logging

log = logging.getLogger("matrec.agent")


async def serve(settings: AgentSettings) -> None:
    telemetry = AgentTelemetry()
    if settings.metrics_port:
        port = telemetry.serve(settings.metrics_host, settings.metrics_port)
        log.info("agent metrics on %s:%d/metrics", settings.metrics_host, port)
    daemon = AgentDaemon(settings, telemetry)
    h = daemon.host
    log.info(
        "matrec agent %s: %.0f CPU(s), %d GPU(s), %.1f GiB; coordinator %s",
        settings.name,
        h.cpus,
        len(h.gpus),
        h.memory_bytes / 2**30,
        settings.coordinator,
    )
    loop = asyncio.get_running_loop()
    shutdown: set[asyncio.Task[None]] = set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: shutdown.add(asyncio.create_task(daemon.shutdown())))

    def parent_gone() -> None:
        shutdown.add(asyncio.create_task(daemon.shutdown(parent_gone=True)))

    stop_with_parent(
        loop, parent_gone, parent_fd=settings.parent_fd, parent_pid=settings.parent_pid
    )
    await daemon.run()
    log.info("agent stopped")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
