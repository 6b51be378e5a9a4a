"""`matrec-ctl top` against a real coordinator and agent with a running job: the numbers shown
are the stored ones, and the live view in a real terminal (tmux) updates while the job runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk.ctl.top_view import render_top, summary_line
from matrec.sdk.local_cluster import LocalCluster
from rich.console import Console
from support.cluster_jobs import wait_until
from support.tools import require_tool

DIAGNOSTIC = {
    "kind": "diagnostic",
    "name": "top-probe",
    "config": {"duration_seconds": 20, "steps": 40},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("top"), agents=1, agent_cpus=2) as running:
        yield running


def test_snapshot_shows_the_stored_numbers(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.submit_job(DIAGNOSTIC)
        wait_until(lambda: client.get_job(job.id).state == "running", 30, "the job to run")
        snapshot = next(iter(client.watch_cluster(interval=0.5)))
        agents = client.list_agents()
        stored = client.get_job(job.id)
        console = Console(record=True, width=160, color_system=None)
        console.print(render_top(snapshot))
        text = console.export_text()
        client.cancel_job(job.id)

    assert [a.id for a in snapshot.active_jobs] == [job.id]
    assert snapshot.jobs_by_state.get("running") == 1
    assert snapshot.queue_depth == 0
    agent = agents[0]
    assert snapshot.agents[0].id == agent.id and snapshot.agents[0].usage is not None
    # The rendered view carries exactly those numbers.
    assert job.id in text and "top-probe" in text and "diagnostic" in text
    assert agent.name in text
    assert f"{agent.free.cpus:g}/{agent.total.cpus:g}" in text  # 1/2 CPUs free
    assert f"{stored.tasks[0].attempt}/{stored.tasks[0].max_attempts}" in text
    assert "agents 1/1 connected · queue 0" in summary_line(snapshot)


def test_live_view_updates_in_a_terminal(cluster: LocalCluster, tmp_path: Path) -> None:
    require_tool("tmux")
    session = f"matrec-top-{time.monotonic_ns()}"
    command = (
        f"{sys.executable} -c 'from matrec.sdk.ctl.app import main; main()' "
        f"-c {cluster.address} top --interval 0.5"
    )
    with cluster.client() as client:
        job = client.submit_job(DIAGNOSTIC)
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "40", command],
            check=True,
        )
        try:
            screens: list[str] = []
            deadline = time.monotonic() + 30
            while len(set(screens)) < 3 and time.monotonic() < deadline:
                screen = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", session],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                if job.id in screen:
                    screens.append(screen)
                time.sleep(0.7)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
            client.cancel_job(job.id)
    distinct = list(dict.fromkeys(screens))
    assert len(distinct) >= 3, f"the view did not update: {distinct[-1:]}"
    assert all(cluster.agent_name(0) in s and "running" in s for s in distinct)
