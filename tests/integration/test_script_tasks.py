"""The `script` task: existing Horovod and torch.distributed programs, unchanged, run by the
agent's launcher as ranks on one host or over two agents; their output in the task log and
`matrec-metric` lines as metrics; a failing program fails the job with its output."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from matrec.sdk.local_cluster import LocalCluster
from support.cluster_jobs import job_log_lines

HOROVOD_PROGRAM = """
import json, sys
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum).item()
print(f"rank {hvd.rank()} of {hvd.size()}: sum {total}")
if hvd.rank() == 0:
    print("matrec-metric " + json.dumps({"step": 1, "sum": total, "size": hvd.size()}))
"""

TORCH_PROGRAM = """
import json, os
import torch
import torch.distributed as dist

dist.init_process_group("gloo")  # env:// as torchrun sets it up
tensor = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(tensor)
print(f"rank {dist.get_rank()} of {dist.get_world_size()} (local {os.environ['LOCAL_RANK']})")
if dist.get_rank() == 0:
    print("matrec-metric " + json.dumps({"step": 1, "sum": tensor.item(),
                                          "size": dist.get_world_size()}))
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with LocalCluster(tmp_path_factory.mktemp("scripts") / "cluster", agents=2) as running:
        yield running


def program(tmp_path: Path, text: str) -> str:
    path = tmp_path / "train.py"
    path.write_text(text)
    return str(path)


def run_job(cluster: LocalCluster, config: dict[str, Any]) -> tuple[Any, list[str], dict]:
    with cluster.client() as client:
        job = client.wait(client.submit_job({"kind": "script", "config": config}).id, 180)
        lines = job_log_lines(client, job.id)
        metrics = {m.key: m.value for m in client.job_metrics(job.id)}
    return job, lines, metrics


@pytest.mark.parametrize(
    ("backend", "text", "layout"),
    [
        ("horovod", HOROVOD_PROGRAM, {"workers_per_host": 2}),
        ("torch", TORCH_PROGRAM, {"workers_per_host": 2}),
        ("torch", TORCH_PROGRAM, {"hosts": 2, "network_interface": "lo"}),
        ("horovod", HOROVOD_PROGRAM, {"hosts": 2, "network_interface": "lo"}),
    ],
)
def test_an_existing_distributed_program_runs_unchanged(
    cluster: LocalCluster, tmp_path: Path, backend: str, text: str, layout: dict[str, Any]
) -> None:
    job, lines, metrics = run_job(
        cluster, {"command": ["python", program(tmp_path, text)], "backend": backend, **layout}
    )
    assert job.state == "succeeded", job.error
    assert metrics == {"sum": 3.0, "size": 2.0}  # ranks 0 and 1 took part: 1 + 2
    assert any(line.startswith("rank 0 of 2") for line in lines), lines
    if "hosts" in layout:
        assert len({t.agent_id for t in job.tasks}) == 2


def test_a_failing_program_fails_the_job_with_its_output(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    path = program(tmp_path, "import sys\nprint('loading data')\nsys.exit('no such dataset')\n")
    with cluster.client() as client:
        spec = {"kind": "script", "config": {"command": ["python", path]}, "max_attempts": 1}
        job = client.wait(client.submit_job(spec).id, 120)
    assert job.state == "failed"
    assert "exited with code 1" in job.error and "no such dataset" in job.error


def test_a_script_spec_is_checked(cluster: LocalCluster) -> None:
    from matrec.sdk import InvalidSpecError

    with cluster.client() as client, pytest.raises(InvalidSpecError) as raised:
        client.submit_job({"kind": "script", "config": {"command": []}})
    assert raised.value.field == "config.command"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching a program's user needs a root agent")
def test_a_script_runs_as_the_configured_user_in_its_own_folder(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    command = (
        "echo uid=$(id -u) groups=$(id -G) home=$HOME; touch made-here; "
        f"touch {private}/x 2>/dev/null && echo wrote-private || echo private-refused"
    )
    workdir = tmp_path_factory.mktemp("script-user") / "cluster"
    with LocalCluster(workdir, agents=1, agent_args=["--script-user", "nobody"]) as cluster:
        job, lines, _ = run_job(cluster, {"command": ["sh", "-c", command]})
    assert job.state == "succeeded", job.error
    assert f"uid={nobody.pw_uid} groups={nobody.pw_gid} home={nobody.pw_dir}" in lines
    assert "private-refused" in lines and "wrote-private" not in lines
    assert not (private / "x").exists()
    made = Path(job.result["working_dir"]) / "made-here"
    assert made.stat().st_uid == nobody.pw_uid  # its own folder, which it could write


def test_an_agent_refuses_a_script_user_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    from matrec.agent.settings import parse_settings

    with pytest.raises(SystemExit):
        parse_settings(["--script-user", "no-such-user-matrec"])
    assert (
        "--script-user 'no-such-user-matrec': no such user on this host" in capsys.readouterr().err
    )
