"""Hosts that share nothing but the coordinator's address (`--artifact-store coordinator`):
agents write checkpoints and models into their own data folders and upload them through the
coordinator, a requeued task resumes on another agent from the uploaded checkpoint, downloads
are checked against the SHA-256 recorded at upload, and a broken upload records nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from matrec.agent.artifact_transfer import ArtifactTransfers, Uploaded
from matrec.sdk import MatrecError
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from support.cluster_jobs import FAST_LEASES, checkpoint_written, finetune_spec, wait_until
from support.scripted_agent import ScriptedAgent

SHARE_NOTHING = ["--artifact-store", "coordinator"]
CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def agent_dirs(cluster: LocalCluster) -> list[Path]:
    return [cluster.workdir / f"agent-{i}" for i in range(cluster.agent_count)]


def worker_artifact_dirs(cluster: LocalCluster) -> list[Path]:
    """The artifact folder each worker was told to write to (from its task file)."""
    return [
        Path(json.loads(task_file.read_text())["artifact_dir"])
        for agent in agent_dirs(cluster)
        for task_file in agent.glob("tasks/*/task.json")
    ]


def assert_nothing_shared(cluster: LocalCluster) -> None:
    root = cluster.artifact_root.resolve()
    for agent in agent_dirs(cluster):
        assert not root.is_relative_to(agent.resolve()), f"{root} lies in {agent}"
        assert not agent.resolve().is_relative_to(root)
    written = worker_artifact_dirs(cluster)
    assert written, "no worker ran"
    for folder in written:
        # Each worker wrote under its own agent's data folder, never the coordinator's root.
        assert not folder.resolve().is_relative_to(root), folder
        assert any(folder.resolve().is_relative_to(a.resolve()) for a in agent_dirs(cluster))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        tmp_path / "cluster", agents=2, coordinator_args=[*FAST_LEASES, *SHARE_NOTHING]
    ) as running:
        yield running


@pytest.mark.slow
def test_finetune_uploads_its_model_and_matrec_ctl_downloads_it(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    with cluster.client() as client:
        job = client.wait(client.submit_job(finetune_spec(small_dataset, epochs=2)).id, 240)
        assert job.state == "succeeded", job.error
        artifacts = {a.kind: a for a in client.list_artifacts(job.id)}
    assert_nothing_shared(cluster)
    model = artifacts["model"]
    stored = Path(model.uri)
    assert stored.is_relative_to(cluster.artifact_root.resolve()), model.uri
    assert len(model.sha256) == 64 and model.sha256 == sha256_of(stored)
    assert job.result["model_path"] == model.uri
    assert job.tasks[0].checkpoint_path == artifacts["checkpoint"].uri
    # The private copies are gone once uploaded; what counts is on the coordinator.
    for agent in agent_dirs(cluster):
        assert not list((agent / "artifacts" / job.id).glob("*/model.pt"))

    target = tmp_path / "downloaded.pt"
    got = subprocess.run(
        [*CTL, "-c", cluster.address, "download", job.id, "-o", str(target)],
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    assert sha256_of(target) == model.sha256


@pytest.mark.slow
def test_agent_killed_after_a_recorded_checkpoint_resumes_on_the_other_agent(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(small_dataset, epochs=5))
        # checkpoint_path is set only once an upload is complete and recorded.
        wait_until(lambda: checkpoint_written(client, job.id), 120, "the first recorded checkpoint")
        first = client.get_job(job.id).tasks[0]
        assert Path(first.checkpoint_path).is_relative_to(cluster.artifact_root.resolve())
        victim = next(a for a in client.list_agents() if a.id == first.agent_id)
        cluster.kill_agent(int(victim.name.rsplit("-", 1)[1]))

        final = client.wait(job.id, timeout=300)
        assert final.state == "succeeded", final.error
        task = final.tasks[0]
        assert task.attempt == 2 and task.agent_id != first.agent_id
        second = [
            m.step for m in client.job_metrics(job.id) if m.attempt == 2 and m.key == "train/loss"
        ]
        assert second and min(second) > 1, "attempt 2 started over instead of resuming"
    assert_nothing_shared(cluster)
    log = cluster.agent_log(1 - int(victim.name.rsplit("-", 1)[1])).read_text()
    assert f"resuming from {first.checkpoint_path}" in log


# ---- the upload protocol itself, with a hand-driven agent (no training) ------------------------

UPLOADER = """
import sys, time, grpc
from matrec.v1 import artifacts_pb2, artifacts_pb2_grpc
address, agent_id, task_id, attempt, path, sha = sys.argv[1:7]
data = open(path, "rb").read()
header = artifacts_pb2.UploadHeader(
    agent_id=agent_id, task_id=task_id, attempt=int(attempt), name="checkpoints/killed.pt",
    kind=artifacts_pb2.ARTIFACT_KIND_CHECKPOINT, total_size=len(data), sha256=sha)
