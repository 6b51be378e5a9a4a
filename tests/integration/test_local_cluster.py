"""LocalCluster's controls on real processes: kill an agent, restart the coordinator in place."""

from __future__ import annotations

from pathlib import Path

import psutil
from matrec.sdk.local_cluster import LocalCluster


def test_kill_agent_and_restart_coordinator(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, agents=2) as cluster:
        address = cluster.address
        assert sorted(a.name for a in cluster.wait_for_agents()) == ["agent-0", "agent-1"]

        pid = cluster.agent_pid(0)
        cluster.kill_agent(0)
        assert not psutil.pid_exists(pid)
        assert [a.name for a in cluster.wait_for_agents()] == ["agent-1"]

        cluster.restart_coordinator()
        assert cluster.address == address  # same port, so agents find it again
        assert [a.name for a in cluster.wait_for_agents()] == ["agent-1"]

        cluster.start_agent(0)
        assert sorted(a.name for a in cluster.wait_for_agents()) == ["agent-0", "agent-1"]

        cluster.restart_coordinator(kill=True)
        assert len(cluster.wait_for_agents()) == 2
    assert (tmp_path / "logs" / "agent-0.log").read_text().count("starting agent-0") == 2
