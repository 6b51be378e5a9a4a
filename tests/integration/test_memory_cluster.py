"""Out-of-memory recovery through a real coordinator and agent: the agent's workers run out of
memory (the engine's test hook, MATREC_TEST_OOM_ABOVE) above 5 images per forward pass, so a
job with batch 16 must train in micro-batches of 4, and a job where even 1 image is too many
must fail saying so."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from integration.test_cli_e2e import ctl
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from support.cgroups import memory_cgroup
from support.cluster_jobs import assert_complete_series, finetune_spec, wait_until

pytestmark = pytest.mark.slow


def test_a_batch_too_large_for_memory_trains_in_micro_batches(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    env = {"MATREC_TEST_OOM_ABOVE": "5"}
    with (
        LocalCluster(tmp_path / "cluster", agents=1, env=env) as cluster,
        cluster.client() as client,
    ):
        job = client.submit_job(finetune_spec(small_dataset, 1))
        final = client.wait(job.id, timeout=300)
        assert final.state == "succeeded", final.error
        assert final.tasks[0].attempt == 1  # recovered inside the attempt, no retry
        assert_complete_series(client, final, small_dataset, 1)  # no step skipped or repeated
        micro = [(m.step, m.value) for m in client.job_metrics(job.id)
                 if m.key == "memory/micro_batch"]  # fmt: skip
        assert micro == [(1, 4.0)]
        memory = [e.message for e in final.history if e.kind == "memory"]
        assert memory == [
            "step 1: training in micro-batches of 4 images per pass to fit in memory "
            "(batch size unchanged)"
        ]
        assert final.result["steps"] == 9
        assert final.result["micro_batch"] == 4
        # batch_size auto: the probe finds 4 (8 runs out of memory) and the job says so.
        spec = finetune_spec(small_dataset, 1, batch_size="auto", strategy="head_only")
        final = client.wait(client.submit_job(spec).id, timeout=300)
        assert final.state == "succeeded", final.error
        assert (final.result["batch_size"], final.result["steps"]) == (4, 144 // 4)
        memory = [e.message for e in final.history if e.kind == "memory"]
        assert memory == ["batch_size auto: 4 images per step, the largest the memory probe "
                          "found to fit"]  # fmt: skip


def test_a_model_that_fits_no_micro_batch_fails_naming_batch_image_and_memory(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    env = {"MATREC_TEST_OOM_ABOVE": "0"}
    with (
        LocalCluster(tmp_path / "cluster", agents=1, env=env) as cluster,
        cluster.client() as client,
    ):
        spec = {**finetune_spec(small_dataset, 1), "max_attempts": 1}
        final = client.wait(client.submit_job(spec).id, timeout=300)
        assert final.state == "failed"
        assert "micro-batches of 1 image" in final.error, final.error
        assert "batch size 16, image size 32x32 px, host memory:" in final.error
        # A worker that allocates past its address-space bound is reported as out of memory,
        # with the figures, and retried under the job's max_attempts.
        config = {"steps": 1, "duration_seconds": 0, "allocate_mb": 2048, "memory_limit_mb": 1024}
        spec = {"kind": "diagnostic", "config": config, "max_attempts": 2}
        final = client.wait(client.submit_job(spec).id, timeout=120)
        assert final.state == "failed"
        assert final.tasks[0].attempt == 2
        assert final.error.startswith("out of memory (worker exit code 3)"), final.error
        assert "address-space bound (RLIMIT_AS) 1024 MiB" in final.error
        failed = [(e.attempt, e.message) for e in final.history if e.kind == "failed"]
        assert [attempt for attempt, _ in failed] == [1, 2]
        assert failed[0][1].startswith("out of memory (worker exit code 3)")
        assert failed[0][1].endswith("; requeued")


def test_a_job_asking_more_memory_than_any_agent_has_waits_saying_why(tmp_path: Path) -> None:
    with (
        LocalCluster(tmp_path / "cluster", agents=1) as cluster,
        cluster.client() as client,
    ):
        (agent,) = client.list_agents()
        host_mib = agent.total.memory_bytes >> 20
        spec = {
            "kind": "diagnostic",
            "config": {"steps": 1, "duration_seconds": 0},
            "resources": {"memory_mb": 8 * host_mib},
        }
        job = client.submit_job(spec)
        wait_until(
            lambda: any(e.kind == "waiting" for e in client.get_job(job.id).history),
            30,
            "the waiting event",
        )
        final = client.get_job(job.id)
        assert final.state == "queued"
        assert final.spec.resources.memory_bytes == (8 * host_mib) << 20
        (reason,) = [e.message for e in final.history if e.kind == "waiting"]
        assert f"needs {8 * host_mib} MiB host memory, has {host_mib} in all" in reason
        # GPU memory on a host without GPUs: also queued, saying so; `show` prints both reasons.
        gpu = client.submit_job({**spec, "resources": {"gpus": 1, "gpu_memory_mb": 1024}})
        wait_until(
            lambda: any(e.kind == "waiting" for e in client.get_job(gpu.id).history),
            30,
            "the GPU job's waiting event",
        )
        assert client.get_job(gpu.id).state == "queued"
        for job_id, why in ((job.id, "MiB host memory, has"), (gpu.id, "needs 1 gpus, has 0")):
            shown = ctl(cluster.address, "show", job_id)
            assert shown.returncode == 0, shown.stderr
            text = " ".join(shown.stdout.replace("│", " ").split())  # unwrap Rich's panel
            assert "no agent can take it now" in text and why in text, shown.stdout
        small = client.submit_job({**spec, "resources": {"memory_mb": 16}})
        assert client.wait(small.id, timeout=60).state == "succeeded"


def test_jobs_whose_memory_does_not_fit_together_go_to_two_agents_or_take_turns(
    tmp_path: Path,
) -> None:
    with (
        LocalCluster(tmp_path / "cluster", agents=2) as cluster,
        cluster.client() as client,
    ):
        host_mib = client.list_agents()[0].total.memory_bytes >> 20
        # Each asks for 60 % of a host's memory: two fit on two agents, not on one.
        spec = {
            "kind": "diagnostic",
            "config": {"steps": 1, "duration_seconds": 3},
            "resources": {"memory_mb": host_mib * 6 // 10},
        }
        jobs = [client.submit_job(spec).id for _ in range(2)]
        finals = [client.wait(job_id, timeout=60) for job_id in jobs]
        assert [f.state for f in finals] == ["succeeded", "succeeded"]
        assert finals[0].tasks[0].agent_id != finals[1].tasks[0].agent_id
        # With one agent left the second waits, saying why, and runs after the first.
        cluster.stop_agent(1)
        wait_until(
            lambda: [a.state for a in client.list_agents()].count("connected") == 1,
            30,
            "one agent connected",
        )
        first, second = (client.submit_job(spec).id for _ in range(2))
        done = [client.wait(job_id, timeout=60) for job_id in (first, second)]
        assert [d.state for d in done] == ["succeeded", "succeeded"]
        assert done[0].tasks[0].agent_id == done[1].tasks[0].agent_id
        assert done[0].finished_at is not None and done[1].started_at is not None
        assert done[1].started_at >= done[0].finished_at
        (reason,) = [e.message for e in done[1].history if e.kind == "waiting"]
        assert "MiB host memory" in reason and "unreserved now" in reason


def test_a_worker_the_kernel_kills_for_memory_is_reported_as_out_of_memory_and_retried(
    tmp_path: Path,
) -> None:
    """A real kill by the kernel's out-of-memory killer: the agent (and so its workers) runs
    in a memory cgroup limited to what it uses plus 256 MiB, and the task allocates 1 GiB."""
    with (
        LocalCluster(tmp_path / "cluster", agents=1) as cluster,
        cluster.client() as client,
    ):
        agent = psutil.Process(cluster.agent_pid(0))
        processes = [agent, *agent.children(recursive=True)]
        in_use = sum(p.memory_info().rss for p in processes)
        limit = in_use + (256 << 20)
        with memory_cgroup(limit) as cgroup:
            for process in processes:
                cgroup.add(process.pid)
            config = {"steps": 1, "duration_seconds": 0, "allocate_mb": 1024}
            spec = {"kind": "diagnostic", "config": config, "max_attempts": 2}
            final = client.wait(client.submit_job(spec).id, timeout=120)
            assert cgroup.oom_kills() == 2  # the kernel's own count: one kill per attempt
            assert agent.is_running()  # the worker was the one killed
        assert final.state == "failed"
        assert final.tasks[0].attempt == 2
        assert final.error.startswith(
            "out of memory: the worker was killed by the kernel's out-of-memory killer"
        ), final.error
        assert f"memory cgroup limit {limit >> 20} MiB" in final.error
        failed = [(e.attempt, e.message) for e in final.history if e.kind == "failed"]
        assert [attempt for attempt, _ in failed] == [1, 2]
        assert failed[0][1].startswith("out of memory: the worker was killed by the kernel's")
        assert failed[0][1].endswith("; requeued")
