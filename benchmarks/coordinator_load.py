"""User-call and heartbeat latency of a coordinator under agent and watcher load.

    python benchmarks/coordinator_load.py [--agents 50] [--watchers 20] [--calls 300]
                                          [--call-rate 10] [--heartbeat-interval 1]
                                          [--lease-ttl 5] [--database-url URL] [--json OUT]

A real coordinator process (LocalCluster, no real agents; SQLite unless --database-url names a
throwaway database) and, in a second process, the load:

* `--agents` simulated agents: real gRPC clients of the AgentService (store_throughput.py's
  SimulatedAgent, one connection each) that register, keep their Connect stream open and send a
  heartbeat every `--heartbeat-interval` seconds (the interval the coordinator hands out; phases
  spread at random), so N agents make N heartbeats per interval. They run the tasks they are
  given for the job's `duration_seconds`, renewing the leases in their heartbeats and sending 10
  metric points per running task per heartbeat;
* `--watchers` clients holding JobService streams open: half WatchJob on the long jobs (below),
  half WatchCluster at 2 s (the `matrec-ctl top` default);
* the scheduler's work: 5 diagnostic jobs that stay queued (they ask for a GPU no agent has, so
  every scheduling pass considers them), 5 long diagnostic jobs the agents hold for the whole
  run, and the probe's own SubmitJob calls (diagnostic, 0.5 s each), which agents then run.

A probe client in the main process makes the calls a user makes, one at a time, `--call-rate`
a second (the next one right away when a call took longer), in the order SubmitJob, GetJob (a
long job), ListJobs (the newest 100, as `matrec-ctl jobs`), ListAgents, `--calls` measured calls
in all (after 5 unmeasured rounds). It does so twice in one run:

1. baseline: the agents are registered but not connected, no watchers (same rows in the database,
   no traffic), then the jobs it submitted are cancelled;
2. under load: agents connected and heartbeating, watchers streaming, measured after a settling
   time of max(3 s, 2 heartbeat intervals).

Per RPC it prints p50, p95, p99 and max in both phases and the p99 ratio; the heartbeat latency
(sent -> acknowledged; real agents send heartbeats with seq 0 and get no acknowledgement, the
simulated ones number them so that the coordinator acknowledges each once it has stored it);
heartbeats never answered; leases that expired (the coordinator's matrec_lease_expiries counter)
and stale-task cancels the agents received; where the time goes: the coordinator's mean
handler time per RPC (its matrec_rpc_latency_seconds histogram), the CPU used by the coordinator,
the load generator, the probe and everything else on the machine (psutil), the load generator's
own event-loop lag, and the load average before and after. The verdict: p99 under 100 ms for the
user calls and for heartbeats, and no dropped lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import struct_pb2, timestamp_pb2
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import agents_pb2, common_pb2, jobs_pb2, jobs_pb2_grpc
from store_throughput import SimulatedAgent, percentile

TARGET_P99_MS = 100.0
PROBE_WARMUP_ROUNDS = 5
PROBE_JOB_SECONDS = 0.5
QUEUED_JOBS = 5
LONG_JOBS = 5
LONG_JOB_SECONDS = 3600.0  # the largest duration a diagnostic job accepts: longer than any run
WATCH_CLUSTER_INTERVAL_SECONDS = 2.0
METRIC_POINTS_PER_HEARTBEAT = 10
LOOP_LAG_TICK_SECONDS = 0.05
CALL_TIMEOUT_SECONDS = 30.0
PROBED_RPCS = ("SubmitJob", "GetJob", "ListJobs", "ListAgents")
# What the coordinator tells an agent whose lease on a task it lost (AgentService._renew).
NO_LONGER_ASSIGNED = "this attempt is no longer assigned to you"
# One TCP connection per simulated agent and watcher, as with real ones (gRPC would otherwise
# share one connection between channels to the same address).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


# -- results ------------------------------------------------------------------------------------


@dataclass
class Latency:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


@dataclass
class CpuUse:
    """CPU during a phase. Process figures are in cores (CPU seconds per wall-clock second); the
    coordinator's event loop (its main thread) and the machine's pressure (Linux PSI) are
    fractions of the phase's wall time, None where the kernel does not report them."""

    coordinator: float
    load_generator: float
    probe: float
    whole_machine: float
    other_processes: float
    cores: int
    coordinator_loop_running: float | None
    coordinator_loop_waiting_for_cpu: float | None
    cpu_pressure_some: float | None
    io_pressure_some: float | None
    io_pressure_full: float | None


