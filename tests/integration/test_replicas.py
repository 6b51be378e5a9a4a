"""Two coordinator processes on one PostgreSQL database, agents on each, 200 short tasks: every
task runs exactly once; then one study driven by both: every trial is created once."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from matrec.sdk import Client
from matrec.sdk.local_cluster import LocalCluster
from support.postgres import PostgresServer

pytestmark = pytest.mark.slow

TASKS = 200
AGENTS_PER_COORDINATOR = 3


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_two_coordinators_share_one_database_and_run_each_task_once(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database(f"replicas_{uuid.uuid4().hex[:8]}")
    extra: list[subprocess.Popen[bytes]] = []
    clients: list[Client] = []
    with LocalCluster(
        tmp_path / "a", agents=AGENTS_PER_COORDINATOR, agent_cpus=4, database_url=url
    ) as first:
        ready = tmp_path / "b.ready"
        logs = tmp_path / "logs-b"
        logs.mkdir()
        try:
            extra.append(
                start_process(
                    [
                        "matrec.coordinator.main", "--port", "0", "--ready-file", str(ready),
                        "--data-dir", str(tmp_path / "b"), f"--database-url={url}",
                        "--metrics-port", "0", "--artifact-root", str(first.artifact_root),
                    ],
                    logs / "coordinator.log",
                )
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while not (ready.exists() and ready.read_text()):
                assert time.monotonic() < deadline, (logs / "coordinator.log").read_text()
                time.sleep(0.1)
            second_address = ready.read_text()
            for i in range(AGENTS_PER_COORDINATOR):
                extra.append(
                    start_process(
                        [
                            "matrec.agent.main", "--coordinator", second_address,
                            "--name", f"b-agent-{i}", "--data-dir", str(tmp_path / f"b-agent-{i}"),
                            "--cpus", "4",
                        ],
                        logs / f"agent-{i}.log",
                    )
                )  # fmt: skip
            clients += [Client(first.address), Client(second_address)]
            deadline = time.monotonic() + 60
            while (
                len([a for a in clients[0].list_agents() if a.state == "connected"]) < 3
                or len([a for a in clients[1].list_agents() if a.state == "connected"]) < 3
            ):
                assert time.monotonic() < deadline, "agents did not connect"
                time.sleep(0.2)

            spec = {"kind": "diagnostic", "config": {"duration_seconds": 0.05}}
            job_ids = [clients[i % 2].submit_job(spec).id for i in range(TASKS)]
            finals = [clients[i % 2].wait(job_id, timeout=600) for i, job_id in enumerate(job_ids)]

            assert [j.state for j in finals] == ["succeeded"] * TASKS
            assert all(j.tasks[0].attempt == 1 for j in finals)
            assigned = Counter(e.task_id for j in finals for e in j.history if e.kind == "assigned")
            assert set(assigned.values()) == {1}
            # Both replicas handed out work.
            agents = {j.tasks[0].agent_id for j in finals}
            names = {a.id: a.name for a in clients[0].list_agents()}
            assert any(names[a].startswith("b-agent") for a in agents)
            assert any(names[a].startswith("agent") for a in agents)
            # And every task's worker was started exactly once, on whichever agent.
            started: Counter[str] = Counter()
            for log in [*first.logs_dir.glob("*.log"), *logs.glob("agent-*.log")]:
                started.update(
                    re.findall(r"task (\S+) attempt \d+ started as pid", log.read_text())
                )
            assert len(started) == TASKS and set(started.values()) == {1}

            # Both replicas drive the same study (each asks for trials on its passes): every
            # trial number is stored once, with one job, and the study ends on both.
            study = clients[0].create_study(
                {
                    "trial": {"kind": "diagnostic", "config": {"duration_seconds": 0.3}},
                    "search_space": {"score": {"type": "float", "min": 0.0, "max": 1.0}},
                    "max_trials": 16,
                    "max_parallel": 6,
                }
            )
            final = clients[1].wait_study(study.id, timeout=120)
            assert final.state == "completed"
            assert [t.number for t in final.trials] == list(range(16))
            assert {t.state for t in final.trials} == {"completed"}
            trial_jobs = [
                j
                for j in clients[0].list_jobs(limit=1000)
                if j.spec.labels.get("study") == study.id
            ]
            assert sorted(j.id for j in trial_jobs) == sorted(t.job_id for t in final.trials)
        finally:
            for client in clients:
                client.close()
            for process in extra:
                process.terminate()
            for process in extra:
                process.wait(timeout=30)
