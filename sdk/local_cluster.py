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
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from matrec.sdk.client import Client
from matrec.sdk.errors import MatrecError
from matrec.sdk.types import Agent

COORDINATOR_MODULE = "matrec.coordinator.main"
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
    `agent_gpus` None lets each agent detect its GPUs. `allow_scripts`: the agents run `script`
    tasks (the embedded default: one user's own machine); agents started later follow the
    attribute's value then.
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
        allow_scripts: bool = True,
    ) -> None:
        self.workdir = workdir.resolve()
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
        self._port = port
        self._address: str | None = None
        self._coordinator: _Process | None = None
        self._agents: dict[int, _Process] = {}

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
        """Stop the agents (SIGTERM, SIGKILL after `stop_timeout`), then the coordinator."""
        agents, self._agents = list(self._agents.values()), {}
        for process in agents:
            process.terminate()
        for process in agents:
            process.wait_or_kill(self.stop_timeout)
        self.stop_coordinator()

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

    def stop_coordinator(self) -> None:
        if self._coordinator is not None:
            self._coordinator.terminate()
            self._coordinator.wait_or_kill(self.stop_timeout)
            self._coordinator = None

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
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = (self.logs_dir / f"{name}.log").open("ab")
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order.
            start_new_session=True,
        )
        return _Process(name, popen, log)


def _read_ready(path: Path) -> str:
    """The "host:port" in a ready file; "" while the file is missing or not yet complete."""
    try:
        address = path.read_text().strip()
    except FileNotFoundError:
        return ""
    host, _, port = address.rpartition(":")
    return address if host and port.isdigit() else ""