@dataclass
class Phase:
    name: str
    seconds: float
    calls: dict[str, Latency]
    errors: list[str]
    server_mean_ms: dict[str, float]
    cpu: CpuUse
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]


@dataclass
class LoadStats:
    """What the load process saw while the probe measured (its window only, except counters)."""

    heartbeats_sent: int
    heartbeats_unanswered: int
    heartbeat: Latency | None
    stale_cancels: int
    tasks_finished: int
    watch_messages: int
    watch_errors: list[str]
    loop_lag_p99_ms: float
    loop_lag_max_ms: float


@dataclass
class LoadResult:
    agents: int
    watchers: int
    heartbeat_interval: float
    lease_ttl: float
    backend: str
    uptime_before: str
    uptime_after: str
    baseline: Phase
    load: Phase
    load_stats: LoadStats
    p99_ratio: dict[str, float]
    lease_expiries: int
    long_jobs_requeued: int
    calls_p99_ok: bool
    heartbeats_p99_ok: bool
    no_dropped_lease: bool


def summarize(seconds: list[float]) -> Latency | None:
    if not seconds:
        return None
    return Latency(
        count=len(seconds),
        p50_ms=round(percentile(seconds, 0.50) * 1000, 2),
        p95_ms=round(percentile(seconds, 0.95) * 1000, 2),
        p99_ms=round(percentile(seconds, 0.99) * 1000, 2),
        max_ms=round(max(seconds) * 1000, 2),
        mean_ms=round(sum(seconds) / len(seconds) * 1000, 2),
    )


# -- requests -----------------------------------------------------------------------------------


def diagnostic_job(
    name: str, seconds: float, resources: common_pb2.Resources | None = None
) -> jobs_pb2.SubmitJobRequest:
    config = struct_pb2.Struct()
    config.update({"duration_seconds": seconds, "steps": 1})
    spec = jobs_pb2.JobSpec(name=name, kind="diagnostic", config=config, resources=resources)
    return jobs_pb2.SubmitJobRequest(spec=spec)


# -- the load process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    address: str
    agents: int
    watchers: int
    seed: int = 0


