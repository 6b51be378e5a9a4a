"""Where an SDK call runs: the one answer for every entry point of the SDK.

A coordinator given (the argument, else $MATREC_COORDINATOR, else the config file) means that
cluster: a `Client` to it. None means the embedded default: a `LocalCluster` (a coordinator and
agents as processes of this machine) started under a work folder, and a client to it. Either
way calls go over gRPC, so embedded and cluster behave alike.

>>> with open_session(None, Path("~/.matrec/al/cluster"), agents=1) as session:
...     session.client.list_agents()
...     session.embedded      # True: the cluster stops when the session closes

`transfer_learn` asks only `coordinator_address`: without a coordinator it trains in-process
(through `matrec.agent.in_process`), so it never starts an embedded cluster.
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from matrec.sdk.address import configured_address
from matrec.sdk.errors import MatrecError

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.local_cluster import LocalCluster


def coordinator_address(given: str | None) -> str | None:
    """`given`, else the configured coordinator; None: no coordinator (run embedded)."""
    return given or configured_address() or None


class Session:
    """A client, and the embedded cluster (None on a configured coordinator) that `close`
    stops. `address` is the coordinator's host:port either way."""

    def __init__(
        self, client: Client, cluster: LocalCluster | None = None, lock: IO[str] | None = None
    ) -> None:
        self.client = client
        self.cluster = cluster
        self.address = client.address if cluster is None else cluster.address
        self._lock = lock

    @property
    def embedded(self) -> bool:
        return self.cluster is not None

    def close(self) -> None:
        """Close the client; stop the embedded cluster (its files stay) and free its folder."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_session(
    coordinator: str | None,
    workdir: str | Path | None = None,
    *,
    agents: int = 1,
    token: str | None = None,
    exclusive: str | None = None,
    temp_prefix: str = "matrec-",
    **cluster_options: Any,
) -> Session:
    """A session on `coordinator` (else the configured one), or on an embedded cluster of
    `agents` agents started under `workdir` (default: a new temporary folder named
    `temp_prefix`..., kept).

    `cluster_options` go to `LocalCluster` (agent_cpus, agent_name_prefix, database_url, ...).
    `exclusive` names the caller (e.g. "EnhancedTrainingAPI") when only one at a time may use
    a workdir's embedded cluster: a lock file beside workdir (WORKDIR.lock) is held while the
    session is open, and a second one raises MatrecError naming the folder.
    """
    from matrec.sdk.client import Client
    from matrec.sdk.local_cluster import LocalCluster

    address = coordinator_address(coordinator)
    if address is not None:
        return Session(Client(address, token=token))
    folder = (
        Path(tempfile.mkdtemp(prefix=temp_prefix))
        if workdir is None
        else Path(workdir).expanduser().resolve()
    )
    lock = _lock(folder, exclusive) if exclusive is not None else None
    cluster = LocalCluster(folder, agents=agents, **cluster_options)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        if lock is not None:
            lock.close()
        raise
    return Session(cluster.client(), cluster, lock)


def _lock(workdir: Path, owner: str) -> IO[str]:
    """The held lock file of `workdir` (WORKDIR.lock); MatrecError when another holds it."""
    workdir.parent.mkdir(parents=True, exist_ok=True)
    lock = workdir.with_name(workdir.name + ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise MatrecError(
            f"another {owner} is using the embedded cluster in {workdir.parent}; close it, or "
            "give this one another base_dir"
        ) from None
    return lock
