"""Checkpoint upload and download throughput through the coordinator's artifact store
(`--artifact-store coordinator`) against a plain local file copy of the same file.

A real coordinator process on loopback; the agent side is the agent's own transfer code
(`matrec.agent.artifact_transfer.ArtifactTransfers`), uploading for a task a hand-driven agent
holds. Usage: python benchmarks/artifact_transfer.py [--mib 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from matrec.agent.artifact_transfer import ArtifactTransfers
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    artifacts_pb2,
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
)


def hold_a_task(channel: grpc.Channel) -> tuple[str, str, int, queue.Queue[object]]:
    """Register an agent, submit a diagnostic job and wait for its assignment: the agent id,
    job id, task id and attempt (the queue keeps the agent's stream open)."""
    agents = agents_pb2_grpc.AgentServiceStub(channel)
    agent_id = agents.RegisterAgent(
        agents_pb2.RegisterAgentRequest(
            name="bench", hostname="bench", resources=common_pb2.Resources(cpus=1)
        ),
        timeout=10,
    ).agent_id
    outgoing: queue.Queue[object] = queue.Queue()
    outgoing.put(agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id=agent_id)))
    stream = agents.Connect(iter(outgoing.get, None))
    spec = jobs_pb2.JobSpec(kind="diagnostic")
    spec.config.update({"steps": 1})
    jobs_pb2_grpc.JobServiceStub(channel).SubmitJob(jobs_pb2.SubmitJobRequest(spec=spec))
    assignment = next(m.assignment for m in stream if m.HasField("assignment"))
    return agent_id, assignment.job_id, assignment.task.task_id, assignment.task.attempt


async def transfer(
    address: str, agent_id: str, job_id: str, task_id: str, attempt: int, source: Path,
    target: Path, round_: int,
) -> tuple[float, float]:  # fmt: skip
    transfers = ArtifactTransfers(grpc.aio.insecure_channel(address), agent_id, ())
    try:
        with source.open("rb") as file:
            started = time.perf_counter()
            uploaded = await transfers.upload(
                file, task_id=task_id, attempt=attempt, kind=artifacts_pb2.ARTIFACT_KIND_OTHER,
                name=f"bench-{round_}.bin", patience=60,
            )  # fmt: skip
            upload = time.perf_counter() - started
        started = time.perf_counter()
        await transfers.download(job_id, uploaded.uri, target)
        download = time.perf_counter() - started
    finally:
        await transfers.close()
    return upload, download


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "checkpoint.bin"
        source.write_bytes(os.urandom(args.mib * 1024 * 1024))
        size_mb = source.stat().st_size / 1e6
        with LocalCluster(
            work / "cluster", agents=0, coordinator_args=["--artifact-store", "coordinator"]
        ) as cluster, grpc.insecure_channel(cluster.address) as channel:  # fmt: skip
            agent_id, job_id, task_id, attempt = hold_a_task(channel)
            rows: dict[str, list[float]] = {"local copy": [], "upload": [], "download": []}
            for round_ in range(args.repeat):
                copy_target = work / f"copy-{round_}.bin"
                started = time.perf_counter()
                shutil.copyfile(source, copy_target)
                rows["local copy"].append(time.perf_counter() - started)
                copy_target.unlink()
                up, down = asyncio.run(
                    transfer(
                        cluster.address, agent_id, job_id, task_id, attempt, source,
                        work / f"down-{round_}.bin", round_,
                    )
                )  # fmt: skip
                rows["upload"].append(up)
                rows["download"].append(down)
                (work / f"down-{round_}.bin").unlink()
    print(f"{size_mb:.0f} MB file, {args.repeat} rounds, medians (loopback, same disk)")
    print(f"{'':12} {'seconds':>8} {'MB/s':>8}")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:12} {median:8.3f} {size_mb / median:8.0f}")


if __name__ == "__main__":
    main()