class LoadAgent(SimulatedAgent):
    """A simulated agent that heartbeats (numbered, so that each is acknowledged and timed),
    holds each task for its job's duration_seconds and streams a few metrics for it."""

    def __init__(self, channel: grpc.aio.Channel, name: str) -> None:
        super().__init__(channel, name)
        self.auto_complete = False
        self.heartbeat_interval = 5.0
        self.running: dict[tuple[str, int], agents_pb2.TaskRef] = {}
        self.heartbeat_sent_at: dict[int, float] = {}
        # (sent at, seconds to the acknowledgement), on the time.monotonic clock.
        self.heartbeat_latencies: list[tuple[float, float]] = []
        self.first_ack = asyncio.Event()
        self.stale_cancels = 0
        self.tasks_finished = 0
        self._step = 0
        self._holders: set[asyncio.Task[None]] = set()

    async def register(self) -> None:
        """RegisterAgent only (the stream opens in `connect`); keep the interval it hands out."""
        response = await self.stub.RegisterAgent(
            agents_pb2.RegisterAgentRequest(
                name=self.name, hostname="load", resources=common_pb2.Resources(cpus=1.0)
            )
        )
        self.agent_id = response.agent_id
        self.heartbeat_interval = response.heartbeat_interval.ToMilliseconds() / 1000

    def connect(self) -> None:
        self._task = asyncio.create_task(self._run())

    def heartbeat(self) -> None:
        seq = self.send(
            heartbeat=agents_pb2.Heartbeat(
                running=list(self.running.values()),
                usage=common_pb2.ResourceUsage(cpu_percent=12.5, memory_used_bytes=1 << 30),
            )
        )
        self.heartbeat_sent_at[seq] = time.monotonic()
        if not self.running:
            return
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        points = []
        for ref in self.running.values():
            for _ in range(METRIC_POINTS_PER_HEARTBEAT):
                self._step += 1
                points.append(
                    common_pb2.Metric(
                        task_id=ref.task_id, attempt=ref.attempt, step=self._step,
                        key="diagnostic/score", value=0.5, time=now,
                    )
                )  # fmt: skip
        self.send(metrics=common_pb2.MetricBatch(metrics=points))

    async def _run(self) -> None:
        async for message in self.stub.Connect(self._requests()):
            kind = message.WhichOneof("body")
            if kind == "ack":
                sent_at = self.heartbeat_sent_at.pop(message.ack.seq, None)
                if sent_at is not None:
                    self.heartbeat_latencies.append((sent_at, time.monotonic() - sent_at))
                    self.first_ack.set()
            elif kind == "assignment":
                ref = message.assignment.task
                self.running[(ref.task_id, ref.attempt)] = ref
                self.send(task_started=agents_pb2.TaskStarted(task=ref))
                fields = message.assignment.config.fields
                seconds = (
                    fields["duration_seconds"].number_value if "duration_seconds" in fields else 1.0
                )
                holder = asyncio.create_task(self._hold(ref, seconds))
                self._holders.add(holder)
                holder.add_done_callback(self._holders.discard)
            elif kind == "cancel":
                ref = message.cancel.task
                if self.running.pop((ref.task_id, ref.attempt), None) is not None:
                    self.send(
                        result=agents_pb2.TaskResult(
                            task=ref, outcome=agents_pb2.TASK_OUTCOME_CANCELLED
                        )
                    )
                if message.cancel.reason == NO_LONGER_ASSIGNED:
                    self.stale_cancels += 1

    async def _hold(self, ref: agents_pb2.TaskRef, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.running.pop((ref.task_id, ref.attempt), None) is not None:
            self.send(
                result=agents_pb2.TaskResult(task=ref, outcome=agents_pb2.TASK_OUTCOME_SUCCEEDED)
            )
            self.tasks_finished += 1

    async def stop(self) -> None:
        for holder in list(self._holders):
            holder.cancel()
        await super().stop()


async def heartbeat_loop(agent: LoadAgent, phase: float) -> None:
    """Heartbeats on a fixed schedule (a late one does not push the next ones back)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(phase)
    due = loop.time()
    while True:
        agent.heartbeat()
        due += agent.heartbeat_interval
        await asyncio.sleep(max(0.0, due - loop.time()))


async def watch(stream: Callable[[], Any], counts: dict[str, int], errors: list[str]) -> None:
    """Hold a server stream open; open it again when it ends or fails."""
    while True:
        try:
            async for _ in stream():
                counts["messages"] += 1
        except grpc.aio.AioRpcError as error:
            errors.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(1.0)


def job_watch(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> Callable[[], Any]:
    request = jobs_pb2.WatchJobRequest(job_id=job_id)
    return lambda: stub.WatchJob(request)


def cluster_watch(stub: jobs_pb2_grpc.JobServiceStub) -> Callable[[], Any]:
    request = jobs_pb2.WatchClusterRequest()
    request.interval.FromMilliseconds(int(WATCH_CLUSTER_INTERVAL_SECONDS * 1000))
    return lambda: stub.WatchCluster(request)


async def loop_lag(samples: list[float]) -> None:
    """How late this process's event loop wakes up: the load generator's own saturation."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LOOP_LAG_TICK_SECONDS)
        samples.append(max(0.0, loop.time() - before - LOOP_LAG_TICK_SECONDS))


async def receive(conn: Connection) -> tuple[str, Any]:
    message: tuple[str, Any] = await asyncio.to_thread(conn.recv)
    return message


async def run_load(plan: LoadPlan, conn: Connection) -> None:
    rng = random.Random(plan.seed)
    channels: list[grpc.aio.Channel] = []

    def channel() -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(plan.address, options=OWN_CONNECTION))
        return channels[-1]

    background: list[asyncio.Task[None]] = []
    agents = [LoadAgent(channel(), f"load-{i}") for i in range(plan.agents)]
    try:
        await asyncio.gather(*(agent.register() for agent in agents))
        conn.send(("registered", None))
        command, long_jobs = await receive(conn)
        assert command == "go", command
        heartbeats = []
        for agent in agents:
            agent.connect()
            phase = rng.uniform(0, agent.heartbeat_interval)
            heartbeats.append(asyncio.create_task(heartbeat_loop(agent, phase)))
        background += heartbeats
        counts = {"messages": 0}
        watch_errors: list[str] = []
        for i in range(plan.watchers):
            stub = jobs_pb2_grpc.JobServiceStub(channel())
            if i % 2 == 0:
                stream = job_watch(stub, long_jobs[i // 2 % len(long_jobs)])
            else:
                stream = cluster_watch(stub)
            background.append(asyncio.create_task(watch(stream, counts, watch_errors)))
        lags: list[float] = []
        background.append(asyncio.create_task(loop_lag(lags)))
        await asyncio.wait_for(asyncio.gather(*(a.first_ack.wait() for a in agents)), 120)
        conn.send(("ready", None))
        command, window = await receive(conn)
        assert command == "stop", command
        start, end = window
        for task in heartbeats:
            task.cancel()
        # Heartbeats still in flight get the time a lease allows to be answered.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
            t < end for a in agents for t in a.heartbeat_sent_at.values()
        ):
            await asyncio.sleep(0.1)
        in_window = [
            latency
            for a in agents
            for sent, latency in a.heartbeat_latencies
            if start <= sent < end
        ]
        unanswered = sum(
            1 for a in agents for sent in a.heartbeat_sent_at.values() if start <= sent < end
        )
        lags_ms = [lag * 1000 for lag in lags]
        stats = LoadStats(
            heartbeats_sent=len(in_window) + unanswered,
            heartbeats_unanswered=unanswered,
            heartbeat=summarize(in_window),
            stale_cancels=sum(a.stale_cancels for a in agents),
            tasks_finished=sum(a.tasks_finished for a in agents),
            watch_messages=counts["messages"],
            watch_errors=watch_errors[:20],
            loop_lag_p99_ms=round(percentile(lags_ms, 0.99), 2) if lags_ms else 0.0,
            loop_lag_max_ms=round(max(lags_ms), 2) if lags_ms else 0.0,
        )
        conn.send(("stats", asdict(stats)))
    finally:
        for task in background:
            task.cancel()
        for agent in agents:
            await agent.stop()
        for ch in channels:
            await ch.close(None)


def load_process_main(plan: LoadPlan, conn: Connection) -> None:
    # Ctrl-C reaches the whole foreground process group; the main process stops this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(run_load(plan, conn))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


# -- the main process: coordinator, probe, measurements -----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def expect(conn: Connection, process: multiprocessing.process.BaseProcess, wanted: str) -> Any:
    """The load process's next message, which must be `wanted`."""
    deadline = time.monotonic() + 300
    while not conn.poll(0.5):
        if not process.is_alive():
            raise RuntimeError(f"the load process exited (code {process.exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the load process did not report {wanted!r} within 300 s")
    kind, payload = conn.recv()
    if kind != wanted:
        raise RuntimeError(f"the load process failed:\n{payload}")
    return payload


def server_histogram(metrics_url: str) -> tuple[dict[str, tuple[float, float]], float]:
    """Per unary RPC (sum of seconds, count) from the coordinator's histogram; lease expiries."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    rpcs: dict[str, list[float]] = {}
    expiries = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "matrec_rpc_latency_seconds_sum":
                rpcs.setdefault(sample.labels["method"], [0.0, 0.0])[0] = sample.value
            elif sample.name == "matrec_rpc_latency_seconds_count":
                rpcs.setdefault(sample.labels["method"], [0.0, 0.0])[1] = sample.value
            elif sample.name == "matrec_lease_expiries_total":
                expiries = sample.value
    return {k: (v[0], v[1]) for k, v in rpcs.items()}, expiries


@dataclass
class CpuSample:
    at: float
    process_seconds: dict[str, float]
    machine_busy_seconds: float
    # Nanoseconds the coordinator's main thread ran and waited in the run queue (schedstat).
    loop_run_ns: int | None
    loop_wait_ns: int | None
    # Microseconds of stall (PSI totals): cpu some, io some, io full.
    pressure_us: tuple[int, int, int] | None


def read_schedstat(pid: int) -> tuple[int | None, int | None]:
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None, None
    return int(run_ns), int(wait_ns)


def read_pressure() -> tuple[int, int, int] | None:
    def total(resource: str, kind: str) -> int:
        for line in Path(f"/proc/pressure/{resource}").read_text().splitlines():
            if line.startswith(kind):
                return int(line.rsplit("total=", 1)[1])
        raise ValueError(f"no {kind} line in /proc/pressure/{resource}")

    try:
        return total("cpu", "some"), total("io", "some"), total("io", "full")
    except (OSError, ValueError):
        return None


class CpuMeter:
    """CPU seconds of the coordinator, the load process, this process and the whole machine;
    how much of the time the coordinator's event loop ran or waited for a CPU; machine pressure."""

    def __init__(self, coordinator: psutil.Process, load: psutil.Process) -> None:
        self.coordinator_pid = coordinator.pid
        self.processes = {"coordinator": coordinator, "load": load, "probe": psutil.Process()}

    def sample(self) -> CpuSample:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        used = {}
        for name, process in self.processes.items():
            times = process.cpu_times()
            used[name] = times.user + times.system
        run_ns, wait_ns = read_schedstat(self.coordinator_pid)
        return CpuSample(time.monotonic(), used, busy, run_ns, wait_ns, read_pressure())

    @staticmethod
    def between(before: CpuSample, after: CpuSample) -> CpuUse:
        wall = after.at - before.at
        ours = {
            k: (after.process_seconds[k] - before.process_seconds[k]) / wall
            for k in after.process_seconds
        }
        machine = (after.machine_busy_seconds - before.machine_busy_seconds) / wall

        def share(first: int | None, last: int | None, unit: float) -> float | None:
            if first is None or last is None:
                return None
            return round((last - first) * unit / wall, 3)

        pressure: list[float | None] = [None, None, None]
        if before.pressure_us is not None and after.pressure_us is not None:
            pressure = [
                share(b, a, 1e-6)
                for b, a in zip(before.pressure_us, after.pressure_us, strict=True)
            ]
        return CpuUse(
            coordinator=round(ours["coordinator"], 2),
            load_generator=round(ours["load"], 2),
            probe=round(ours["probe"], 2),
            whole_machine=round(machine, 2),
            other_processes=round(max(0.0, machine - sum(ours.values())), 2),
            cores=psutil.cpu_count() or 0,
            coordinator_loop_running=share(before.loop_run_ns, after.loop_run_ns, 1e-9),
            coordinator_loop_waiting_for_cpu=share(before.loop_wait_ns, after.loop_wait_ns, 1e-9),
            cpu_pressure_some=pressure[0],
            io_pressure_some=pressure[1],
            io_pressure_full=pressure[2],
        )


class Probe:
    """The user's calls, one at a time, one every 1/`rate` s (or right after a slower one)."""

    def __init__(self, channel: grpc.Channel, long_jobs: list[str], rate: float) -> None:
        self.stub = jobs_pb2_grpc.JobServiceStub(channel)
        self.spacing = 1.0 / rate
        self.long_jobs = long_jobs
        self.submitted: list[str] = []

    def call(self, rpc: str, round_index: int) -> None:
        stub, timeout = self.stub, CALL_TIMEOUT_SECONDS
        if rpc == "SubmitJob":
            response = stub.SubmitJob(diagnostic_job("probe", PROBE_JOB_SECONDS), timeout=timeout)
            self.submitted.append(response.job.id)
        elif rpc == "GetJob":
            job_id = self.long_jobs[round_index % len(self.long_jobs)]
            stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=timeout)
        elif rpc == "ListJobs":
            stub.ListJobs(jobs_pb2.ListJobsRequest(limit=100), timeout=timeout)
        else:
            stub.ListAgents(jobs_pb2.ListAgentsRequest(), timeout=timeout)

    def run(self, rounds: int, warmup: int) -> tuple[dict[str, list[float]], list[str]]:
        latencies: dict[str, list[float]] = {rpc: [] for rpc in PROBED_RPCS}
        errors: list[str] = []
        for round_index in range(warmup + rounds):
            for rpc in PROBED_RPCS:
                start = time.monotonic()
                try:
                    self.call(rpc, round_index)
                    if round_index >= warmup:
                        latencies[rpc].append(time.monotonic() - start)
                except grpc.RpcError as error:
                    what = (
                        f"{error.code().name}: {error.details()}"
                        if isinstance(error, grpc.Call)
                        else error
                    )
                    errors.append(f"{rpc}: {what}")
                time.sleep(max(0.0, start + self.spacing - time.monotonic()))
        return latencies, errors

    def cancel_submitted(self) -> None:
        for job_id in self.submitted:
            with contextlib.suppress(grpc.RpcError):
                self.stub.CancelJob(
                    jobs_pb2.CancelJobRequest(job_id=job_id, reason="baseline over"),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
        self.submitted.clear()


def measure_phase(name: str, probe: Probe, rounds: int, meter: CpuMeter, metrics_url: str) -> Phase:
    load_before = os.getloadavg()
    server_before, _ = server_histogram(metrics_url)
    cpu_before = meter.sample()
    start = time.monotonic()
    latencies, errors = probe.run(rounds, PROBE_WARMUP_ROUNDS)
    seconds = time.monotonic() - start
    cpu = CpuMeter.between(cpu_before, meter.sample())
    server_after, _ = server_histogram(metrics_url)
    server_mean_ms = {}
    for rpc in PROBED_RPCS:
        total, count = server_after.get(rpc, (0.0, 0.0))
        total0, count0 = server_before.get(rpc, (0.0, 0.0))
        if count > count0:
            server_mean_ms[rpc] = round((total - total0) / (count - count0) * 1000, 2)
    summaries = {rpc: summarize(values) for rpc, values in latencies.items()}
    summaries["all"] = summarize([v for values in latencies.values() for v in values])
    return Phase(
        name=name,
        seconds=round(seconds, 1),
        calls={k: v for k, v in summaries.items() if v is not None},
        errors=errors[:20],
        server_mean_ms=server_mean_ms,
        cpu=cpu,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def find_coordinator() -> psutil.Process:
    for child in psutil.Process().children():
        if "matrec.coordinator.main" in child.cmdline():
            return child
    raise RuntimeError("the coordinator process is not a child of this process")


def run(args: argparse.Namespace) -> LoadResult:
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    coordinator_args = [
        "--heartbeat-interval", f"{args.heartbeat_interval:g}",
        "--lease-ttl", f"{args.lease_ttl:g}",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    uptime_before = uptime()
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="matrec-load-") as tmp,
        LocalCluster(
            Path(tmp), agents=0, database_url=args.database_url, coordinator_args=coordinator_args
        ) as cluster,
        grpc.insecure_channel(cluster.address) as channel,
    ):
        conn, child_conn = context.Pipe()
        plan = LoadPlan(cluster.address, args.agents, args.watchers)
        load = context.Process(target=load_process_main, args=(plan, child_conn), daemon=True)
        load.start()
        try:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            expect(conn, load, "registered")
            no_gpu_has_this = common_pb2.Resources(gpus=1, cpus=1.0)
            for i in range(QUEUED_JOBS):
                stub.SubmitJob(diagnostic_job(f"queued-{i}", 1.0, no_gpu_has_this))
            long_jobs = [
                stub.SubmitJob(diagnostic_job(f"long-{i}", LONG_JOB_SECONDS)).job.id
                for i in range(LONG_JOBS)
            ]
            meter = CpuMeter(find_coordinator(), psutil.Process(load.pid))
            probe = Probe(channel, long_jobs, args.call_rate)
            rounds = -(-args.calls // len(PROBED_RPCS))
            print(f"baseline: {rounds} calls of each of {', '.join(PROBED_RPCS)} ...")
            baseline = measure_phase("baseline", probe, rounds, meter, metrics_url)
            probe.cancel_submitted()
            _, expiries_before = server_histogram(metrics_url)
            print(f"connecting {args.agents} agents and {args.watchers} watchers ...")
            conn.send(("go", long_jobs))
            expect(conn, load, "ready")
            time.sleep(max(3.0, 2 * args.heartbeat_interval))
            print("under load ...")
            window_start = time.monotonic()
            loaded = measure_phase("load", probe, rounds, meter, metrics_url)
            window_end = time.monotonic()
            _, expiries_after = server_histogram(metrics_url)
            requeued = sum(
                1
                for job_id in long_jobs
                for task in stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id)).job.tasks
                if task.attempt > 1
            )
            conn.send(("stop", (window_start, window_end)))
            raw = expect(conn, load, "stats")
            heartbeat = raw.pop("heartbeat")
            stats = LoadStats(heartbeat=Latency(**heartbeat) if heartbeat else None, **raw)
            load.join(30)
        finally:
            if load.is_alive():
                load.terminate()
                load.join(10)
            if load.is_alive():
                load.kill()
                load.join()
    ratio = {
        rpc: round(loaded.calls[rpc].p99_ms / baseline.calls[rpc].p99_ms, 2)
        for rpc in loaded.calls
        if rpc in baseline.calls and baseline.calls[rpc].p99_ms > 0
    }
    expiries = int(expiries_after - expiries_before)
    return LoadResult(
        agents=args.agents,
        watchers=args.watchers,
        heartbeat_interval=args.heartbeat_interval,
        lease_ttl=args.lease_ttl,
        backend=args.database_url.split(":", 1)[0] if args.database_url else "sqlite",
        uptime_before=uptime_before,
        uptime_after=uptime(),
        baseline=baseline,
        load=loaded,
        load_stats=stats,
        p99_ratio=ratio,
        lease_expiries=expiries,
        long_jobs_requeued=requeued,
        calls_p99_ok=not loaded.errors and loaded.calls["all"].p99_ms < TARGET_P99_MS,
        heartbeats_p99_ok=(
            stats.heartbeat is not None
            and stats.heartbeats_unanswered == 0
            and stats.heartbeat.p99_ms < TARGET_P99_MS
        ),
        no_dropped_lease=expiries == 0 and requeued == 0 and stats.stale_cancels == 0,
    )


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.0%}"


