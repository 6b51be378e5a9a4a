"""Hyperparameter studies on a real local cluster: a coordinator and two agents as processes,
trials as real jobs (fine-tunes on real images, or the torch-free diagnostic task where the test
is about scheduling), the coordinator restarted mid-study, ASHA pruning through the stream."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from matrec.sdk import Client, InvalidSpecError, optimize_hyperparameters
from matrec.sdk.demo_dataset import DemoDatasetInfo
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import Study
from matrec.v1 import jobs_pb2, studies_pb2, studies_pb2_grpc
from support.cluster_jobs import FAST_LEASES, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster", agents=2, coordinator_args=FAST_LEASES) as running:
        yield running


def diagnostic_study(**overrides: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "name": "diag",
        "trial": {"kind": "diagnostic", "config": {"duration_seconds": 2.0, "steps": 4}},
        "search_space": {"score": {"type": "float", "min": 0.0, "max": 1.0}},
        "algorithm": "tpe",
        "max_trials": 8,
        "max_parallel": 2,
        "n_startup_trials": 2,
        "seed": 3,
    }
    study.update(overrides)
    return study


def assert_no_repeats(study: Study) -> None:
    keys = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert len(set(keys)) == len(keys), f"repeated configurations: {keys}"
    jobs = [t.job_id for t in study.trials]
    assert len(set(jobs)) == len(jobs) and all(jobs)


def study_jobs(client: Client, study_id: str) -> list[str]:
    return [j.id for j in client.list_jobs(limit=1000) if j.spec.labels.get("study") == study_id]


def test_tpe_study_of_real_finetunes_on_two_agents(
    tmp_path: Path, small_dataset: DemoDatasetInfo
) -> None:
    with LocalCluster(tmp_path / "cluster", agents=2) as cluster:
        result = optimize_hyperparameters(
            small_dataset.path,
            hp_space={
                "learning_rate": {"type": "float", "min": 1e-4, "max": 3e-2, "log": True},
                "dense_units": {"type": "int", "min": 0, "max": 64, "step": 32},
            },
            max_trials=5,
            max_parallel=2,
            algorithm="tpe",
            n_startup_trials=2,
            coordinator=cluster.address,
            epochs=1,
            image_size=32,
            batch_size=16,
            timeout=240,
        )
        with cluster.client() as client:
            jobs = {
                job_id: client.get_job(job_id) for job_id in study_jobs(client, result.study_id)
            }
            metrics = {
                t.job_id: [m for m in client.job_metrics(t.job_id) if m.key == "val/accuracy"]
                for t in result.trials
            }
    study = result.study
    assert study.state == "completed"
    assert [t.number for t in study.trials] == list(range(5))
    assert all(t.state == "completed" for t in study.trials), [t.error for t in study.trials]
    assert_no_repeats(study)
    assert set(jobs) == {t.job_id for t in study.trials}, "a trial without a job or vice versa"
    # Each trial's objective is what its job reported; the best is the largest of them.
    for trial in study.trials:
        assert trial.objective_value == pytest.approx(metrics[trial.job_id][-1].value)
        assert 1e-4 <= trial.params["learning_rate"] <= 3e-2
        assert trial.params["dense_units"] in (0, 32, 64)
        assert jobs[trial.job_id].spec.config["learning_rate"] == pytest.approx(
            trial.params["learning_rate"]
        )
    assert result.best_value == max(t.objective_value or 0 for t in study.trials)
    # Two agents, two at a time: both agents trained trials, and some trials overlapped.
    agents = {task.agent_id for job in jobs.values() for task in job.tasks}
    assert len(agents) == 2
    spans = sorted((j.started_at, j.finished_at) for j in jobs.values())
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))


def test_coordinator_killed_mid_study_loses_and_repeats_no_trial(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo
) -> None:
    """A study of real fine-tunes with the default algorithm (mtpe), two at a time; the
    coordinator is SIGKILLed while trials run and restarted on the same database."""
    spec = {
        "trial": {
            "kind": "finetune",
            "config": {
                "dataset_path": str(small_dataset.path),
                "epochs": 2,
                "image_size": 32,
                "batch_size": 16,
            },
        },
        "search_space": {
            "learning_rate": {"type": "float", "min": 1e-4, "max": 3e-2, "log": True},
        },
        "max_trials": 5,
        "max_parallel": 2,
        "n_startup_trials": 2,
    }
    with cluster.client() as client:
        study = client.create_study(spec)
        wait_until(
            lambda: any(t.job_state == "running" for t in client.get_study(study.id).trials),
            120,
            "a running trial",
        )
        cluster.restart_coordinator(kill=True)
        final = client.wait_study(study.id, timeout=300)
        jobs = study_jobs(client, study.id)
    assert final.state == "completed", final.error
    assert [t.number for t in final.trials] == list(range(5))
    assert all(t.state == "completed" for t in final.trials), [t.error for t in final.trials]
    assert_no_repeats(final)
    assert sorted(jobs) == sorted(t.job_id for t in final.trials), "orphan or missing trial jobs"


def test_asha_prunes_trials_and_frees_their_agents_promptly(cluster: LocalCluster) -> None:
    steps, duration = 8, 8.0
    spec = diagnostic_study(
        trial={"kind": "diagnostic", "config": {"duration_seconds": duration, "steps": steps}},
        algorithm="random",
        max_trials=6,
        pruner={"kind": "asha", "min_resource": 1, "reduction_factor": 2},
    )
    with cluster.client() as client:
        study = client.wait_study(client.create_study(spec).id, timeout=180)
        jobs = {t.job_id: client.get_job(t.job_id) for t in study.trials}
    assert study.state == "completed"
    pruned = [t for t in study.trials if t.state == "pruned"]
    assert pruned, [(t.number, t.state, t.objective_value) for t in study.trials]
    asha_rungs = {1: 0, 2: 1, 4: 2}
    for trial in pruned:
        assert trial.pruned_resource in asha_rungs, trial
        assert trial.pruned_rung == asha_rungs[trial.pruned_resource]
        assert f"rung {trial.pruned_rung}" in trial.error
        values = [v.value for v in trial.intermediate]
        assert trial.objective_value == pytest.approx(values[trial.pruned_resource - 1])
        # Stopped through the stream: its job was cancelled, well before its full duration.
        job = jobs[trial.job_id]
        assert job.state == "cancelled"
        assert job.started_at is not None and job.finished_at is not None
        assert (job.finished_at - job.started_at).total_seconds() < duration - 1.5
        assert trial.finished_at is not None
        assert (job.finished_at - trial.finished_at).total_seconds() < 3.0
    # The best trial survived every rung and ran to the end.
    assert study.best is not None and len(study.best.intermediate) == steps


def test_cancelling_a_study_cancels_its_running_trials(cluster: LocalCluster) -> None:
    spec = diagnostic_study(
        trial={"kind": "diagnostic", "config": {"duration_seconds": 30.0, "steps": 30}}
    )
    with cluster.client() as client:
        study = client.create_study(spec)
        wait_until(
            lambda: any(t.job_state == "running" for t in client.get_study(study.id).trials),
            60,
            "a running trial",
        )
        cancelled = client.cancel_study(study.id, "enough")
        assert cancelled.state == "cancelled"
        wait_until(
            lambda: all(client.get_job(t.job_id).finished for t in cancelled.trials),
            20,
            "the trials' jobs to stop",
        )
        final = client.get_study(study.id)
    assert {t.state for t in final.trials} == {"cancelled"}
    assert len(final.trials) == 2  # nothing asked after the cancel


BAD_SPACES = [
    ({}, "search_space", "empty"),
    ({"score": {"type": "float", "min": 2.0, "max": 1.0}}, "search_space.score", "greater than"),
    (
        {"score": {"type": "float", "min": 0.0, "max": 1.0, "log": True}},
        "search_space.score",
        "min > 0",
    ),
    ({"score": {"type": "normal", "min": 0.0, "max": 1.0}}, "search_space.score.type", "unknown"),
    ({"bogus": {"type": "int", "min": 1, "max": 3}}, "search_space.bogus", "not a setting"),
]


@pytest.mark.parametrize(("space", "field", "words"), BAD_SPACES)
def test_bad_search_space_is_invalid_argument_naming_the_parameter(
    cluster: LocalCluster, space: dict[str, Any], field: str, words: str
) -> None:
    spec = studies_pb2.StudySpec(
        trial=jobs_pb2.JobSpec(kind="diagnostic"), algorithm="tpe", max_trials=3
    )
    spec.search_space.update(space)
    with grpc.insecure_channel(cluster.address) as channel:
        stub = studies_pb2_grpc.StudyServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.CreateStudy(studies_pb2.CreateStudyRequest(spec=spec), timeout=10)
        listed = stub.ListStudies(studies_pb2.ListStudiesRequest(), timeout=10)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata())["matrec-field"].startswith(field)
    assert words in error.details()
    assert not listed.studies, "a rejected study was stored"
    # The SDK says the same before sending anything.
    with cluster.client() as client, pytest.raises(InvalidSpecError) as sdk_error:
        client.create_study(diagnostic_study(search_space=space))
    assert sdk_error.value.field.startswith(field)


def test_unknown_study_is_not_found(cluster: LocalCluster) -> None:
    from matrec.sdk import StudyNotFoundError

    with cluster.client() as client, pytest.raises(StudyNotFoundError, match="hpo list"):
        client.get_study("study-nope")


def test_watch_study_streams_progress_until_final(cluster: LocalCluster) -> None:
    spec = diagnostic_study(max_trials=4)
    seen: list[tuple[str, int]] = []
    started = time.monotonic()
    with cluster.client() as client:
        study = client.create_study(spec)
        for update in client.watch_study(study.id, interval=0.2, timeout=120):
            seen.append((update.state, sum(t.state == "completed" for t in update.trials)))
    assert seen[-1] == ("completed", 4)
    assert len(seen) >= 3, seen  # intermediate snapshots, not just the end
    assert time.monotonic() - started < 120


def test_failed_trials_are_recorded_and_the_study_goes_on(cluster: LocalCluster) -> None:
    spec = diagnostic_study(
        trial={
            "kind": "diagnostic",
            "config": {"duration_seconds": 0.5, "steps": 2},
            "max_attempts": 1,
        },
        search_space={
            "score": {"type": "float", "min": 0.0, "max": 1.0},
            "fail": {"type": "categorical", "choices": [True, False]},
        },
        algorithm="random",
        max_trials=6,
    )
    with cluster.client() as client:
        study = client.wait_study(client.create_study(spec).id, timeout=120)
    failed = [t for t in study.trials if t.params["fail"]]
    assert failed and len(failed) < 6, [t.params for t in study.trials]
    assert {t.state for t in failed} == {"failed"}
    assert all("asked to fail" in t.error for t in failed)
    assert {t.state for t in study.trials if not t.params["fail"]} == {"completed"}
    assert study.state == "completed" and len(study.trials) == 6
    assert study.best is not None and not study.best.params["fail"]