def slowly():
    yield artifacts_pb2.UploadArtifactRequest(header=header)
    for i in range(0, len(data), 65536):
        yield artifacts_pb2.UploadArtifactRequest(data=data[i:i + 65536])
        time.sleep(0.2)
with grpc.insecure_channel(address) as channel:
    artifacts_pb2_grpc.ArtifactServiceStub(channel).UploadArtifact(slowly())
"""


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("share-nothing-api")
    with LocalCluster(workdir, agents=0, coordinator_args=SHARE_NOTHING) as running:
        yield running


def held_task(channel: grpc.Channel, holder: ScriptedAgent) -> tuple[str, str, int]:
    """Submit a job and wait until `holder` is assigned its task: (job id, task id, attempt)."""
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    spec = jobs_pb2.JobSpec(kind="diagnostic")
    spec.config.update({"steps": 1})
    job = jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=spec), timeout=5).job
    assignment = next(m.assignment for m in holder.stream if m.HasField("assignment"))
    assert assignment.artifact_dir == "", "an agent got a folder of the coordinator's"
    return job.id, assignment.task.task_id, assignment.task.attempt


def test_a_killed_upload_records_nothing_and_a_corrupt_checkpoint_is_refused_and_replaced(
    bare: LocalCluster, tmp_path: Path
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 123)
    source = tmp_path / "checkpoint.pt"
    source.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    with grpc.insecure_channel(bare.address) as channel:
        holder = ScriptedAgent(channel, "holder", cpus=2.0)
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        uploads = artifacts_pb2_grpc.ArtifactServiceStub(channel)
        try:
            job_id, task_id, attempt = held_task(channel, holder)
            header = artifacts_pb2.UploadHeader(
                agent_id=holder.agent_id, task_id=task_id, attempt=attempt,
                kind=artifacts_pb2.ARTIFACT_KIND_CHECKPOINT, name="checkpoints/killed.pt",
                total_size=len(payload), sha256=sha,
            )  # fmt: skip
            offset = artifacts_pb2.GetUploadOffsetRequest(header=header)

            # An uploader SIGKILLed midway: the coordinator holds part of it, records nothing.
            uploader = subprocess.Popen(
                [sys.executable, "-c", UPLOADER, bare.address, holder.agent_id, task_id,
                 str(attempt), str(source), sha]
            )  # fmt: skip
            try:
                wait_until(
                    lambda: uploads.GetUploadOffset(offset, timeout=5).offset > 256 * 1024,
                    30,
                    "part of the upload to arrive",
                )
            finally:
                os.kill(uploader.pid, signal.SIGKILL)
                uploader.wait()
            held = uploads.GetUploadOffset(offset, timeout=5)
            assert 0 < held.offset < len(payload) and not held.committed_uri
            job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5).job
            assert job.tasks[0].checkpoint_path == "", "a partial upload became a checkpoint"
            with pytest.raises(grpc.RpcError) as missing:
                next(jobs.DownloadArtifact(
                    jobs_pb2.DownloadArtifactRequest(job_id=job_id, kind="checkpoint"), timeout=5
                ))  # fmt: skip
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            assert not list(bare.artifact_root.glob(f"{job_id}/**/killed.pt"))

            # Resumed from where the coordinator stands, it completes and is recorded.
            header.offset = held.offset
            resumed = uploads.UploadArtifact(
                iter([
                    artifacts_pb2.UploadArtifactRequest(header=header),
                    artifacts_pb2.UploadArtifactRequest(data=payload[held.offset:]),
                ]),
                timeout=30,
            )  # fmt: skip
            assert resumed.sha256 == sha
            stored = Path(resumed.uri)
            assert stored.read_bytes() == payload
            job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5).job
            assert job.tasks[0].checkpoint_path == resumed.uri

            # A rogue agent cannot upload for a task it does not hold.
            rogue = ScriptedAgent(channel, "rogue", cpus=0.0)
            header.agent_id, header.offset = rogue.agent_id, 0
            with pytest.raises(grpc.RpcError) as refused:
                uploads.GetUploadOffset(artifacts_pb2.GetUploadOffsetRequest(header=header))
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            rogue.close()

            # A newer checkpoint, whose bytes then change in the store: its download is refused
            # by hash (nothing kept), and the task's resume falls back to the one before.
            header.agent_id, header.offset = holder.agent_id, 0
            header.name, header.sha256 = "checkpoints/newer.pt", sha
            newer = uploads.UploadArtifact(
                iter([
                    artifacts_pb2.UploadArtifactRequest(header=header),
                    artifacts_pb2.UploadArtifactRequest(data=payload),
                ]),
                timeout=30,
            )  # fmt: skip
            job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5).job
            assert job.tasks[0].checkpoint_path == newer.uri
            corrupt = bytearray(payload)
            corrupt[len(payload) // 2] ^= 0xFF
            Path(newer.uri).write_bytes(bytes(corrupt))
            target = tmp_path / "fetched.pt"
            with bare.client() as client, pytest.raises(MatrecError, match="corrupt") as bad:
                client.download_artifact(job_id, target, uri=newer.uri)
            assert sha in str(bad.value) and "changed on disk" in str(bad.value)
            assert not target.exists() and not target.with_name("fetched.pt.part").exists()
            job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5).job
            assert job.tasks[0].checkpoint_path == resumed.uri
            with bare.client() as client:  # the intact one still downloads
                client.download_artifact(job_id, target, uri=resumed.uri)
            assert target.read_bytes() == payload
        finally:
            holder.close()
            jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=5)


def test_uploads_check_their_header_and_hash(bare: LocalCluster) -> None:
    with grpc.insecure_channel(bare.address) as channel:
        holder = ScriptedAgent(channel, "checker", cpus=2.0)
        uploads = artifacts_pb2_grpc.ArtifactServiceStub(channel)
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        try:
            job_id, task_id, attempt = held_task(channel, holder)
            header = artifacts_pb2.UploadHeader(
                agent_id=holder.agent_id, task_id=task_id, attempt=attempt,
                kind=artifacts_pb2.ARTIFACT_KIND_MODEL, name="model.pt", total_size=4,
                sha256=hashlib.sha256(b"abcd").hexdigest(),
            )  # fmt: skip

            def upload(data: bytes) -> artifacts_pb2.UploadArtifactResponse:
                return uploads.UploadArtifact(
                    iter([
                        artifacts_pb2.UploadArtifactRequest(header=header),
                        artifacts_pb2.UploadArtifactRequest(data=data),
                    ]),
                    timeout=10,
                )  # fmt: skip

            with pytest.raises(grpc.RpcError) as wrong:
                upload(b"abce")
            assert wrong.value.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[attr-defined]
            assert not (bare.artifact_root / job_id / task_id / "model.pt").exists()
            for field, value in (("name", "../escape.pt"), ("sha256", "xyz")):
                bad = artifacts_pb2.UploadHeader()
                bad.CopyFrom(header)
                setattr(bad, field, value)
                with pytest.raises(grpc.RpcError) as invalid:
                    uploads.GetUploadOffset(
                        artifacts_pb2.GetUploadOffsetRequest(header=bad), timeout=5
                    )
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                assert f"header.{field}" in invalid.value.details()  # type: ignore[attr-defined]
            done = upload(b"abcd")
            assert Path(done.uri).read_bytes() == b"abcd"
            # The same file again is already there: nothing more to send.
            again = uploads.GetUploadOffset(
                artifacts_pb2.GetUploadOffsetRequest(header=header), timeout=5
            )
            assert again.committed_uri == done.uri and again.offset == 4
        finally:
            holder.close()
            jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=5)


def test_an_upload_outlasts_a_coordinator_restart(tmp_path: Path) -> None:
    """The agent's uploader retries with backoff while the coordinator is away, then resumes."""
    payload = os.urandom(2 * 1024 * 1024 + 7)
    source = tmp_path / "checkpoint.pt"
    source.write_bytes(payload)
    with LocalCluster(tmp_path / "cluster", agents=0, coordinator_args=SHARE_NOTHING) as cluster:
        with grpc.insecure_channel(cluster.address) as channel:
            holder = ScriptedAgent(channel, "holder", cpus=2.0)
            job_id, task_id, attempt = held_task(channel, holder)
        cluster.stop_coordinator()

        async def upload_while_restarting() -> Uploaded:
            transfers = ArtifactTransfers(
                grpc.aio.insecure_channel(cluster.address), holder.agent_id, ()
            )
            try:
                with source.open("rb") as file:
                    pending = asyncio.create_task(
                        transfers.upload(
                            file,
                            task_id=task_id,
                            attempt=attempt,
                            kind=artifacts_pb2.ARTIFACT_KIND_CHECKPOINT,
                            name="checkpoints/late.pt",
                            patience=60,
                        )
                    )
                    await asyncio.sleep(2.0)
                    assert not pending.done(), "the upload did not wait for the coordinator"
                    await asyncio.to_thread(cluster.start_coordinator)
                    return await pending
            finally:
                await transfers.close()

        uploaded = asyncio.run(upload_while_restarting())
        assert Path(uploaded.uri).read_bytes() == payload
        with cluster.client() as client:
            assert client.get_job(job_id).tasks[0].checkpoint_path == uploaded.uri
        holder.close()
