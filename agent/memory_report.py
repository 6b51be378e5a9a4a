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
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            candidate = root / relative / "memory.events"
        elif "memory" in controllers.split(","):
            candidate = root / "memory" / relative / "memory.oom_control"
        else:
            continue
        count = _oom_kill_count(candidate)
        if count is not None:
            return count
    return None


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


def killed_by_oom_killer(before: int | None, after: int | None) -> str | None:
    """The failure reason for a worker that died of SIGKILL, when the cgroup's count says the
    out-of-memory killer struck while it ran; None otherwise."""
    if before is None or after is None or after <= before:
        return None
    return (
        "out of memory: the worker was killed by the kernel's out-of-memory killer (SIGKILL; "
        f"{after - before} kill(s) in the agent's memory cgroup while it ran); {host_memory()}"
    )
