"""The system tools a test needs, found through the one list `make setup` installs from
(`matrec.sdk.ctl.doctor.SYSTEM_TOOLS`); a missing one fails the test with the doctor's message."""

from __future__ import annotations

from pathlib import Path

import pytest
from matrec.sdk.ctl.doctor import missing_message, tool


def require_tool(name: str) -> Path:
    """The path of the tool's first program (its folder's programs for postgres-server)."""
    path = tool(name).locate()
    if path is None:
        pytest.fail(missing_message(name), pytrace=False)
    return path
