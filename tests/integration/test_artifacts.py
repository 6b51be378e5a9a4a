"""Downloading a finished fine-tune's artifacts through the coordinator: listing, chunked
streaming with progress, resuming a partial download, refusing a corrupt one."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk import Client, JobNotFoundError, MatrecError
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import Job
from support.cluster_jobs import finetune_spec


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, small_dataset: DemoDatasetInfo
) -> Iterator[tuple[LocalCluster, Job]]:
    with LocalCluster(tmp_path_factory.mktemp("artifacts") / "cluster", agents=1) as cluster:
        with cluster.client() as client:
            job = client.wait(client.submit_job(finetune_spec(small_dataset, epochs=1)).id, 180)
        assert job.state == "succeeded", job.error
        yield cluster, job


def test_list_artifacts(finished: tuple[LocalCluster, Job]) -> None:
    cluster, job = finished
    with cluster.client() as client:
        artifacts = client.list_artifacts(job.id)
    by_kind = {a.kind: a for a in artifacts}
    assert set(by_kind) == {"model", "checkpoint"}
    model = by_kind["model"]
    assert model.uri == job.result["model_path"]
    assert model.size_bytes == Path(model.uri).stat().st_size > 0


def test_download_streams_the_file_with_progress(
    finished: tuple[LocalCluster, Job], tmp_path: Path
) -> None:
    cluster, job = finished
    source = Path(job.result["model_path"])
    seen: list[tuple[int, int]] = []
    with cluster.client() as client:
        path = client.download_artifact(
            job.id, tmp_path, progress=lambda done, total: seen.append((done, total))
        )
    assert path.read_bytes() == source.read_bytes()
    assert not path.with_name(path.name + ".part").exists()
    size = source.stat().st_size
    assert seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) == -(-size // (1024 * 1024))  # one call per 1 MiB chunk


def test_an_interrupted_download_resumes(
    finished: tuple[LocalCluster, Job], tmp_path: Path
) -> None:
    cluster, job = finished
    source = Path(job.result["checkpoint_path"]).read_bytes()
    target = tmp_path / "checkpoint.pt"
    (tmp_path / "checkpoint.pt.part").write_bytes(source[:1500])
    seen: list[int] = []
    with cluster.client() as client:
        client.download_artifact(
            job.id, target, kind="checkpoint", progress=lambda done, _: seen.append(done)
        )
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source).digest()
    # Resumed at byte 1500 exactly: the first chunk (1 MiB) lands after the 1500 bytes kept,
    # and only the rest of the file is fetched. A restart at byte 0 gives 1 MiB, 2 MiB, ...
    mib = 1024 * 1024
    assert len(source) > 1500 + mib, "the checkpoint is too small to tell a resume from a restart"
    expected = [
        min(1500 + k * mib, len(source)) for k in range(1, -(-(len(source) - 1500) // mib) + 1)
    ]
    assert seen == expected, f"progress {seen[:3]}..., expected {expected[:3]}... (resumed at 1500)"


def test_a_corrupt_partial_download_is_refused_and_dropped(
    finished: tuple[LocalCluster, Job], tmp_path: Path
) -> None:
    cluster, job = finished
    target = tmp_path / "model.pt"
    partial = tmp_path / "model.pt.part"
    partial.write_bytes(b"\0" * 100)
    with cluster.client() as client, pytest.raises(MatrecError, match="corrupted"):
        client.download_artifact(job.id, target)
    assert not partial.exists() and not target.exists()
    with cluster.client() as client:  # and a retry then succeeds
        client.download_artifact(job.id, target)
    assert target.read_bytes() == Path(job.result["model_path"]).read_bytes()


def test_unknown_job_or_artifact(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, job = finished
    with Client(cluster.address) as client:
        with pytest.raises(JobNotFoundError):
            client.list_artifacts("job-nope")
        with pytest.raises(JobNotFoundError, match="matrec-ctl artifacts") as refused:
            client.download_artifact(job.id, tmp_path, kind="report")
        assert f"job {job.id} has no report artifact;" in str(refused.value)
    assert not list(tmp_path.iterdir()), "a failed download left a file behind"


CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]


def test_cli_lists_and_downloads(finished: tuple[LocalCluster, Job], tmp_path: Path) -> None:
    cluster, job = finished
    listed = subprocess.run(
        [*CTL, "-c", cluster.address, "artifacts", job.id], capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    size = Path(job.result["model_path"]).stat().st_size
    assert "model" in listed.stdout and f"{size:,} B" in listed.stdout
    got = subprocess.run(
        [*CTL, "-c", cluster.address, "download", job.id, "--out", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    assert "SHA-256 checked" in got.stdout
    assert (tmp_path / "m.pt").read_bytes() == Path(job.result["model_path"]).read_bytes()
    missing = subprocess.run(
        [*CTL, "-c", cluster.address, "download", "job-nope"], capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert len((missing.stdout + missing.stderr).strip().splitlines()) == 1
