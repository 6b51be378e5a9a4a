"""A memory cgroup of its own for processes a test starts, so that the kernel's out-of-memory
killer can be made to strike for real. Where the machine gives no writable memory cgroup the
test is skipped with the error that said so."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")


class MemoryCgroup:
    """A child of this process's memory cgroup (cgroup v1 or v2) with a memory limit."""

    def __init__(self, folder: Path, version: int) -> None:
        self.folder, self.version = folder, version

    def add(self, pid: int) -> None:
        """Move a process in; what it starts afterwards is in as well."""
        (self.folder / "cgroup.procs").write_text(f"{pid}\n")

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.folder / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill line in {self.folder / name}")


def _own_memory_cgroup() -> tuple[Path, int]:
    v2: Path | None = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            return ROOT / "memory" / path.lstrip("/"), 1
        if hierarchy == "0" and controllers == "":
            v2 = ROOT / path.lstrip("/")
    if v2 is not None and "memory" in (v2 / "cgroup.controllers").read_text().split():
        return v2, 2
    raise OSError("this process is in no memory cgroup (/proc/self/cgroup)")


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A new memory cgroup limited to `limit_bytes`; removed afterwards (what is still in it
    goes back to the parent first). Skips the test where none can be made."""
    try:
        parent, version = _own_memory_cgroup()
        folder = parent / f"matrec-test-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
    except OSError as exc:
        pytest.skip(f"no memory cgroup can be created here: {exc}")
    try:
        limit_file = folder / ("memory.max" if version == 2 else "memory.limit_in_bytes")
        try:
            limit_file.write_text(f"{limit_bytes}\n")
        except OSError as exc:
            pytest.skip(f"cannot set {limit_file}: {exc}")
        yield MemoryCgroup(folder, version)
    finally:
        for pid in (folder / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # it exited meanwhile
                (parent / "cgroup.procs").write_text(f"{pid}\n")
        folder.rmdir()
