"""`matrec-ctl demo` end to end: dataset, coordinator, agent, one real fine-tune, clean shutdown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]


def _processes_using(workdir: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if str(workdir) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
def test_demo_runs_and_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    command = [*CTL, "demo", "--workdir", str(workdir), "--epochs", "1", "--agents", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    assert "agents connected: demo-agent-0" in result.stdout
    assert "epoch 1/1" in result.stdout
    summary = next(line for line in result.stdout.splitlines() if "succeeded after" in line)
    assert "validation accuracy" in summary and "model.pt" in summary
    assert f"logs are in {workdir / 'logs'}" in result.stdout
    assert (workdir / "logs" / "coordinator.log").is_file()
    assert (workdir / "logs" / "demo-agent-0.log").is_file()
    assert _processes_using(workdir) == []

    # A second run reuses the dataset.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reusing the demo dataset" in again.stdout
