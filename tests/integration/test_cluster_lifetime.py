"""An embedded cluster dies with its starter, however the starter ends: `matrec-ctl demo` and a
script using the unified API's embedded default are killed (SIGHUP, SIGTERM, SIGKILL) while a
fine-tune trains; within 10 s no coordinator, agent or worker of theirs is left, and a second
start in the same folder works (no stale lock, port or ready file): the unified API's trains to
the end, the demo's trains until a Ctrl-C ends it, again leaving nothing behind.

Four cases, each signal at least once: demo x (SIGHUP, SIGKILL), unified API x (SIGTERM, SIGKILL).
`LIFETIME_CASES=all` runs all six. Each case prints its seconds-to-clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from matrec.sdk.client import Client
from matrec.sdk.demo_dataset import DemoDatasetInfo

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
CLEAN_WITHIN = 10.0

UNIFIED_SCRIPT = """
import sys
from matrec.sdk.training_api import train_with_all_improvements

result = train_with_all_improvements(
    sys.argv[1], model_type="cnn", optimize_hyperparams=False, distributed=False, num_workers=1,
    base_dir=sys.argv[2], epochs=int(sys.argv[3]), model="resnet18", image_size=32, batch_size=8,
)
print("trained", result.job_id)
"""

ALL_CASES = [
    ("demo", signal.SIGHUP),
    ("demo", signal.SIGTERM),
    ("demo", signal.SIGKILL),
    ("unified", signal.SIGHUP),
    ("unified", signal.SIGTERM),
    ("unified", signal.SIGKILL),
]
DEFAULT_CASES = [
    ("demo", signal.SIGHUP),
    ("demo", signal.SIGKILL),
    ("unified", signal.SIGTERM),
    ("unified", signal.SIGKILL),
]
CASES = ALL_CASES if os.environ.get("LIFETIME_CASES") == "all" else DEFAULT_CASES


def _environment(tmp_path: Path) -> dict[str, str]:
    """This machine's environment without any matrec configuration."""
    empty = tmp_path / "empty-config.toml"
    empty.write_text("")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MATREC_", "SUPABASE_"))
        and name not in ("NUM_WORKERS", "VISUALIZATION_LEVEL")
    }
    return env | {"MATREC_CONFIG": str(empty), "PYTHONUNBUFFERED": "1"}


def _command(starter: str, tmp_path: Path, dataset: Path, epochs: int) -> list[str]:
    work = tmp_path / "work"
    if starter == "demo":
        return [*CTL, "demo", "--workdir", str(work), "--epochs", str(epochs), "--agents", "1"]
    script = tmp_path / "unified.py"
    script.write_text(UNIFIED_SCRIPT)
    return [sys.executable, str(script), str(dataset), str(work), str(epochs)]


def _ready_file(starter: str, tmp_path: Path) -> Path:
    cluster = tmp_path / "work" if starter == "demo" else tmp_path / "work" / "cluster"
    return cluster / "coordinator.ready"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until_training(
    starter: subprocess.Popen[str], ready: Path, timeout: float = 240
) -> list[psutil.Process]:
    """The starter's descendants once a worker of theirs trains (its job has a metric)."""
    deadline = time.monotonic() + timeout
    while True:
        assert starter.poll() is None, f"the starter exited with {starter.returncode}"
        assert time.monotonic() < deadline, "no job started training"
        tree = psutil.Process(starter.pid).children(recursive=True)
        worker = any("matrec.agent.worker" in " ".join(p.cmdline()) for p in tree if _alive(p))
        address = ready.read_text().strip() if ready.exists() else ""
        if worker and address:
            with Client(address, timeout=5) as client:
                # A job an earlier starter left may still count as running: the newest one.
                jobs = client.list_jobs(states=["running"])
                if jobs and client.job_metrics(max(jobs, key=lambda j: str(j.created_at)).id):
                    break
        time.sleep(0.5)
    commands = [" ".join(process.cmdline()) for process in tree]
    for module in ("matrec.coordinator.main", "matrec.agent.main"):
        assert any(module in command for command in commands), (module, commands)
    return tree


