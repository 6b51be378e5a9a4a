"""Launcher of a distributed task: its worker ranks on this host, no SSH, no horovodrun.

    python -m matrec.agent.launcher --task-file PATH --events-fd FD

The agent starts this instead of a worker when a finetune task asks for `workers_per_host > 1`
or is one member of a multi-host gang (`hosts > 1`). Member 0 of a gang (or the only one)
picks the backend (`auto`: Horovod when it imports, else torch.distributed, saying why in the
task log) and sets up the rendezvous: Horovod's Gloo rendezvous server in this process, or a
free TCP port for torch.distributed. Hosts share no folder: member 0's launcher reports the
rendezvous to its agent as an event, the agent reports it to the coordinator over its stream,
and the coordinator passes it on to the other members' agents, which write it to their
launchers' standard input; a rendezvous of another placement (gang id) is ignored. Each launcher
then starts its ranks as `python -m matrec.agent.worker` with the environment each one needs;
global rank = member * workers_per_host + local rank. All ranks read and rank 0 writes the
checkpoints in the member-0 task's folder.

Global rank 0 writes the task's events to FD; other members report an empty result when their
ranks succeed. If a rank fails, the others on this host are killed at once (no rank hangs in a
collective; ranks on other hosts see their peers vanish) and the launcher exits with the failing
rank's code. SIGTERM reaches every rank (one process group), which stop together after the same
step, and the launcher exits with EXIT_PREEMPTED.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import psutil
from matrec.agent.worker import die_with_agent
from matrec.agent.worker_protocol import (
    EXIT_FAILED,
    EXIT_INVALID_TASK,
    EXIT_OK,
    EXIT_PREEMPTED,
    PARENT_PID_ENV,
    LogEvent,
    RendezvousEvent,
    ResultEvent,
    WorkerEvent,
    WorkerTask,
    encode_event,
    parse_event,
)

#: How long the other members of a gang wait for member 0's rendezvous.
RENDEZVOUS_TIMEOUT_SECONDS = 120.0


#: Bound on how long a rank waits in a collective for a peer that is gone (seconds).
COLLECTIVE_TIMEOUT_SECONDS = 120


class LaunchError(Exception):
    """The task cannot start as asked (another attempt would not help); the message says why."""


class RendezvousFailed(Exception):
    """The gang did not come together this time; another placement may."""


@dataclass(frozen=True)
class Layout:
    """Where this launcher's ranks sit in the job."""

    member: int
    members: int
    per_host: int
    gang_id: str
    primary_dir: Path  # the member-0 task's folder: checkpoints, model

    @property
    def world_size(self) -> int:
        return self.members * self.per_host


def layout_of(task: WorkerTask) -> Layout:
    members = max(1, task.gang_size)
    own_dir = Path(task.artifact_dir)
    primary = own_dir.parent / f"{task.job_id}-t0" if members > 1 else own_dir
    return Layout(
        member=task.gang_member,
        members=members,
        per_host=int(task.config.get("workers_per_host", 1) or 1),
        gang_id=task.gang_id,
        primary_dir=primary,
    )


