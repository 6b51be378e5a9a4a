"""deploy/README.md's checking commands, run as they stand against a coordinator and an agent
started the way the systemd units start them: the shipped env files (TLS with client
certificates, tokens on) and the units' own Environment= lines, with certificates from
`matrec-ctl certs init` and an agent token from `matrec-ctl tokens create`. Only the host-wide
paths and the ports are moved into the test's folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.network import free_port
from support.shell_blocks import run_block, shell_block
from support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
BIN = Path(sys.executable).parent
HOST_PATHS = ("/etc/", "/var/", "/srv/", "/opt/")


def settings(*files: Path) -> dict[str, str]:
    """KEY=VALUE lines of env files and Environment= lines of units, as systemd reads them."""
    found: dict[str, str] = {}
    for path in files:
        for line in path.read_text().splitlines():
            line = line.removeprefix("Environment=") if path.suffix == ".service" else line
            if line and not line.startswith("#") and "=" in line and line.split("=")[0].isupper():
                key, value = line.split("=", 1)
                found[key] = value
    return found


def moved(values: dict[str, str], moves: dict[str, str]) -> dict[str, str]:
    """The settings with each host path prefix of `moves` replaced; none may be left over."""
    result = {}
    for key, value in values.items():
        for old, new in moves.items():
            if value.startswith(old):
                value = new + value.removeprefix(old)
        assert not value.startswith(HOST_PATHS), f"{key}={value}: map it into the test folder"
        result[key] = value
    return result


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MATREC_", "SUPABASE_"))}
    return {**env, "HOME": str(home), "PATH": f"{BIN}:{env['PATH']}"}


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "matrec-ctl"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def until(check: Callable[[], bool], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{log.read_text()}"
        time.sleep(0.3)


def test_the_guides_checks_pass_on_the_shipped_settings(tmp_path: Path) -> None:
    require_tool("curl")
    port, metrics_port = free_port(), free_port()
    tls = tmp_path / "tls"
    made = ctl(
        "certs", "init", str(tls), "--coordinator-host", "localhost", "--agent", "gpu-01",
        "--client", "admin", env=clean_env(tmp_path),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr

    coordinator_env = moved(
        settings(SYSTEMD / "coordinator.env.example", SYSTEMD / "matrec-coordinator.service"),
        {"/etc/matrec/tls/": f"{tls}/", "/var/lib/": f"{tmp_path}/", "/srv/": f"{tmp_path}/"},
    )
    assert (
        coordinator_env["MATREC_AUTH"] == "1" and "MATREC_SERVER_TLS_CLIENT_CA" in coordinator_env
    )
    coordinator_env |= {"MATREC_PORT": str(port), "MATREC_METRICS_PORT": str(metrics_port)}
    admin = Path(coordinator_env["MATREC_ADMIN_TOKEN_FILE"])
    coordinator_log = tmp_path / "coordinator.log"
    client = tls / "clients" / "admin"
    as_admin = clean_env(tmp_path) | {
        "MATREC_COORDINATOR": f"localhost:{port}",
        "MATREC_TLS_CA": str(client / "ca.pem"),
        "MATREC_TLS_CERT": str(client / "cert.pem"),
        "MATREC_TLS_KEY": str(client / "key.pem"),
    }

    with started(
        [str(BIN / "matrec-coordinator")],
        clean_env(Path(coordinator_env["HOME"])) | coordinator_env,
        coordinator_log,
    ):
        until(admin.is_file, "admin token file", coordinator_log)
        as_admin["MATREC_TOKEN"] = admin.read_text().strip()
        until(lambda: ctl("agents", env=as_admin).returncode == 0, "answer", coordinator_log)
        token = ctl("tokens", "create", "gpu-01", "--role", "agent", env=as_admin)
        assert token.returncode == 0, token.stderr

        agent_env = moved(
            settings(SYSTEMD / "agent.env.example", SYSTEMD / "matrec-agent.service"),
            {
                "/etc/matrec/tls/": f"{tls}/agents/gpu-01/",
                "/var/lib/": f"{tmp_path}/",
                "/opt/matrec/venv/bin/python": sys.executable,
            },
        )
        assert agent_env["MATREC_AGENT_TOKEN"] == "", "the example leaves the token to paste in"
        agent_env |= {
            "MATREC_COORDINATOR": f"localhost:{port}",
            "MATREC_AGENT_METRICS_PORT": str(free_port()),
            "MATREC_AGENT_TOKEN": token.stdout.strip(),
        }
        Path(agent_env["HOME"]).mkdir(parents=True, exist_ok=True)
        agent_log = tmp_path / "agent.log"
        with started(
            [str(BIN / "matrec-agent")],
            clean_env(Path(agent_env["HOME"])) | agent_env,
            agent_log,
        ):
            until(lambda: "gpu-01" in ctl("agents", env=as_admin).stdout, "agent", agent_log)
            block = shell_block(ROOT / "deploy" / "README.md", "## Checking a deployment")
            guide_env = clean_env(tmp_path) | {
                "COORDINATOR": "localhost",
                "PORT": str(port),
                "METRICS_PORT": str(metrics_port),
                "CLIENT": str(client),
                "TOKEN_FILE": str(admin),
            }
            checks = tmp_path / "checks"
            checks.mkdir()
            code, output = run_block(block, checks, guide_env, timeout=180)
    assert code == 0, output
    assert "gpu-01" in output and "connected" in output, output
    assert "succeeded" in output, output
    assert 'matrec_agents{state="connected"} 1.0' in output, output


@pytest.mark.parametrize("name", ["coordinator.env.example", "agent.env.example"])
def test_env_files_only_set_variables_the_programs_read(name: str) -> None:
    program = "matrec-coordinator" if name.startswith("coordinator") else "matrec-agent"
    help_text = subprocess.run(
        [str(BIN / program), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    unknown = [
        key
        for key in settings(SYSTEMD / name)
        if key.startswith("MATREC_") and key not in help_text and key != "MATREC_TORCH_THREADS"
    ]
    assert not unknown, f"{name} sets variables {program} does not read: {unknown}"
