"""Coordinator store throughput on SQLite and on PostgreSQL, in one run.

    python benchmarks/store_throughput.py [--agents 200] [--jobs 200] [--batches 200]
                                          [--points 100] [--json OUT]

For each backend a real coordinator process is started (LocalCluster, no real agents) and driven
by simulated agents: real gRPC clients of the AgentService that register, keep the bidirectional
stream open and answer assignments at once. Two figures per backend:

* metric ingest: 4 agents each stream `--batches` MetricBatch messages of `--points` points for
  their task; points per second from the first send to the last acknowledgement (the coordinator
  acknowledges a batch only once it is stored);
* task-claim latency: `--agents` agents connected, `--jobs` jobs submitted one after another;
  the time from SubmitJob returning to the Assignment reaching an agent, p50 and p99.

The PostgreSQL server is a throwaway one (tests/support/postgres.py), with fsync off like the
tests: the figures compare the coordinator's paths, not disks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from matrec.sdk.local_cluster import LocalCluster  # noqa: E402
from matrec.v1 import (  # noqa: E402
    agents_pb2,
    agents_pb2_grpc,
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
)
from support.datasets import write_minimal_image_folder  # noqa: E402
from support.postgres import start_postgres  # noqa: E402


@dataclass
class BackendResult:
    backend: str
    ingest_points: int
    ingest_seconds: float
    points_per_second: float
    claims: int
    claim_p50_ms: float
    claim_p99_ms: float


class SimulatedAgent:
    """Speaks the agent protocol; succeeds every task it is given as soon as it gets it."""

    def __init__(self, channel: grpc.aio.Channel, name: str) -> None:
        self.stub = agents_pb2_grpc.AgentServiceStub(channel)
        self.name = name
        self.agent_id = ""
        self.outgoing: asyncio.Queue[agents_pb2.AgentMessage] = asyncio.Queue()
        self.assignments: asyncio.Queue[tuple[agents_pb2.Assignment, float]] = asyncio.Queue()
        self.acked: set[int] = set()
        self.ack_event = asyncio.Event()
        self.auto_complete = True
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        response = await self.stub.RegisterAgent(
            agents_pb2.RegisterAgentRequest(
                name=self.name, hostname="sim", resources=common_pb2.Resources(cpus=1.0)
            )
        )
        self.agent_id = response.agent_id
        self._task = asyncio.create_task(self._run())

    def send(self, **body: object) -> int:
        self._seq += 1
        self.outgoing.put_nowait(agents_pb2.AgentMessage(seq=self._seq, **body))  # type: ignore[arg-type]
        return self._seq

    async def _requests(self):  # type: ignore[no-untyped-def]
        yield agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id=self.agent_id))
        while True:
            yield await self.outgoing.get()

    async def _run(self) -> None:
        async for message in self.stub.Connect(self._requests()):
            kind = message.WhichOneof("body")
            if kind == "ack":
                self.acked.add(message.ack.seq)
                self.ack_event.set()
            elif kind == "assignment":
                ref = message.assignment.task
                self.assignments.put_nowait((message.assignment, time.perf_counter()))
                if self.auto_complete:
                    self.send(task_started=agents_pb2.TaskStarted(task=ref))
                    self.send(
                        result=agents_pb2.TaskResult(
                            task=ref, outcome=agents_pb2.TASK_OUTCOME_SUCCEEDED
                        )
                    )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def job_request(dataset: Path) -> jobs_pb2.SubmitJobRequest:
    config = struct_pb2.Struct()
    config.update({"dataset_path": str(dataset), "epochs": 1})
    return jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(kind="finetune", config=config))


async def measure_ingest(
    address: str, dataset: Path, batches: int, points: int
) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        agents = [SimulatedAgent(channel, f"ingest-{i}") for i in range(4)]
        for agent in agents:
            agent.auto_complete = False
            await agent.start()
        tasks = []
        for _ in agents:
            await jobs.SubmitJob(job_request(dataset))
        for agent in agents:
            assignment, _ = await asyncio.wait_for(agent.assignments.get(), 30)
            tasks.append((agent, assignment.task))
        now = timestamp_pb2.Timestamp()
        now.FromDatetime(datetime.now(UTC))
        start = time.perf_counter()
        sent: dict[SimulatedAgent, set[int]] = {agent: set() for agent, _ in tasks}
        for b in range(batches):
            for agent, ref in tasks:
                batch = common_pb2.MetricBatch(
                    metrics=[
                        common_pb2.Metric(
                            task_id=ref.task_id, attempt=ref.attempt, step=b * points + p + 1,
                            key="train/loss", value=1.0, time=now,
                        )
                        for p in range(points)
                    ]
                )  # fmt: skip
                sent[agent].add(agent.send(metrics=batch))
        for agent, seqs in sent.items():
            while not seqs <= agent.acked:
                agent.ack_event.clear()
                await asyncio.wait_for(agent.ack_event.wait(), 120)
        seconds = time.perf_counter() - start
        # Finish the tasks, so that no lease runs out later and requeues them.
        for agent, ref in tasks:
            done = agent.send(
                result=agents_pb2.TaskResult(task=ref, outcome=agents_pb2.TASK_OUTCOME_SUCCEEDED)
            )
            while done not in agent.acked:
                agent.ack_event.clear()
                await asyncio.wait_for(agent.ack_event.wait(), 30)
        for agent in agents:
            await agent.stop()
        return batches * points * len(tasks), seconds


async def measure_claims(address: str, dataset: Path, agents: int, jobs: int) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        simulated = [SimulatedAgent(channel, f"claim-{i}") for i in range(agents)]
        await asyncio.gather(*(agent.start() for agent in simulated))
        deadline = time.monotonic() + 60
        while True:
            listed = await stub.ListAgents(jobs_pb2.ListAgentsRequest())
            connected = [a for a in listed.agents if a.state == jobs_pb2.AGENT_STATE_CONNECTED]
            if len(connected) >= agents or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        arrivals: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

        async def forward(agent: SimulatedAgent) -> None:
            while True:
                assignment, when = await agent.assignments.get()
                arrivals.put_nowait((assignment.job_id, when))

        forwarders = [asyncio.create_task(forward(agent)) for agent in simulated]
        latencies = []
        for _ in range(jobs):
            response = await stub.SubmitJob(job_request(dataset))
            submitted = time.perf_counter()
            while True:
                job_id, when = await asyncio.wait_for(arrivals.get(), 30)
                if job_id == response.job.id:
                    break
            latencies.append(when - submitted)
        for forwarder in forwarders:
            forwarder.cancel()
        for agent in simulated:
            await agent.stop()
        return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_backend(
    name: str, url: str, workdir: Path, args: argparse.Namespace
) -> BackendResult:
    dataset = workdir / "dataset"
    # Submission checks the dataset; the simulated agents never read it.
    write_minimal_image_folder(dataset)
    with LocalCluster(workdir / name, agents=0, database_url=url) as cluster:
        points, seconds = await measure_ingest(cluster.address, dataset, args.batches, args.points)
        latencies = await measure_claims(cluster.address, dataset, args.agents, args.jobs)
    return BackendResult(
        backend=name,
        ingest_points=points,
        ingest_seconds=round(seconds, 3),
        points_per_second=round(points / seconds),
        claims=len(latencies),
        claim_p50_ms=round(statistics.median(latencies) * 1000, 2),
        claim_p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
    )


async def run_all(args: argparse.Namespace) -> list[BackendResult]:
    """Both backends in one event loop (grpc.aio channels are bound to the loop they start on)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="matrec-bench-") as tmp:
        workdir = Path(tmp)
        results.append(await run_backend("sqlite", "", workdir, args))
        server = start_postgres()
        try:
            url = server.create_database("matrec_bench")
            results.append(await run_backend("postgres", url, workdir, args))
        finally:
            server.destroy()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(run_all(args))
    print(f"{'backend':<10}{'points':>10}{'points/s':>12}{'claims':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for r in results:
        print(
            f"{r.backend:<10}{r.ingest_points:>10}{r.points_per_second:>12}"
            f"{r.claims:>8}{r.claim_p50_ms:>9}{r.claim_p99_ms:>9}"
        )
    if len(results) == 2:
        ratio = results[1].points_per_second / results[0].points_per_second
        print(f"postgres/sqlite ingest ratio: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
