"""A coordinator and agents as local processes: for `matrec-ctl demo`, tests and benchmarks.

Everything lives under one work directory::

    WORKDIR/coordinator/      the coordinator's data dir (its SQLite database)
    WORKDIR/artifacts/        artifact root (checkpoints, models)
    WORKDIR/agent-<i>/        each agent's data dir
    WORKDIR/logs/<name>.log   each process's stdout and stderr

>>> with LocalCluster(Path("/tmp/mc"), agents=2) as cluster:
...     with cluster.client() as client:
...         job = client.submit_job(spec)
...     cluster.kill_agent(0)           # the host vanishes: agent and workers, SIGKILL
...     cluster.restart_coordinator()   # same port, same data dir

SDK calls still go over gRPC, so a local cluster behaves like a real one.

The cluster ends with the process that started it, however that process ends. Its children run
in their own sessions (a Ctrl-C reaches only the starter, which stops them in order) and watch a
pipe whose write end only the starter holds (`matrec.common.lifetime`): once it closes, after a
SIGKILL too, they stop within seconds. While the cluster runs, SIGTERM and SIGHUP to the starter
raise SystemExit in its main thread, so its `with` blocks and `finally` clauses stop the cluster
gracefully; a second such signal ends the starter at once, and the pipe then stops the children.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from matrec.common.paths import absolute_path
from matrec.sdk.client import Client
from matrec.sdk.errors import MatrecError
from matrec.sdk.types import Agent

COORDINATOR_MODULE = "matrec.coordinator.main"
#: Seconds each process gets to stop once a SIGTERM or SIGHUP ended this one: whoever sent it
#: (a closed terminal, systemd, `kill`) expects it gone soon, and the whole cluster within 10 s.
SIGNALLED_STOP_TIMEOUT = 4.0
AGENT_MODULE = "matrec.agent.main"


class ClusterStartError(MatrecError):
    """A process of the local cluster did not come up. `log_tail` holds its last log lines."""

    def __init__(self, message: str, log_path: Path) -> None:
        super().__init__(message)
        self.log_path = log_path
        self.log_tail = tail(log_path)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file ("" if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        # Each child leads its own process group, so the group also holds its worker processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait for the exit; SIGKILL the whole group if it takes longer than `timeout`."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()
        self.log.close()

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        self.log.close()


class LocalCluster:
    """One coordinator and `agents` agents, each a subprocess of the current Python.

    `coordinator_args` and `agent_args` are appended to the command lines (e.g.
    ``["--lease-ttl", "3"]``). `port` 0 lets the coordinator pick a free port; it keeps that
    port across `restart_coordinator`. `database_url` "" means SQLite in WORKDIR/coordinator.
    `agent_gpus` None lets each agent detect its GPUs.

    `owns_jobs`: the jobs and studies belong to the process that started the cluster, as in
    `matrec-ctl demo` and the unified API's embedded default, where nobody else can collect
    them. Those still unfinished are cancelled when the cluster stops, and, at its first start,
    those a previous starter left behind (it was killed), instead of resuming ahead of new work.
    Only for a database of the cluster's own: every unfinished job in it is cancelled.

    `allow_scripts`: the agents run `script` tasks (the embedded default: one user's own
    machine); agents started later follow the attribute's value then.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        agents: int = 2,
        agent_cpus: float = 1.0,
        agent_gpus: int | None = None,
        agent_name_prefix: str = "agent",
        port: int = 0,
        database_url: str = "",
        coordinator_args: Sequence[str] = (),
        agent_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        owns_jobs: bool = False,
        allow_scripts: bool = True,
    ) -> None:
        self.workdir = absolute_path(workdir)
        self.agent_count = agents
        self.agent_cpus = agent_cpus
        self.agent_gpus = agent_gpus
        self.agent_name_prefix = agent_name_prefix
        self.coordinator_args = list(coordinator_args)
        self.agent_args = list(agent_args)
        self.allow_scripts = allow_scripts
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.database_url = database_url
        self.owns_jobs = owns_jobs
        self._left_work_cancelled = False
        self._port = port
        self._address: str | None = None
        self._coordinator: _Process | None = None
        self._agents: dict[int, _Process] = {}
        self._lifeline: Lifeline | None = None

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def artifact_root(self) -> Path:
        return self.workdir / "artifacts"

    @property
    def coordinator_log(self) -> Path:
        return self.logs_dir / "coordinator.log"

    @property
    def address(self) -> str:
        """host:port of the running coordinator."""
        if self._address is None:
            raise MatrecError("the local coordinator has not been started")
        return self._address

    def agent_name(self, index: int) -> str:
        return f"{self.agent_name_prefix}-{index}"

    def agent_log(self, index: int) -> Path:
        return self.logs_dir / f"{self.agent_name(index)}.log"

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.address, timeout=timeout)

    # -- whole cluster --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the coordinator, then the agents; return once all agents are connected."""
        self.start_coordinator()
        for index in range(self.agent_count):
            self.start_agent(index)
        if self.agent_count:
            self.wait_for_agents()

    def stop(self) -> None:
        """Stop the agents (SIGTERM, SIGKILL after `stop_timeout`), then the coordinator.
        After a SIGTERM or SIGHUP to this process, each gets at most SIGNALLED_STOP_TIMEOUT."""
        if self.owns_jobs and self._coordinator is not None and self._coordinator.alive:
            with contextlib.suppress(MatrecError):  # the stop goes on regardless
                self._cancel_unfinished("the process that started this embedded cluster ended")
        agents, self._agents = list(self._agents.values()), {}
        for process in agents:
            process.terminate()
        for process in agents:
            process.wait_or_kill(self._stop_timeout())
        self.stop_coordinator()
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None
            _release_signals()
            atexit.unregister(self.stop)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- coordinator ----------------------------------------------------------------------------

    def start_coordinator(self) -> None:
        """Start the coordinator and wait until it serves (its ready file names its address)."""
        if self._coordinator is not None and self._coordinator.alive:
            raise MatrecError("the local coordinator is already running")
        ready_file = self.workdir / "coordinator.ready"
        ready_file.unlink(missing_ok=True)
        args = [
            "--host", "127.0.0.1",
            "--port", str(self._port),
            "--ready-file", str(ready_file),
            "--data-dir", str(self.workdir / "coordinator"),
            # Explicit, so that a MATREC_DATABASE_URL in the environment cannot redirect it.
            f"--database-url={self.database_url}",
            "--artifact-root", str(self.artifact_root),
            "--metrics-port", "0",
            *self.coordinator_args,
        ]  # fmt: skip
        process = self._spawn("coordinator", COORDINATOR_MODULE, args)
        self._coordinator = process
        deadline = time.monotonic() + self.start_timeout
        while not _read_ready(ready_file):
            if not process.alive:
                raise ClusterStartError(
                    f"the coordinator exited with code {process.popen.returncode} while starting",
                    self.coordinator_log,
                )
            if time.monotonic() > deadline:
                process.kill()
                raise ClusterStartError(
                    f"the coordinator did not become ready within {self.start_timeout:g} s",
                    self.coordinator_log,
                )
            time.sleep(0.05)
        self._address = _read_ready(ready_file)
        self._port = int(self._address.rsplit(":", 1)[1])
        if self.owns_jobs and not self._left_work_cancelled:
            self._left_work_cancelled = True
            self._cancel_unfinished(
                "left unfinished by an earlier process that started this embedded cluster"
            )

    def _cancel_unfinished(self, reason: str) -> None:
        """Cancel the studies and jobs not finished yet (see `owns_jobs`)."""
        with self.client(timeout=5.0) as client:
            for study in client.list_studies(limit=10_000):
                if not study.finished:
                    with contextlib.suppress(MatrecError):  # it finished meanwhile
                        client.cancel_study(study.id, reason)
            for job in client.list_jobs(["queued", "running"], limit=10_000):
                with contextlib.suppress(MatrecError):
                    client.cancel_job(job.id, reason)

    def stop_coordinator(self) -> None:
        if self._coordinator is not None:
            self._coordinator.terminate()
            self._coordinator.wait_or_kill(self._stop_timeout())
            self._coordinator = None

    def _stop_timeout(self) -> float:
        return min(self.stop_timeout, SIGNALLED_STOP_TIMEOUT) if _signalled else self.stop_timeout

    def restart_coordinator(self, *, kill: bool = False) -> None:
        """Stop the coordinator (SIGKILL if `kill`) and start it again on the same port and data."""
        if kill and self._coordinator is not None:
            self._coordinator.kill()
            self._coordinator = None
        self.stop_coordinator()
        self.start_coordinator()

    # -- agents ---------------------------------------------------------------------------------

    def start_agent(self, index: int) -> None:
        """Start agent `index` (again, after a kill: same name, same data dir)."""
        current = self._agents.get(index)
        if current is not None and current.alive:
            raise MatrecError(f"agent {self.agent_name(index)} is already running")
        args = [
            "--coordinator", self.address,
            "--name", self.agent_name(index),
            "--data-dir", str(self.workdir / f"agent-{index}"),
            "--cpus", f"{self.agent_cpus:g}",
        ]  # fmt: skip
        if self.agent_gpus is not None:
            args += ["--gpus", str(self.agent_gpus)]
        if self.allow_scripts:
            args.append("--allow-scripts")
        args += self.agent_args
        self._agents[index] = self._spawn(self.agent_name(index), AGENT_MODULE, args)

    def agent_pid(self, index: int) -> int:
        return self._agents[index].popen.pid

    def kill_agent(self, index: int) -> None:
        """SIGKILL agent `index` and its workers, as if its host vanished; wait for it to die."""
        self._agents.pop(index).kill()

    def stop_agent(self, index: int) -> None:
        """Stop agent `index` gracefully (SIGTERM; SIGKILL after `stop_timeout`)."""
        process = self._agents.pop(index)
        process.terminate()
        process.wait_or_kill(self.stop_timeout)

    def wait_for_agents(
        self, count: int | None = None, timeout: float | None = None
    ) -> list[Agent]:
        """Wait until `count` (default: all running) of this cluster's agents are connected."""
        wanted = len(self._agents) if count is None else count
        names = {self.agent_name(index): index for index in self._agents}
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        with self.client(timeout=5.0) as client:
            while True:
                connected = [
                    agent
                    for agent in client.list_agents()
                    if agent.name in names and agent.state == "connected"
                ]
                if len(connected) >= wanted:
                    return connected
                for index, process in self._agents.items():
                    if not process.alive:
                        raise ClusterStartError(
                            f"agent {self.agent_name(index)} exited with code "
                            f"{process.popen.returncode}",
                            self.agent_log(index),
                        )
                if time.monotonic() > deadline:
                    missing = [name for name in names if name not in {a.name for a in connected}]
                    raise ClusterStartError(
                        f"{len(connected)} of {wanted} agents connected within the timeout; "
                        f"not connected: {', '.join(missing) or '-'}",
                        self.agent_log(names[missing[0]]) if missing else self.coordinator_log,
                    )
                time.sleep(0.2)

    # -- plumbing -------------------------------------------------------------------------------

    def _spawn(self, name: str, module: str, args: list[str]) -> _Process:
        if self._lifeline is None:
            self._lifeline = Lifeline()
            _trap_signals()
            atexit.register(self.stop)  # a starter that forgot to stop us, ending normally
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = (self.logs_dir / f"{name}.log").open("ab")
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args, *self._lifeline.arguments()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            pass_fds=self._lifeline.pass_fds,
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order.
            start_new_session=True,
        )
        return _Process(name, popen, log)


