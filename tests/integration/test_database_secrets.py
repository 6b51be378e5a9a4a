"""The database password never leaves the coordinator: not in its log (while serving, or while
the database is down), not in job records, agent listings, reports or error messages. The
throwaway PostgreSQL server trusts local connections, so the password in the URL is never
checked: it is a marker to look for."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from matrec.sdk.ctl.app import app
from matrec.sdk.local_cluster import LocalCluster
from support.postgres import PostgresServer
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

PASSWORD = "pw-7c1e0b9d-never-print-me"


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_the_password_appears_nowhere(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = with_password(postgres_server.create_database("secrets_test"))
    workdir = tmp_path / "cluster"
    with LocalCluster(workdir, agents=1, database_url=url) as cluster:
        runner = CliRunner()
        outputs: list[str] = []
        with cluster.client() as client:
            spec = {"kind": "diagnostic", "config": {"fail": True, "steps": 2}, "max_attempts": 1}
            job = client.submit_job(spec)
            done = client.wait(job.id, 60)
            assert done.state == "failed"
            outputs += [json.dumps(done.result or {}), done.error]
        report = ["report", job.id, "--format", "html", "--out", str(tmp_path / "r.html")]
        for args in (["jobs", "--json"], ["show", "--json", job.id], ["agents", "--json"], report):
            result = runner.invoke(app, ["-c", cluster.address, *args])
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
        outputs.append((tmp_path / "r.html").read_text())
    assert all(PASSWORD not in text for text in outputs)
    assert files_containing(workdir, PASSWORD) == []
    # The log does say where the database is.
    assert f"127.0.0.1:{postgres_server.port}" in (workdir / "logs" / "coordinator.log").read_text()


def test_a_database_that_is_down_is_reported_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/matrec"
    process = subprocess.run(
        [sys.executable, "-m", "matrec.coordinator.main", "--port", "0", "--metrics-port", "0",
         "--data-dir", str(tmp_path / "data"), f"--database-url={url}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = process.stdout + process.stderr
    assert process.returncode != 0
    assert "cannot open the database" in output and "Traceback" not in output
    assert f"127.0.0.1:{port}/matrec" in output  # says which database it could not reach
    assert PASSWORD not in output
