"""`matrec-ctl distributed --operation start-workers|status`: the seed's worker start-up.

In matrec a worker host is an agent: `start-workers` starts N agents on this machine as local
processes (``python -m matrec.agent.main``), joined to the configured coordinator, and keeps them
running until Ctrl-C (or SIGTERM), then stops them. With no coordinator configured it first
starts one (the embedded default) and prints its address for the other commands. Each worker
offers `--cpus-per-worker` CPUs. Several agents on one host cannot share its GPUs (each would
number them from 0), so with more than one worker they offer none; a GPU host runs one agent,
which offers all its GPUs to distributed jobs (`--num-workers 1`, or `matrec-ctl agent`).

Everything lives under BASE_DIR/workers: the agents' data dirs, logs/<name>.log, and the
embedded coordinator's database and ready file (which `--operation status` reads).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Annotated

import typer
from matrec.sdk.ctl.config_cmd import configured_coordinator, effective_config
from matrec.sdk.ctl.errors import EXIT_FAILURE, EXIT_INVALID_INPUT, print_error, stderr
from rich.console import Console
from rich.markup import escape
from rich.text import Text

if TYPE_CHECKING:
    from matrec.sdk.local_cluster import Lifeline, LocalCluster

console = Console(soft_wrap=True)

AGENT_MODULE = "matrec.agent.main"
WORKERS_DIR = "workers"
READY_FILE = "coordinator.ready"
STOP_TIMEOUT = 90.0  # the agent gives running tasks 60 s to checkpoint on SIGTERM


class Operation(StrEnum):
    start_workers = "start-workers"
    status = "status"


@dataclass
class Worker:
    """One agent process this command started."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    reported_exit: bool = False

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        """SIGTERM: the agent stops its tasks after letting them checkpoint, then exits."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait for the exit; SIGKILL its whole process group after `timeout` seconds."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self.log.close()


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def distributed(
    ctx: typer.Context,
    operation: Annotated[
        Operation,
        typer.Option(
            help="start-workers: start --num-workers local worker agents until Ctrl-C; "
            "status: list the coordinator's agents.",
            show_default=False,
        ),
    ],
    num_workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            metavar="N",
            help="Workers to start. Default: NUM_WORKERS, else 4.",
            show_default=False,
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Join this coordinator (as -c does). Default: MATREC_COORDINATOR, else an "
            "embedded coordinator started here.",
            show_default=False,
        ),
    ] = None,
    cpus_per_worker: Annotated[
        float, typer.Option(min=0.1, metavar="CPUS", help="CPUs each worker offers.")
    ] = 1.0,
    name_prefix: Annotated[
        str | None,
        typer.Option(
            metavar="PREFIX",
            help="Workers are named PREFIX-0, PREFIX-1, ... Default: HOSTNAME-worker.",
            show_default=False,
        ),
    ] = None,
    base_dir: Annotated[
        Path | None,
        typer.Option(
            help="Workers' data and logs go to BASE_DIR/workers. Default: MATREC_BASE_DIR, "
            "else ~/.matrec/training.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="Port of an embedded coordinator; 0 picks a free one."),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="status: print JSON.")] = False,
) -> None:
    """Start worker hosts (agents) on this machine, or list the cluster's agents.

    start-workers runs N agents as local processes, joined to the configured coordinator (or to an embedded one it starts when none is configured), prints their names and log files, and keeps them running until Ctrl-C. Jobs then run on them: `matrec-ctl train --coordinator ADDRESS ...`.

    [dim]$ matrec-ctl distributed --operation start-workers --num-workers 4
    $ matrec-ctl -c 10.0.0.5:50051 distributed --operation start-workers --num-workers 2
    $ matrec-ctl distributed --operation status[/]
    """  # noqa: E501
    config = effective_config(ctx, base_dir=base_dir, num_workers=num_workers)
    workdir = config.base_dir.expanduser().resolve() / WORKERS_DIR
    address = configured_coordinator(ctx, coordinator)
    if operation is Operation.status:
        _status(address or _embedded_address(workdir), as_json)
        return
    prefix = name_prefix or f"{socket.gethostname()}-worker"
    code = start_workers(
        address, workdir, config.num_workers, cpus_per_worker=cpus_per_worker, prefix=prefix,
        port=port,
    )  # fmt: skip
    if code:
        raise typer.Exit(code)


def _embedded_address(workdir: Path) -> str:
    ready = workdir / READY_FILE
    try:
        address = ready.read_text().strip()
    except FileNotFoundError:
        address = ""
    if not address:
        print_error(
            "no coordinator configured (-c, --coordinator, MATREC_COORDINATOR or the config "
            f"file) and no embedded one started in {workdir}: start workers with "
            "`matrec-ctl distributed --operation start-workers`"
        )
        raise typer.Exit(EXIT_INVALID_INPUT)
    return address


def _status(address: str, as_json: bool) -> None:
    from matrec.sdk.client import Client
    from matrec.sdk.ctl.render import agents_table, to_json

    with Client(address) as client:
        agents = client.list_agents()
    if as_json:
        typer.echo(to_json(agents))
        return
    if not agents:
        console.print(f"no agents at {address}", style="dim")
        return
    connected = sum(1 for agent in agents if agent.state == "connected")
    console.print(f"coordinator {address}: {connected} of {len(agents)} agents connected")
    console.print(agents_table(agents))


def start_workers(
    address: str | None,
    workdir: Path,
    count: int,
    *,
    cpus_per_worker: float,
    prefix: str,
    port: int = 0,
    start_timeout: float = 60.0,
) -> int:
    """Start `count` agents against `address` (None: an embedded coordinator in `workdir`),
    wait until they are connected, keep them until Ctrl-C or SIGTERM, then stop them; the exit
    code (0 after Ctrl-C, 1 if they could not start or all of them exited)."""
    from matrec.sdk.local_cluster import ClusterStartError, Lifeline, LocalCluster, tail

    workdir.mkdir(parents=True, exist_ok=True)
    cluster: LocalCluster | None = None
    workers: list[Worker] = []
    lifeline = Lifeline()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # Ctrl-C ends the run even where the shell started us with SIGINT ignored (in background).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if address is None:
            cluster = LocalCluster(workdir, agents=0, port=port)
            with stderr.status("no coordinator configured: starting one…"):
                cluster.start_coordinator()
            address = cluster.address
            console.print(
                f"coordinator [bold]{address}[/] (embedded: its database is in "
                f"{escape(str(workdir / 'coordinator'))}, its log "
                f"{escape(str(cluster.coordinator_log))}); use it with "
                f"[bold]matrec-ctl -c {address} ...[/] or MATREC_COORDINATOR={address}"
            )
        gpus = None if count == 1 else 0
        if gpus == 0:
            stderr.print(
                "the workers offer CPUs only: agents sharing a host cannot share its GPUs; on a "
                "GPU host run one worker (--num-workers 1), which offers all of them",
                style="dim",
                highlight=False,
                soft_wrap=True,
            )
        for index in range(count):
            name = f"{prefix}-{index}"
            workers.append(_spawn(address, workdir, name, cpus_per_worker, gpus, lifeline))
        with stderr.status(f"waiting for {count} workers to connect to {address}…"):
            _wait_connected(address, workers, start_timeout)
        _print_workers(workers, address, cpus_per_worker, gpus)
        console.print(f"{count} workers running; Ctrl-C stops them", style="dim")
        return _keep_running(workers)
    except ClusterStartError as exc:
        print_error(str(exc))
        stderr.print(Text(exc.log_tail, style="dim"), soft_wrap=True)
        stderr.print(f"(full log: {exc.log_path})", markup=False, highlight=False)
        return EXIT_FAILURE
    except _WorkerFailed as exc:
        print_error(str(exc))
        stderr.print(Text(tail(exc.worker.log_path), style="dim"), soft_wrap=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C (or SIGTERM) while stopping must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _stop(workers, cluster)
        finally:
            lifeline.close()
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)


class _WorkerFailed(Exception):
    def __init__(self, message: str, worker: Worker) -> None:
        super().__init__(message)
        self.worker = worker


def _spawn(
    address: str, workdir: Path, name: str, cpus: float, gpus: int | None, lifeline: Lifeline
) -> Worker:
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    log = log_path.open("ab")
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
    log.flush()
    command = [
        sys.executable, "-m", AGENT_MODULE,
        "--coordinator", address,
        "--name", name,
        "--data-dir", str(workdir / name),
        "--cpus", f"{cpus:g}",
        *lifeline.arguments(),
    ]  # fmt: skip
    if gpus is not None:
        command += ["--gpus", str(gpus)]
    popen = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        pass_fds=lifeline.pass_fds,  # they stop once this command is gone, however it ended
        # Own session: Ctrl-C reaches only this command, which stops the workers in order.
        start_new_session=True,
    )
    return Worker(name, popen, log_path, log)


def _wait_connected(address: str, workers: list[Worker], timeout: float) -> None:
    from matrec.sdk.client import Client
    from matrec.sdk.errors import CoordinatorUnavailableError

    names = {worker.name for worker in workers}
    deadline = time.monotonic() + timeout
    with Client(address, timeout=5.0) as client:
        while True:
            for worker in workers:
                if not worker.alive:
                    raise _WorkerFailed(
                        f"worker {worker.name} exited with code {worker.popen.returncode} "
                        f"while starting (log: {worker.log_path})",
                        worker,
                    )
            try:
                agents = client.list_agents()
            except CoordinatorUnavailableError:
                agents = []
            connected = {a.name for a in agents if a.name in names and a.state == "connected"}
            if connected == names:
                return
            if time.monotonic() > deadline:
                missing = sorted(names - connected)
                late = next(worker for worker in workers if worker.name == missing[0])
                raise _WorkerFailed(
                    f"{len(connected)} of {len(workers)} workers connected to {address} within "
                    f"{timeout:g} s; not connected: {', '.join(missing)} (is the coordinator "
                    f"reachable from here? log: {late.log_path})",
                    late,
                )
            time.sleep(0.2)


def _print_workers(workers: list[Worker], address: str, cpus: float, gpus: int | None) -> None:
    offered = f"{cpus:g} CPU{'s' if cpus != 1 else ''}, " + (
        "the GPUs it finds" if gpus is None else "no GPU"
    )
    for worker in workers:
        console.print(
            f"worker [bold]{escape(worker.name)}[/] (pid {worker.popen.pid}, {offered}) "
            f"connected to {address}; log {escape(str(worker.log_path))}"
        )


def _keep_running(workers: list[Worker]) -> int:
    """Until interrupted: report each worker that exits; 1 once none is left."""
    while True:
        for worker in workers:
            if not worker.alive and not worker.reported_exit:
                worker.reported_exit = True
                print_error(
                    f"worker {worker.name} exited with code {worker.popen.returncode} "
                    f"(log: {worker.log_path})"
                )
        if not any(worker.alive for worker in workers):
            return EXIT_FAILURE
        time.sleep(1.0)


def _stop(workers: list[Worker], cluster: LocalCluster | None) -> None:
    if workers or cluster is not None:
        stderr.print("stopping the workers…", style="dim")
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait_or_kill(STOP_TIMEOUT)
    if cluster is not None:
        cluster.stop()
        # `--operation status` finds a running embedded coordinator by this file.
        (cluster.workdir / READY_FILE).unlink(missing_ok=True)
    if workers:
        console.print(
            f"stopped {len(workers)} workers; their logs are in "
            f"{escape(str(workers[0].log_path.parent))}"
        )