def resolve_backend(requested: str) -> tuple[str, str]:
    """The backend to use, and a line for the task log."""
    if requested == "torch":
        return "torch", "backend torch.distributed (as requested)"
    probe = subprocess.run(
        [sys.executable, "-c", "import horovod.torch"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        return "horovod", "backend Horovod (Gloo)"
    reason = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
    if requested == "horovod":
        raise LaunchError(f"backend horovod was requested but Horovod is unavailable: {reason}")
    return "torch", f"Horovod unavailable ({reason}); backend torch.distributed"


def network_address(interface: str | None, members: int) -> tuple[str, str]:
    """(interface, IPv4 address) the ranks talk over: the named interface, else the one that
    holds the host name's address; loopback for a single host."""
    addresses = {
        name: next((a.address for a in entries if a.family == socket.AF_INET), None)
        for name, entries in psutil.net_if_addrs().items()
    }
    if interface:
        address = addresses.get(interface)
        if address is None:
            known = ", ".join(n for n, a in sorted(addresses.items()) if a)
            raise LaunchError(
                f"network_interface {interface!r} has no IPv4 address here; interfaces: {known}"
            )
        return interface, address
    loopback = next((n for n, a in addresses.items() if a == "127.0.0.1"), "lo")
    if members == 1:
        return loopback, "127.0.0.1"
    try:
        own = socket.gethostbyname(socket.gethostname())
    except OSError:
        own = "127.0.0.1"
    name = next((n for n, a in addresses.items() if a == own), loopback)
    return name, own


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def horovod_slots(layout: Layout) -> list[Any]:
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    hosts = ",".join(f"member-{m}:{layout.per_host}" for m in range(layout.members))
    return list(get_host_assignments(parse_hosts(hosts), layout.world_size))


def open_rendezvous(layout: Layout, backend: str, address: str) -> tuple[RendezvousEvent, Any]:
    """Member 0: start the rendezvous. Returns it and the server to stop."""
    server = None
    if backend == "horovod":
        from horovod.runner.http.http_server import RendezvousServer

        server = RendezvousServer(verbose=0)
        port = server.start()
        server.init(horovod_slots(layout))
    else:
        port = free_port(address)
    return RendezvousEvent(layout.gang_id, backend, address, port), server


def await_rendezvous(layout: Layout, stop: _Stop, source: int) -> RendezvousEvent:
    """Other members: member 0's rendezvous for this gang, as the agent writes it to `source`
    (the launcher's standard input) once the coordinator has passed it on."""
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_SECONDS
    pending = b""
    while True:
        if stop.requested:
            raise RendezvousFailed("stopped while waiting for the gang's rendezvous")
        if time.monotonic() > deadline:
            raise RendezvousFailed(
                f"member 0 of gang {layout.gang_id} reported no rendezvous in "
                f"{RENDEZVOUS_TIMEOUT_SECONDS:g} s (member 0's agent reports it to the "
                "coordinator, which passes it on to this agent)"
            )
        if not select.select([source], [], [], 0.2)[0]:
            continue
        chunk = os.read(source, 65536)
        if not chunk:  # the agent closed it: nothing more comes; wait out the deadline
            time.sleep(0.2)
            continue
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                event = parse_event(line.decode("utf-8", "replace"))
            except ValueError as exc:
                print(f"matrec launcher: ignored a malformed rendezvous: {exc}", file=sys.stderr)
                continue
            if isinstance(event, RendezvousEvent) and event.gang_id == layout.gang_id:
                return event
            print(
                f"matrec launcher: ignored {event} (not for gang {layout.gang_id})", file=sys.stderr
            )


def rank_environments(
    layout: Layout, rendezvous: RendezvousEvent, interface: str
) -> list[dict[str, str]]:
    """The environment of each of this host's ranks."""
    common = {
        "MATREC_WORLD_SIZE": str(layout.world_size),
        "MATREC_BACKEND": rendezvous.backend,
        "MATREC_COLLECTIVE_TIMEOUT": str(COLLECTIVE_TIMEOUT_SECONDS),
    }
    first = layout.member * layout.per_host
    if rendezvous.backend == "horovod":
        common |= {
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous.address,
            "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous.port),
            "HOROVOD_CONTROLLER": "gloo",
            "HOROVOD_CPU_OPERATIONS": "gloo",
            "HOROVOD_GLOO_IFACE": interface,
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(COLLECTIVE_TIMEOUT_SECONDS),
        }
        return [
            common
            | {
                "MATREC_RANK": str(slot.rank),
                "MATREC_LOCAL_RANK": str(slot.local_rank),
                "HOROVOD_HOSTNAME": slot.hostname,
                "HOROVOD_RANK": str(slot.rank),
                "HOROVOD_SIZE": str(slot.size),
                "HOROVOD_LOCAL_RANK": str(slot.local_rank),
                "HOROVOD_LOCAL_SIZE": str(slot.local_size),
                "HOROVOD_CROSS_RANK": str(slot.cross_rank),
                "HOROVOD_CROSS_SIZE": str(slot.cross_size),
            }
            for slot in horovod_slots(layout)[first : first + layout.per_host]
        ]
    common |= {
        "MASTER_ADDR": rendezvous.address,
        "MASTER_PORT": str(rendezvous.port),
        "GLOO_SOCKET_IFNAME": interface,
    }
    return [
        common | {"MATREC_RANK": str(first + r), "MATREC_LOCAL_RANK": str(r)}
        for r in range(layout.per_host)
    ]


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # The ranks got the same SIGTERM (one process group) and stop by themselves.
        self.requested = True


def _send(events: TextIO, event: WorkerEvent) -> None:
    events.write(encode_event(event) + "\n")
    events.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matrec.agent.launcher", description="Run one task as N worker ranks."
    )
    parser.add_argument("--task-file", required=True, type=Path)
    parser.add_argument("--events-fd", required=True, type=int)
    args = parser.parse_args(argv)
    die_with_agent()
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.handle)
    events = os.fdopen(args.events_fd, "w", buffering=1, encoding="utf-8")
    server = None
    try:
        task = WorkerTask.from_json(args.task_file.read_text(encoding="utf-8"))
        layout = layout_of(task)
        interface, address = network_address(task.config.get("network_interface"), layout.members)
        if layout.member == 0:
            backend, why = resolve_backend(str(task.config.get("backend", "auto")))
            rendezvous, server = open_rendezvous(layout, backend, address)
            if layout.members > 1:
                _send(events, rendezvous)  # the agent reports it to the coordinator
        else:
            rendezvous = await_rendezvous(layout, stop, sys.stdin.fileno())
            why = f"backend {rendezvous.backend}, chosen by member 0"
        where = f"member {layout.member} of {layout.members} hosts, " if layout.members > 1 else ""
        _send(
            events,
            LogEvent(
                text=f"{where}{layout.per_host} ranks on this host "
                f"(global ranks {layout.member * layout.per_host}.."
                f"{(layout.member + 1) * layout.per_host - 1} of {layout.world_size}); {why}; "
                f"interface {interface}"
            ),
        )
        rank_task = _rank_task_file(args.task_file, task, layout)
        code = _run_ranks(rank_task, events, rank_environments(layout, rendezvous, interface), stop)
        if code == EXIT_OK and layout.member != 0:
            _send(events, ResultEvent(result={}))  # the job's result comes from member 0
        return code
    except RendezvousFailed as exc:
        print(f"matrec launcher: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED if stop.requested else EXIT_FAILED
    except (OSError, ValueError, KeyError, LaunchError) as exc:
        print(f"matrec launcher: {exc}", file=sys.stderr)
        return EXIT_INVALID_TASK if isinstance(exc, LaunchError | ValueError) else EXIT_FAILED
    finally:
        if server is not None:
            server.stop()
        events.close()


def _rank_task_file(task_file: Path, task: WorkerTask, layout: Layout) -> Path:
    """The task as the ranks see it: every member works in the member-0 task's folder and
    resumes from its checkpoint."""
    if layout.members == 1:
        return task_file
    ranks_task = dataclasses.replace(
        task,
        artifact_dir=str(layout.primary_dir),
        resume_from=task.resume_from if layout.member == 0 else None,
    )
    path = task_file.with_name("rank-task.json")
    path.write_text(ranks_task.to_json())
    return path


def _run_ranks(
    task_file: Path, events: TextIO, environments: list[dict[str, str]], stop: _Stop
) -> int:
    ranks: list[subprocess.Popen[bytes]] = []
    # The agent gave the task its CPUs as a thread count; the ranks share them.
    per_rank = str(max(1, int(os.environ.get("OMP_NUM_THREADS", "1")) // len(environments)))
    threads = {"OMP_NUM_THREADS": per_rank, "MKL_NUM_THREADS": per_rank}
    with open(os.devnull, "w") as devnull:
        for extra in environments:
            fd = events.fileno() if extra["MATREC_RANK"] == "0" else devnull.fileno()
            env = os.environ | extra | {PARENT_PID_ENV: str(os.getpid())} | threads
            command = [sys.executable, "-m", "matrec.agent.worker", "--task-file", str(task_file)]
            ranks.append(
                subprocess.Popen(
                    [*command, "--events-fd", str(fd)],
                    env=env,
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                )
            )
        return _wait_for_ranks(ranks, stop)


def _wait_for_ranks(ranks: list[subprocess.Popen[bytes]], stop: _Stop) -> int:
    """Every rank's exit; the first failure stops the others."""
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [c for c in codes if c is not None and c not in (EXIT_OK, EXIT_PREEMPTED)]
        if failed:
            _stop_all(ranks)
            return failed[0] if failed[0] > 0 else EXIT_FAILED
        if all(c is not None for c in codes):
            return EXIT_PREEMPTED if EXIT_PREEMPTED in codes or stop.requested else EXIT_OK
        time.sleep(0.1)


def _stop_all(ranks: list[subprocess.Popen[bytes]]) -> None:
    for rank in ranks:
        if rank.poll() is None:
            rank.kill()  # a rank waiting in a collective would not react to SIGTERM
    for rank in ranks:
        rank.wait()


if __name__ == "__main__":
    sys.exit(main())
