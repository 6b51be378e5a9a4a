"""Shell blocks of the project's Markdown guides, run as a reader would run them: bash with
`-euo pipefail` in a fresh folder, in a process group of its own that is killed afterwards, so
the servers a block starts in the background never outlive the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

FENCE = "```"


def shell_block(markdown: Path, heading: str) -> str:
    """The first ```bash block after the line `heading` (a whole line of the file)."""
    lines = markdown.read_text().splitlines()
    assert heading in lines, f"{markdown} has no line {heading!r}"
    rest = lines[lines.index(heading) + 1 :]
    start = rest.index(f"{FENCE}bash") + 1
    end = rest.index(FENCE, start)
    return "\n".join(rest[start:end]) + "\n"


def run_block(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `script`; its exit code and output (stdout and stderr together). Every process it
    started and left behind is killed, whatever happens (a timeout is exit code -1), and
    a block that ended leaving processes behind fails the test."""
    log_path = cwd / "block.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        code = -1
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.write(f"\n[timed out after {timeout} s]\n".encode())
        finally:
            # Still running (a timeout, or the test interrupted): the whole group goes at once.
            left = _stop_group(process.pid, grace=15 if process.poll() is not None else 0)
    output = log_path.read_text(errors="replace")
    assert not left, f"the block left processes running (killed now): {left}\n{output[-4000:]}"
    return code, output


def _group_members(pgid: int) -> list[str]:
    members = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(status.parent.name)
    return members


def _stop_group(pgid: int, grace: float) -> list[str]:
    """Give the block's background processes `grace` seconds to stop on their own (its traps),
    then kill the group; the processes that were still there."""
    deadline = time.monotonic() + grace
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _group_members(pgid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        time.sleep(1)
    return left
