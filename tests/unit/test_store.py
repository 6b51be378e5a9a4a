"""The coordinator's store on a real SQLite file: migrations, the task state machine, leases,
fencing, retries and metric deduplication."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from matrec.coordinator.database import (
    HEAD_REVISION,
    MIGRATIONS_DIR,
    create_engine_for,
    normalize_url,
    schema_revision,
)
from matrec.coordinator.housekeeping import Housekeeper, MetricRetention
from matrec.coordinator.job_service import effective_metrics
from matrec.coordinator.schema import metadata
from matrec.coordinator.settings import parse_settings
from matrec.coordinator.states import JobState, TaskOutcome, TaskState, job_state_from_tasks
from matrec.coordinator.store import MetricRecord, Store

LEASE = 30.0


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    yield opened
    opened.close()


def make_job(store: Store, tmp_path: Path, max_attempts: int = 2) -> str:
    job = store.create_job(
        name="j",
        kind="finetune",
        spec={"config": {"dataset_path": "/d"}},
        resources={"cpus": 1.0, "gpus": 0},
        max_attempts=max_attempts,
        artifact_root=tmp_path / "artifacts",
    )
    return job.id


def test_migrations_match_the_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_head_revision_constant_matches_the_migration_scripts(store: Store) -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    assert script.get_current_head() == HEAD_REVISION
    assert schema_revision(store.engine) == HEAD_REVISION


def test_reopening_an_existing_database_keeps_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'matrec.db'}"
    first = Store.open(url)
    job_id = make_job(first, tmp_path)
    first.close()
    second = Store.open(url)
    job = second.get_job(job_id)
    assert job is not None and job.state == JobState.QUEUED
    second.close()


def test_successful_lifecycle(store: Store, tmp_path: Path) -> None:
    job_id = make_job(store, tmp_path)
    assert store.parameters(job_id) == {"dataset_path": "/d"}
    model = tmp_path / "model.pt"
    model.write_bytes(b"1234")
    task = store.queued_tasks()[0]
    assigned = store.assign_task(task.id, "agent-a", LEASE)
    assert assigned is not None and assigned.attempt == 1 and assigned.state == TaskState.ASSIGNED
    # A second claim of the same task loses the compare-and-set.
    assert store.assign_task(task.id, "agent-b", LEASE) is None
    assert store.mark_running(task.id, 1, "agent-a") is not None
    result = {"val_accuracy": 0.9, "model_path": str(model), "checkpoint_path": "/gone/last.pt"}
    change = store.finish_task(task.id, 1, "agent-a", TaskOutcome.SUCCEEDED, result=result)
    assert change is not None and change.job_state == JobState.SUCCEEDED
    job = store.get_job(job_id)
    assert job is not None
    assert job.state == JobState.SUCCEEDED
    assert job.result == result
    artifacts = {a["kind"]: (a["uri"], a["size_bytes"]) for a in store.artifacts(job_id)}
    assert artifacts == {"model": (str(model), 4), "checkpoint": ("/gone/last.pt", None)}
    assert job.started_at is not None and job.finished_at is not None
    kinds = [e.kind for e in store.history(job_id)]
    assert kinds == ["submitted", "assigned", "job_state", "started", "succeeded", "job_state"]


def test_reports_from_a_stale_holder_are_fenced(store: Store, tmp_path: Path) -> None:
    make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    store.assign_task(task.id, "agent-a", LEASE)
    assert store.finish_task(task.id, 1, "agent-b", TaskOutcome.SUCCEEDED) is None
    assert store.finish_task(task.id, 2, "agent-a", TaskOutcome.SUCCEEDED) is None
    assert store.mark_running(task.id, 1, "agent-b") is None
    stale, cancelled = store.renew_leases("agent-b", [(task.id, 1)], LEASE)
    assert stale == [(task.id, 1)] and cancelled == []
    assert store.active_tasks()[0].state == TaskState.ASSIGNED


def test_expired_lease_requeues_then_fails_when_attempts_run_out(
    store: Store, tmp_path: Path
) -> None:
    job_id = make_job(store, tmp_path, max_attempts=2)
    task = store.queued_tasks()[0]
    store.assign_task(task.id, "agent-a", lease_ttl=-1)
    changes = store.expire_leases()
    assert [c.task.state for c in changes] == [TaskState.QUEUED]
    # The old holder's late report no longer counts.
    assert store.finish_task(task.id, 1, "agent-a", TaskOutcome.SUCCEEDED) is None
    store.assign_task(task.id, "agent-b", lease_ttl=-1)
    changes = store.expire_leases()
    assert [c.task.state for c in changes] == [TaskState.FAILED]
    job = store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert "no attempts left" in job.error
    assert job.tasks[0].attempt == 2


def test_renewed_lease_does_not_expire(store: Store, tmp_path: Path) -> None:
    make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    store.assign_task(task.id, "agent-a", lease_ttl=-1)
    assert store.renew_leases("agent-a", [(task.id, 1)], LEASE) == ([], [])
    assert store.expire_leases() == []


def test_preemption_does_not_use_up_attempts(store: Store, tmp_path: Path) -> None:
    make_job(store, tmp_path, max_attempts=1)
    task = store.queued_tasks()[0]
    for attempt in (1, 2, 3):
        store.assign_task(task.id, "agent-a", LEASE)
        change = store.finish_task(task.id, attempt, "agent-a", TaskOutcome.PREEMPTED)
        assert change is not None and change.task.state == TaskState.QUEUED
    store.assign_task(task.id, "agent-a", LEASE)
    change = store.finish_task(task.id, 4, "agent-a", TaskOutcome.FAILED, error="boom")
    assert change is not None and change.task.state == TaskState.FAILED


def test_failure_with_attempts_left_is_retried(store: Store, tmp_path: Path) -> None:
    make_job(store, tmp_path, max_attempts=2)
    task = store.queued_tasks()[0]
    store.assign_task(task.id, "agent-a", LEASE)
    change = store.finish_task(task.id, 1, "agent-a", TaskOutcome.FAILED, error="worker died")
    assert change is not None and change.task.state == TaskState.QUEUED
    assert change.task.error == "worker died"


def test_permanent_failure_is_not_retried(store: Store, tmp_path: Path) -> None:
    make_job(store, tmp_path, max_attempts=3)
    task = store.queued_tasks()[0]
    store.assign_task(task.id, "agent-a", LEASE)
    change = store.finish_task(
        task.id, 1, "agent-a", TaskOutcome.FAILED, error="invalid task", permanent=True
    )
    assert change is not None and change.task.state == TaskState.FAILED
    assert change.job_state == JobState.FAILED


def test_cancel_queued_job_is_immediate(store: Store, tmp_path: Path) -> None:
    job_id = make_job(store, tmp_path)
    assert store.request_cancel(job_id, "no longer needed") == []
    job = store.get_job(job_id)
    assert job is not None and job.state == JobState.CANCELLED
    assert store.queued_tasks() == []


def test_cancel_running_job_waits_for_the_agent(store: Store, tmp_path: Path) -> None:
    job_id = make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    store.assign_task(task.id, "agent-a", LEASE)
    active = store.request_cancel(job_id, "stop")
    assert [t.id for t in active] == [task.id]
    _stale, cancelled = store.renew_leases("agent-a", [(task.id, 1)], LEASE)
    assert cancelled == [(task.id, 1)]
    # Even a "failed" report ends a cancel-requested task as cancelled, not retried.
    change = store.finish_task(task.id, 1, "agent-a", TaskOutcome.FAILED, error="SIGTERM")
    assert change is not None and change.job_state == JobState.CANCELLED


def test_metric_batches_are_deduplicated(store: Store, tmp_path: Path) -> None:
    job_id = make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    now = datetime.now(UTC)
    batch = [
        {"task_id": task.id, "attempt": 1, "step": s, "key": "train/loss", "value": 1.0 / s,
         "time": now}
        for s in range(1, 6)
    ]  # fmt: skip
    store.add_metrics(job_id, batch)
    store.add_metrics(job_id, batch)  # a replay after a reconnect
    store.add_metrics(job_id, [*batch[:2], {**batch[0], "attempt": 2}])
    points = store.metrics(job_id)
    assert len(points) == 6
    assert [p.step for p in points if p.attempt == 1] == [1, 2, 3, 4, 5]


def test_micro_batch_points_become_memory_events_once(store: Store, tmp_path: Path) -> None:
    job_id = make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    now = datetime.now(UTC)
    batch = [
        {"task_id": task.id, "attempt": 1, "step": 1, "key": "train/loss", "value": 2.0,
         "time": now},
        {"task_id": task.id, "attempt": 1, "step": 1, "key": "memory/micro_batch", "value": 4.0,
         "time": now},
    ]  # fmt: skip
    store.add_memory_events(job_id, batch)
    store.add_memory_events(job_id, batch)  # a replay after a reconnect
    store.add_memory_events(job_id, [{**batch[1], "attempt": 2}])
    memory = [e for e in store.history(job_id) if e.kind == "memory"]
    assert [(e.attempt, e.message) for e in memory] == [
        (a, "step 1: training in micro-batches of 4 images per pass to fit in memory "
         "(batch size unchanged)")
        for a in (1, 2)
    ]  # fmt: skip


def test_effective_metrics_prefer_the_latest_attempt() -> None:
    now = datetime.now(UTC)

    def point(attempt: int, step: int, value: float) -> MetricRecord:
        return MetricRecord(0, "t", attempt, step, "loss", value, now)

    merged = effective_metrics(
        [point(1, 1, 1.0), point(1, 2, 2.0), point(2, 2, 2.5), point(2, 3, 3)]
    )
    assert [(m.step, m.value) for m in merged] == [(1, 1.0), (2, 2.5), (3, 3.0)]


@pytest.mark.parametrize(
    ("states", "cancel", "expected"),
    [
        ([TaskState.QUEUED], False, JobState.QUEUED),
        ([TaskState.ASSIGNED], False, JobState.RUNNING),
        ([TaskState.SUCCEEDED, TaskState.RUNNING], False, JobState.RUNNING),
        ([TaskState.SUCCEEDED, TaskState.SUCCEEDED], False, JobState.SUCCEEDED),
        ([TaskState.SUCCEEDED, TaskState.FAILED], False, JobState.FAILED),
        ([TaskState.CANCELLED], True, JobState.CANCELLED),
        ([TaskState.RUNNING], True, JobState.RUNNING),
        ([TaskState.QUEUED], True, JobState.CANCELLED),
    ],
)
def test_job_state_follows_tasks(states: list[TaskState], cancel: bool, expected: JobState) -> None:
    assert job_state_from_tasks(states, cancel) == expected


def test_unsupported_database_is_refused(tmp_path: Path) -> None:
    engine = sa.create_engine("sqlite://")
    engine.dialect.name = "oracle"
    with pytest.raises(ValueError, match="unsupported database"):
        Store(engine)


@pytest.mark.parametrize(
    ("url", "expected", "connect_args"),
    [
        ("postgresql://u:p@db:5432/x", "postgresql+psycopg://u:p@db:5432/x", {}),
        ("postgres://u@db/x", "postgresql+psycopg://u@db/x", {}),
        (
            "postgresql://u@pooler:6543/x?prepared_statements=false&sslmode=require",
            "postgresql+psycopg://u@pooler:6543/x?sslmode=require",
            {"prepare_threshold": None},
        ),
        ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db", {}),
    ],
)
def test_database_urls_are_normalised(
    url: str, expected: str, connect_args: dict[str, object]
) -> None:
    assert normalize_url(url) == (expected, connect_args)


def test_unknown_database_url_names_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match="postgresql://USER:PASSWORD@HOST:PORT/DB"):
        create_engine_for("mysql://u@h/db")


def test_downsampling_thins_long_series_and_keeps_the_last_point(
    store: Store, tmp_path: Path
) -> None:
    job_id = make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    now = datetime.now(UTC)

    def points(key: str, count: int) -> list[dict[str, object]]:
        return [
            {"task_id": task.id, "attempt": 1, "step": s, "key": key, "value": float(s),
             "time": now}
            for s in range(1, count + 1)
        ]  # fmt: skip

    store.add_metrics(job_id, points("train/loss", 1000) + points("val/accuracy", 10))
    removed = store.downsample_metrics(max_points_per_series=100)
    kept = store.metrics(job_id)
    loss_steps = [m.step for m in kept if m.key == "train/loss"]
    assert removed == 1000 - len(loss_steps)
    assert len(loss_steps) <= 101 and loss_steps[-1] == 1000
    assert loss_steps == sorted(loss_steps) and loss_steps[:3] == [10, 20, 30]
    # Short series are untouched.
    assert [m.step for m in kept if m.key == "val/accuracy"] == list(range(1, 11))
    assert store.downsample_metrics(max_points_per_series=100) == 0


def test_retention_drops_metrics_of_old_finished_jobs_only(store: Store, tmp_path: Path) -> None:
    finished = make_job(store, tmp_path)
    running = make_job(store, tmp_path)
    now = datetime.now(UTC)
    for job_id in (finished, running):
        task = next(t for t in store.queued_tasks() if t.job_id == job_id)
        store.add_metrics(
            job_id,
            [{"task_id": task.id, "attempt": 1, "step": 1, "key": "loss", "value": 1.0,
              "time": now}],
        )  # fmt: skip
    store.request_cancel(finished, "done")
    assert store.delete_metrics_of_jobs_finished_before(now - timedelta(days=1)) == 0
    assert store.delete_metrics_of_jobs_finished_before(datetime.now(UTC) + timedelta(1)) == 1
    assert store.metrics(finished) == []
    assert len(store.metrics(running)) == 1


def test_housekeeper_applies_the_retention_policy(store: Store, tmp_path: Path) -> None:
    job_id = make_job(store, tmp_path)
    task = store.queued_tasks()[0]
    now = datetime.now(UTC)
    store.add_metrics(
        job_id,
        [{"task_id": task.id, "attempt": 1, "step": s, "key": "loss", "value": 1.0, "time": now}
         for s in range(1, 51)],
    )  # fmt: skip
    assert not MetricRetention().enabled
    assert Housekeeper(store, MetricRetention()).run_once() == 0
    assert Housekeeper(store, MetricRetention(max_points_per_series=10)).run_once() > 0
    assert len(store.metrics(job_id)) <= 11


def test_negative_retention_settings_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--metric-max-points", "-1"])
    assert "--metric-max-points" in capsys.readouterr().err


def test_list_jobs_reads_jobs_and_tasks_in_two_queries(store: Store, tmp_path: Path) -> None:
    ids = [make_job(store, tmp_path) for _ in range(12)]
    store.create_job(
        name="gang", kind="finetune", spec={"config": {"dataset_path": "/d", "hosts": 3}},
        resources={"cpus": 1.0}, max_attempts=1, artifact_root=tmp_path, num_tasks=3,
    )  # fmt: skip
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        jobs = store.list_jobs(limit=100)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert len(statements) == 2, statements
    assert {j.id for j in jobs} >= set(ids) and len(jobs) == 13
    assert [len(j.tasks) for j in jobs if j.name == "gang"] == [3]
    assert all(len(j.tasks) == 1 for j in jobs if j.name == "j")
    assert [j.created_at for j in jobs] == sorted((j.created_at for j in jobs), reverse=True)
    assert [t.index for j in jobs for t in j.tasks if j.name == "gang"] == [0, 1, 2]
