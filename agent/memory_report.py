"""Workers that run out of host memory, reported as exactly that, with the numbers.

Two ways a worker dies of memory: an allocation fails (a MemoryError in Python, or the
address-space bound of setrlimit), and the worker exits with EXIT_OUT_OF_MEMORY after printing
`exhaustion_report()`; or the kernel's out-of-memory killer sends it SIGKILL, which the agent
recognises by the oom_kill count of its memory cgroup going up while the worker ran.

Torch-free: the agent daemon imports it.
"""

from __future__ import annotations

import resource
from pathlib import Path

import psutil

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def exhaustion_report() -> str:
    """The worker's peak memory, its address-space bound and the host's memory, in one line."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    bound = (
        "no address-space bound"
        if soft == resource.RLIM_INFINITY
        else (f"address-space bound (RLIMIT_AS) {soft >> 20} MiB")
    )
    return f"peak resident memory {peak_kib >> 10} MiB, {bound}, {host_memory()}"


def host_memory() -> str:
    host = psutil.virtual_memory()
    return f"host memory {host.total >> 20} MiB total, {host.available >> 20} MiB available"


def oom_kills(
    cgroup_file: Path = Path("/proc/self/cgroup"), root: Path = _CGROUP_ROOT
) -> int | None:
    """How many processes the kernel's out-of-memory killer has killed in this process's memory
    cgroup (v2: memory.events, v1: memory.oom_control); None where that cannot be read."""
    for folder, version in _memory_cgroups(cgroup_file, root):
        events = "memory.events" if version == 2 else "memory.oom_control"
        count = _oom_kill_count(folder / events)
        if count is not None:
            return count
    return None


def memory_cgroup_limit(
    cgroup_file: Path = Path("/proc/self/cgroup"), root: Path = _CGROUP_ROOT
) -> int | None:
    """This process's memory cgroup limit in bytes (v2: memory.max, v1: memory.limit_in_bytes);
    None when there is none or it cannot be read."""
    for folder, version in _memory_cgroups(cgroup_file, root):
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        try:
            text = (folder / name).read_text()
        except OSError:
            continue
        value = text.strip()
        # v2 writes "max"; v1 an unlimited group as a number near 2**63.
        return int(value) if value.isdigit() and int(value) < _UNLIMITED else None
    return None


_UNLIMITED = 1 << 62


def _memory_cgroups(cgroup_file: Path, root: Path) -> list[tuple[Path, int]]:
    """The folders of this process's memory cgroup, with the cgroup version of each, as
    /proc/self/cgroup names them."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return []
    found: list[tuple[Path, int]] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            found.append((root / relative, 2))
        elif "memory" in controllers.split(","):
            found.append((root / "memory" / relative, 1))
    return found


def _oom_kill_count(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def killed_by_oom_killer(
    before: int | None, after: int | None, limit: int | None = None
) -> str | None:
    """The failure reason for a worker that died of SIGKILL, when the cgroup's count says the
    out-of-memory killer struck while it ran; None otherwise. `limit`: the cgroup's memory
    limit in bytes, when it has one."""
    if before is None or after is None or after <= before:
        return None
    bound = f"memory cgroup limit {limit >> 20} MiB" if limit else "no memory cgroup limit"
    return (
        "out of memory: the worker was killed by the kernel's out-of-memory killer (SIGKILL; "
        f"{after - before} kill(s) in the agent's memory cgroup while it ran); {bound}, "
        f"{host_memory()}"
    )
