"""A real agent process: waits out a coordinator that is not up yet, serves /metrics, and
refuses impossible resource settings with one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from matrec.sdk import Client
from matrec.sdk.local_cluster import LocalCluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agent_started_before_the_coordinator_connects_when_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    metrics_port = free_port()
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "matrec.agent.main",
            "--coordinator", f"127.0.0.1:{port}",
            "--name", "early-agent",
            "--data-dir", str(tmp_path / "agent"),
            "--cpus", "1",
            "--metrics-port", str(metrics_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # the agent retries with backoff meanwhile
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        with LocalCluster(tmp_path / "cluster", agents=0, port=port) as cluster:
            deadline = time.monotonic() + 30
            with Client(cluster.address) as client:
                while not any(
                    a.name == "early-agent" and a.state == "connected" for a in client.list_agents()
                ):
                    assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
                    time.sleep(0.2)
                agents = client.list_agents()
            assert agents[0].total.cpus == 1.0
            assert agents[0].total.memory_bytes > 0
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
            assert b"matrec_agent_cpu_percent" in text
            assert b"matrec_agent_running_tasks 0.0" in text
        # The agent keeps its identity across restarts of itself.
        assert (tmp_path / "agent" / "agent_id").read_text() == agents[0].id
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        log.close()
    assert agent.returncode == 0
    assert "reconnecting" in (tmp_path / "agent.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "4"], "this host has only 0 GPU(s)"),
        (["--cpus", "abc"], "invalid float value"),
    ],
)
def test_agent_rejects_bad_settings_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "matrec.agent.main", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