def report(r: LoadResult) -> None:
    def row(name: str, a: Latency | None, b: Latency | None, ratio: str) -> None:
        def cells(x: Latency | None) -> str:
            if x is None:
                return f"{'-':>30}"
            return f"{x.p50_ms:>7.1f}{x.p95_ms:>7.1f}{x.p99_ms:>8.1f}{x.max_ms:>8.1f}"

        print(f"{name:<12}{cells(a)}   {cells(b)}{ratio:>8}")

    print(
        f"\n{r.agents} agents (heartbeat every {r.heartbeat_interval:g} s, lease "
        f"{r.lease_ttl:g} s), {r.watchers} watchers, {r.backend}; latency in ms"
    )
    columns = f"{'p50':>7}{'p95':>7}{'p99':>8}{'max':>8}"
    print(f"{'':<12}{'baseline':>30}   {'under load':>30}")
    print(f"{'':<12}{columns}   {columns}{'p99 x':>8}")
    for rpc in (*PROBED_RPCS, "all"):
        row(rpc, r.baseline.calls.get(rpc), r.load.calls.get(rpc), f"{r.p99_ratio.get(rpc, 0):.2f}")
    s = r.load_stats
    row("heartbeat", None, s.heartbeat, "")
    print(
        f"heartbeats: {s.heartbeats_sent} sent while measuring, {s.heartbeats_unanswered} "
        f"unanswered; lease expiries {r.lease_expiries}, long jobs requeued "
        f"{r.long_jobs_requeued}, stale-task cancels {s.stale_cancels}; tasks run "
        f"{s.tasks_finished}; watch messages {s.watch_messages}, watch errors "
        f"{len(s.watch_errors)}"
    )
    for phase in (r.baseline, r.load):
        server = ", ".join(f"{k} {v:.1f}" for k, v in phase.server_mean_ms.items())
        c = phase.cpu
        print(
            f"{phase.name}: {phase.seconds:g} s; coordinator handler mean ms: {server}; CPU "
            f"(cores of {c.cores}): coordinator {c.coordinator}, load generator "
            f"{c.load_generator}, probe {c.probe}, other processes {c.other_processes}, "
            f"machine {c.whole_machine}; load average {phase.load_average_before[0]:.2f} -> "
            f"{phase.load_average_after[0]:.2f}"
        )
        print(
            f"  coordinator event loop: running {percent(c.coordinator_loop_running)}, waiting "
            f"for a CPU {percent(c.coordinator_loop_waiting_for_cpu)} of the time; machine "
            f"pressure: cpu some {percent(c.cpu_pressure_some)}, io some "
            f"{percent(c.io_pressure_some)}, io full {percent(c.io_pressure_full)}"
        )
        for error in phase.errors:
            print(f"  error: {error}")
    print(f"load generator event-loop lag: p99 {s.loop_lag_p99_ms} ms, max {s.loop_lag_max_ms} ms")
    print(f"uptime before: {r.uptime_before}\nuptime after:  {r.uptime_after}")
    yes = {True: "yes", False: "NO"}
    print(
        f"user calls p99 < {TARGET_P99_MS:g} ms: {yes[r.calls_p99_ok]}; heartbeats p99 < "
        f"{TARGET_P99_MS:g} ms: {yes[r.heartbeats_p99_ok]}; no dropped lease: "
        f"{yes[r.no_dropped_lease]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=50, help="simulated agents (default 50)")
    parser.add_argument("--watchers", type=int, default=20, help="watch streams (default 20)")
    parser.add_argument(
        "--calls",
        type=int,
        default=300,
        help="measured calls per phase, a quarter of them to each RPC (default 300)",
    )
    parser.add_argument(
        "--call-rate",
        type=float,
        default=10.0,
        help="the probe's calls per second, a quarter of them SubmitJob (default 10)",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument(
        "--database-url",
        default="",
        help="a throwaway PostgreSQL database (postgresql+psycopg://...); default SQLite",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    for name in ("agents", "watchers", "calls"):
        if getattr(args, name) < (1 if name == "calls" else 0):
            parser.error(f"--{name} must be >= {1 if name == 'calls' else 0}")
    if args.call_rate <= 0:
        parser.error("--call-rate must be > 0")
    if args.heartbeat_interval <= 0 or args.lease_ttl <= args.heartbeat_interval:
        parser.error("--heartbeat-interval must be > 0 and --lease-ttl longer than it")
    # SIGTERM unwinds like Ctrl-C does: the load process and the coordinator are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(args)
    except KeyboardInterrupt:
        sys.exit("interrupted: the load process and the coordinator were stopped")
    report(result)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
