"""How the agent recognises a worker the kernel's out-of-memory killer took (memory_report.py),
on cgroup files laid out as cgroup v1 and v2 write them."""

from __future__ import annotations

from pathlib import Path

import pytest
from matrec.agent.memory_report import killed_by_oom_killer, memory_cgroup_limit, oom_kills


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_memory_events_count_oom_kills(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/user.slice/agent.service\n")
    write(
        tmp_path / "cg/user.slice/agent.service/memory.events",
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    assert oom_kills(tmp_path / "proc", tmp_path / "cg") == 2


def test_v1_memory_oom_control_counts_oom_kills(tmp_path: Path) -> None:
    write(tmp_path / "proc", "5:devices:/\n4:memory:/process_api/abc\n0::/\n")
    write(
        tmp_path / "cg/memory/process_api/abc/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n",
    )
    assert oom_kills(tmp_path / "proc", tmp_path / "cg") == 7


def test_no_readable_cgroup_says_none(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/nowhere\n")
    assert oom_kills(tmp_path / "proc", tmp_path / "cg") is None
    assert oom_kills(tmp_path / "missing", tmp_path / "cg") is None


@pytest.mark.parametrize(("before", "after"), [(None, 3), (3, None), (3, 3)])
def test_sigkill_without_a_new_oom_kill_is_not_called_out_of_memory(
    before: int | None, after: int | None
) -> None:
    assert killed_by_oom_killer(before, after) is None


def test_a_new_oom_kill_is_reported_with_the_host_memory() -> None:
    reason = killed_by_oom_killer(3, 4)
    assert reason is not None
    assert reason.startswith("out of memory: the worker was killed by the kernel's out-of-memory")
    assert "1 kill(s)" in reason and "MiB available" in reason
    assert "no memory cgroup limit" in reason
    limited = killed_by_oom_killer(3, 4, 256 << 20)
    assert limited is not None and "memory cgroup limit 256 MiB" in limited


def test_the_memory_cgroup_limit_is_read_as_v1_and_v2_write_it(tmp_path: Path) -> None:
    write(tmp_path / "v2", "0::/agent.service\n")
    write(tmp_path / "cg/agent.service/memory.max", "268435456\n")
    assert memory_cgroup_limit(tmp_path / "v2", tmp_path / "cg") == 256 << 20
    write(tmp_path / "cg/agent.service/memory.max", "max\n")
    assert memory_cgroup_limit(tmp_path / "v2", tmp_path / "cg") is None
    write(tmp_path / "v1", "4:memory:/process_api/abc\n0::/\n")
    write(tmp_path / "cg/memory/process_api/abc/memory.limit_in_bytes", "104857600\n")
    assert memory_cgroup_limit(tmp_path / "v1", tmp_path / "cg") == 100 << 20
    write(tmp_path / "cg/memory/process_api/abc/memory.limit_in_bytes", "9223372036854771712\n")
    assert memory_cgroup_limit(tmp_path / "v1", tmp_path / "cg") is None
