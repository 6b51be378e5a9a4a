"""Launcher of a distributed task on one host: N worker ranks, no SSH, no horovodrun.

    python -m matrec.agent.launcher --task-file PATH --events-fd FD

The agent starts this instead of a worker when a finetune task asks for `workers_per_host > 1`.
It picks the backend (`auto`: Horovod when it imports, else torch.distributed, saying why in
the task log), sets up the rendezvous (Horovod's Gloo rendezvous server in this process, or a
free TCP port for torch.distributed), and starts the ranks as `python -m matrec.agent.worker`
with the environment each one needs. Rank 0 writes the task's events to FD; the others report
nothing. If a rank fails, the others are stopped at once (no rank hangs in a collective) and the
launcher exits with the failing rank's code; SIGTERM reaches every rank (one process group),
which stop together after the same step, and the launcher exits with EXIT_PREEMPTED.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from matrec.agent.worker import die_with_agent
from matrec.agent.worker_protocol import (
    EXIT_FAILED,
    EXIT_INVALID_TASK,
    EXIT_OK,
    EXIT_PREEMPTED,
    PARENT_PID_ENV,
    LogEvent,
    WorkerTask,
    encode_event,
)

STOP_GRACE_SECONDS = 10.0


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
        raise RuntimeError(f"backend horovod was requested but Horovod is unavailable: {reason}")
    return "torch", f"Horovod unavailable ({reason}); backend torch.distributed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environments(size: int, backend: str) -> tuple[list[dict[str, str]], Any]:
    """Each rank's environment, and the rendezvous server to stop afterwards (or None)."""
    common = {"MATREC_WORLD_SIZE": str(size), "MATREC_BACKEND": backend}
    server = None
    if backend == "horovod":
        from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
        from horovod.runner.http.http_server import RendezvousServer

        slots = get_host_assignments(parse_hosts(f"localhost:{size}"), size)
        server = RendezvousServer(verbose=0)
        port = server.start()
        server.init(slots)
        common |= {
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1",
            "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
            "HOROVOD_CONTROLLER": "gloo",
            "HOROVOD_CPU_OPERATIONS": "gloo",
            "HOROVOD_GLOO_IFACE": "lo",
        }
        environments = [
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
            for slot in slots
        ]
        return environments, server
    common |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    environments = [
        common | {"MATREC_RANK": str(r), "MATREC_LOCAL_RANK": str(r), "RANK": str(r)}
        for r in range(size)
    ]
    return environments, server


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # The ranks got the same SIGTERM (one process group) and stop by themselves.
        self.requested = True


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
    try:
        config = WorkerTask.from_json(args.task_file.read_text(encoding="utf-8")).config
        size = int(config.get("workers_per_host", 1))
        backend, why = resolve_backend(str(config.get("backend", "auto")))
    except (OSError, ValueError, KeyError) as exc:
        print(f"matrec launcher: invalid task file {args.task_file}: {exc}", file=sys.stderr)
        return EXIT_INVALID_TASK
    except RuntimeError as exc:
        print(f"matrec launcher: {exc}", file=sys.stderr)
        return EXIT_INVALID_TASK
    events.write(encode_event(LogEvent(text=f"{size} ranks on this host; {why}")) + "\n")
    environments, server = rank_environments(size, backend)
    try:
        return _run_ranks(args.task_file, events, environments, stop)
    finally:
        if server is not None:
            server.stop()
        events.close()


def _run_ranks(
    task_file: Path, events: Any, environments: list[dict[str, str]], stop: _Stop
) -> int:
    ranks: list[subprocess.Popen[bytes]] = []
    # The agent gave the task its CPUs as a thread count; the ranks share them.
    per_rank = str(max(1, int(os.environ.get("OMP_NUM_THREADS", "1")) // len(environments)))
    threads = {"OMP_NUM_THREADS": per_rank, "MKL_NUM_THREADS": per_rank}
    with open(os.devnull, "w") as devnull:
        for rank, extra in enumerate(environments):
            fd = events.fileno() if rank == 0 else devnull.fileno()
            env = os.environ | extra | {PARENT_PID_ENV: str(os.getpid())} | threads
            ranks.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "matrec.agent.worker",
                        "--task-file",
                        str(task_file),
                        "--events-fd",
                        str(fd),
                    ],
                    env=env,
                    pass_fds=(fd,),
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
