"""SDK and `matrec-ctl` against a real coordinator process (no agents): errors and job control."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from matrec.sdk import InvalidSpecError, JobNotFoundError, JobStateError
from matrec.sdk.local_cluster import LocalCluster
from support.datasets import write_minimal_image_folder

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]


def ctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, "-c", address, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), agents=0) as running:
        yield running


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_minimal_image_folder(tmp_path / "data")


BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"dataset_path": "/data", "model": "vgg99"}, "config.model"),
    ({"dataset_path": "/nonexistent/matrec-dataset"}, "config.dataset_path"),
    ({"dataset_path": "/data", "epochs": -3}, "config.epochs"),
    ({"dataset_path": "/data", "colour": "red"}, "config.colour"),
]


@pytest.mark.parametrize(("config", "field"), BAD_SPECS)
def test_sdk_rejects_bad_specs(cluster: LocalCluster, config: dict[str, Any], field: str) -> None:
    with cluster.client() as client:
        with pytest.raises(InvalidSpecError) as caught:
            client.submit_job({"config": config})
        assert caught.value.field == field
        assert client.list_jobs() == []


CLI_CASES: list[tuple[list[str], str]] = [
    (["--dataset", "/data", "--model", "vgg99"], "config.model"),
    (["--dataset", "/nonexistent/matrec-dataset"], "config.dataset_path"),
    (["--dataset", "/data", "--epochs", "-3"], "config.epochs"),
    (["--dataset", "/data", "--set", "colour=red"], "config.colour"),
]


@pytest.mark.parametrize(("args", "field"), CLI_CASES)
def test_cli_rejects_bad_specs(cluster: LocalCluster, args: list[str], field: str) -> None:
    result = ctl(cluster.address, "submit", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.stderr
    assert "Traceback" not in result.stderr
    with cluster.client() as client:
        assert client.list_jobs() == []


def test_cli_lists_nothing(cluster: LocalCluster) -> None:
    jobs = ctl(cluster.address, "jobs", "--json")
    assert jobs.returncode == 0 and json.loads(jobs.stdout) == []
    agents = ctl(cluster.address, "agents", "--json")
    assert agents.returncode == 0 and json.loads(agents.stdout) == []


def test_unknown_job(cluster: LocalCluster) -> None:
    with cluster.client() as client, pytest.raises(JobNotFoundError):
        client.get_job("no-such-job")
    result = ctl(cluster.address, "show", "no-such-job")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_server_command_forwards_help() -> None:
    result = subprocess.run(
        [*CTL, "server", "--port", "0", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--ready-file" in result.stdout


def test_submit_cancel_watch(tmp_path: Path, dataset: Path) -> None:
    # A cluster of its own: the tests above rely on an empty job list.
    with LocalCluster(tmp_path / "cluster", agents=0) as cluster, cluster.client() as client:
        submitted = ctl(cluster.address, "submit", "--dataset", str(dataset), "--name", "e2e")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()

        job = client.get_job(job_id)
        assert job.state == "queued" and job.name == "e2e"
        assert job.spec.config["dataset_path"] == str(dataset)
        assert [j.id for j in client.list_jobs(["queued"])] == [job_id]
        assert client.list_jobs(["running"]) == []

        cancelled = ctl(cluster.address, "cancel", job_id, "--reason", "test")
        assert cancelled.returncode == 0, cancelled.stderr
        assert client.wait(job_id, timeout=30).state == "cancelled"
        with pytest.raises(JobStateError):
            client.cancel_job(job_id)
        assert client.job_metrics(job_id) == []

        # The stream of a finished job ends at once; a cancelled job is exit code 1.
        watched = ctl(cluster.address, "watch", job_id)
        assert watched.returncode == 1, watched.stderr
        assert f"job {job_id} cancelled" in watched.stdout

        shown = ctl(cluster.address, "show", job_id, "--json")
        assert shown.returncode == 0
        detail = json.loads(shown.stdout)
        assert detail["state"] == "cancelled" and detail["history"]