def _end_while_training(
    command: list[str], env: dict[str, str], ready: Path, signum: signal.Signals
) -> tuple[float, int, str]:
    """Start `command`, send it `signum` once its cluster trains; the seconds until none of
    the cluster's processes is left, the starter's exit status and its output."""
    # Its own session, as a program started from a terminal: the signal reaches it alone.
    starter = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        tree = _wait_until_training(starter, ready)
        signalled_at = time.monotonic()
        starter.send_signal(signum)
        while any(_alive(process) for process in tree):
            left = [" ".join(p.cmdline()) for p in tree if _alive(p)]
            assert time.monotonic() - signalled_at < 30, left
            time.sleep(0.05)
        seconds = time.monotonic() - signalled_at
    finally:
        try:
            output = starter.communicate(timeout=CLEAN_WITHIN)[0]
        except subprocess.TimeoutExpired:
            starter.kill()
            output = starter.communicate()[0]
    return seconds, starter.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize(("starter", "signum"), CASES, ids=lambda v: getattr(v, "name", v))
def test_the_cluster_dies_with_its_starter_and_starts_again(
    tmp_path: Path, small_dataset: DemoDatasetInfo, starter: str, signum: signal.Signals
) -> None:
    env = _environment(tmp_path)
    ready = _ready_file(starter, tmp_path)
    command = _command(starter, tmp_path, small_dataset.path, epochs=200)
    seconds, code, output = _end_while_training(command, env, ready, signum)
    print(f"{starter} {signum.name}: cluster gone {seconds:.2f} s after the signal")
    assert seconds < CLEAN_WITHIN, output
    assert code in (-signum, 128 + signum), output

    if starter == "demo":
        # Started again in the same folder, it trains; Ctrl-C then ends it cleanly. (A whole
        # demo epoch would take a minute here; the unified API below trains to the end.)
        seconds, code, output = _end_while_training(command, env, ready, signal.SIGINT)
        # Gracefully: its fine-tune may take a few seconds to stop, so no 10 s bound here.
        print(f"{starter} started again, then SIGINT: cluster gone {seconds:.2f} s after it")
        assert "reusing the demo dataset" in output and "interrupted" in output, output
        return
    again = subprocess.run(
        _command(starter, tmp_path, small_dataset.path, epochs=1),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trained job-" in again.stdout


def test_distributed_workers_die_with_a_killed_matrec_ctl(tmp_path: Path) -> None:
    """`matrec-ctl distributed --operation start-workers` SIGKILLed: its embedded coordinator
    and its agents (which it starts itself, not through LocalCluster) stop within 10 s."""
    command = [*CTL, "distributed", "--operation", "start-workers", "--num-workers", "2"]
    starter = subprocess.Popen(
        [*command, "--base-dir", str(tmp_path / "base")],
        env=_environment(tmp_path) | {"COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert starter.stdout is not None
        deadline = time.monotonic() + 120
        for line in starter.stdout:
            if "workers running" in line:
                break
            assert time.monotonic() < deadline, line
        tree = psutil.Process(starter.pid).children(recursive=True)
        commands = [" ".join(process.cmdline()) for process in tree]
        assert sum("matrec.agent.main" in command for command in commands) == 2, commands
        assert any("matrec.coordinator.main" in command for command in commands), commands
        killed_at = time.monotonic()
        starter.kill()
        while any(_alive(process) for process in tree):
            left = [" ".join(p.cmdline()) for p in tree if _alive(p)]
            assert time.monotonic() - killed_at < CLEAN_WITHIN, left
            time.sleep(0.05)
        print(f"distributed SIGKILL: gone {time.monotonic() - killed_at:.2f} s after it")
    finally:
        starter.kill()
        starter.communicate()
