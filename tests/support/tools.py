"""The system tools a test needs, found through the one list `make setup` installs from
(`matrec.sdk.ctl.doctor.SYSTEM_TOOLS`); a missing one fails the test with the doctor's message."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from matrec.sdk.ctl.doctor import missing_message, tool

ROOT = Path(__file__).resolve().parents[2]


def require_tool(name: str) -> Path:
    """The path of the tool's first program (its folder's programs for postgres-server)."""
    path = tool(name).locate()
    if path is None:
        pytest.fail(missing_message(name), pytrace=False)
    return path


def make(*args: str) -> str:
    """The output of `make ARGS` in the project's root, which must succeed."""
    done = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"make {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout
