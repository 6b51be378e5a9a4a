"""Logging set-up shared by the long-running programs (coordinator, agent)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Timestamped lines on stderr, for systemd's journal and the demo's log files."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