class Lifeline:
    """What ties a coordinator or agent to the process that starts it (see the module's text):
    a pipe this process alone holds the write end of; `arguments()` and `pass_fds` go to each
    child's command line and Popen."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # neither end is inherited unless passed

    @property
    def pass_fds(self) -> tuple[int]:
        return (self.read_fd,)

    def arguments(self) -> list[str]:
        arguments = ["--exit-with-parent-fd", str(self.read_fd)]
        if threading.current_thread() is threading.main_thread():
            # The kernel's death signal follows the starting thread; only the main thread
            # lives as long as this process.
            arguments += ["--exit-with-parent-pid", str(os.getpid())]
        return arguments

    def close(self) -> None:
        """Close both ends: children still running see their parent gone."""
        os.close(self.read_fd)
        os.close(self.write_fd)


#: Signals that end a process at once by default; while a cluster runs they raise SystemExit.
_TRAPPED = (signal.SIGTERM, signal.SIGHUP)
_trap_lock = threading.Lock()
_trap_holders = 0
_signalled = False


def _exit_on_signal(signum: int, frame: object) -> None:
    global _signalled
    _signalled = True
    for sig in _TRAPPED:  # a second signal ends the process at once
        signal.signal(sig, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _trap_signals() -> None:
    """While any cluster of this process runs, SIGTERM and SIGHUP raise SystemExit in the main
    thread (where they are still at their default, which would end the process without stopping
    the cluster in order)."""
    global _trap_holders
    with _trap_lock:
        _trap_holders += 1
        if _trap_holders > 1 or threading.current_thread() is not threading.main_thread():
            return
        for sig in _TRAPPED:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _exit_on_signal)


def _release_signals() -> None:
    """Undo `_trap_signals` once the last cluster of this process has stopped."""
    global _trap_holders
    with _trap_lock:
        _trap_holders -= 1
        if _trap_holders or threading.current_thread() is not threading.main_thread():
            return
        for sig in _TRAPPED:
            if signal.getsignal(sig) is _exit_on_signal:
                signal.signal(sig, signal.SIG_DFL)


def _read_ready(path: Path) -> str:
    """The "host:port" in a ready file; "" while the file is missing or not yet complete."""
    try:
        address = path.read_text().strip()
    except FileNotFoundError:
        return ""
    host, _, port = address.rpartition(":")
    return address if host and port.isdigit() else ""
