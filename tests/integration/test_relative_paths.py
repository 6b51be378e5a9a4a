"""Relative paths on the command line, as the README's tour gives them (`--data-dir ./agent`),
work: each component makes them absolute where it reads them, so a task's worker, started
inside its own folder, still finds its task file, and its working folder lies under the
coordinator's artifact root."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk.client import Client


def _start(module: str, args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_relative_data_dirs_from_another_working_directory(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    tour = tmp_path / "tour"  # the user's shell is here; the test itself runs elsewhere
    tour.mkdir()
    processes.append(
        _start(
            "matrec.coordinator.main",
            [
                "--port", "0", "--metrics-port", "0", "--ready-file", "ready",
                "--data-dir", "./coordinator", "--artifact-root", "shared/../artifacts",
            ],
            tour,
            tmp_path / "coordinator.log",
        )
    )  # fmt: skip
    ready = tour / "ready"
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        assert processes[0].poll() is None, (tmp_path / "coordinator.log").read_text()
        assert time.monotonic() < deadline, "the coordinator did not become ready"
        time.sleep(0.1)
    address = ready.read_text()
    processes.append(
        _start(
            "matrec.agent.main",
            # The job is a script: this agent must be told it may run one.
            [
                "--coordinator",
                address,
                "--name",
                "tour-agent",
                "--data-dir",
                "./agent",
                "--allow-scripts",
            ],
            tour,
            tmp_path / "agent.log",
        )
    )

    with Client(address) as client:
        while not any(a.state == "connected" for a in client.list_agents()):
            assert processes[1].poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent did not connect"
            time.sleep(0.2)
        spec = {"kind": "script", "config": {"command": ["sh", "-c", "pwd > where; echo made"]}}
        job = client.wait(client.submit_job(spec).id, timeout=120)

    assert job.state == "succeeded", job.error
    working_dir = Path(job.result["working_dir"])
    assert working_dir.is_absolute()
    assert working_dir.is_relative_to(tour / "artifacts"), working_dir
    assert (working_dir / "where").read_text().strip() == str(working_dir)
    assert (tour / "coordinator" / "matrec.db").exists()
    assert any((tour / "agent").iterdir())
