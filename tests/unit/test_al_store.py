"""The active-learning store on SQLite and PostgreSQL: the feedback rules, trigger
de-duplication, one transaction per job and its row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from matrec.common.active_learning.project import parse_project_spec
from matrec.common.specs import SpecError
from matrec.coordinator.active_learning.store import (
    ActiveLearningStore,
    CandidateRecord,
    FeedbackError,
)
from matrec.coordinator.store import Store


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[Store, ActiveLearningStore]]:
    opened = Store.open(database_url)
    yield opened, ActiveLearningStore(opened.engine)
    opened.close()


def job_spec(name: str) -> dict[str, object]:
    return {
        "name": name,
        "kind": "finetune",
        "config": {"dataset_path": "/d"},
        "resources": {"cpus": 1.0, "gpus": 0, "memory_bytes": 0},
        "max_attempts": 1,
    }


def candidate(sample_id: str) -> CandidateRecord:
    return CandidateRecord(
        sample_id, f"/pool/{sample_id}", 0.5, {"entropy": 0.5}, "oak", None, None
    )


def make_project(stores: tuple[Store, ActiveLearningStore], tmp_path: Path) -> str:
    store, projects = stores
    model = store.create_job(
        name="m", kind="finetune", spec=job_spec("m"), resources={}, max_attempts=1,
        artifact_root=tmp_path,
    )  # fmt: skip
    spec = parse_project_spec(
        {"dataset_path": "/d", "pool_path": "/p", "model_job_id": model.id, "name": "oak"}
    )
    return projects.create_project(spec, 0.75, datetime.now(UTC)).id


def test_feedback_rules(stores: tuple[Store, ActiveLearningStore], tmp_path: Path) -> None:
    _, projects = stores
    project_id = make_project(stores, tmp_path)
    batch = projects.create_batch(
        project_id, "entropy", None, None, [candidate("a"), candidate("b")]
    )  # type: ignore[arg-type]
    assert batch.state == "open" and [c.sample_id for c in batch.candidates] == ["a", "b"]

    with pytest.raises(FeedbackError) as unknown_sample:
        projects.record_feedback(batch.id, "zzz", "oak", overwrite=False)
    assert unknown_sample.value.code == "not_found" and "zzz" in str(unknown_sample.value)
    with pytest.raises(FeedbackError) as unknown_batch:
        projects.record_feedback("alb-nope", "a", "oak", overwrite=False)
    assert unknown_batch.value.code == "not_found"

    record, changed, state = projects.record_feedback(batch.id, "a", "oak", overwrite=False)
    assert changed and record.label == "oak" and state == "partial"
    _, changed, _ = projects.record_feedback(batch.id, "a", "oak", overwrite=False)
    assert not changed
    with pytest.raises(FeedbackError) as conflict:
        projects.record_feedback(batch.id, "a", "steel", overwrite=False)
    assert conflict.value.code == "conflict" and "overwrite" in str(conflict.value)
    assert projects.get_batch(batch.id).candidates[0].label == "oak"  # type: ignore[union-attr]

    projects.record_feedback(batch.id, "a", "steel", overwrite=True)
    _, _, state = projects.record_feedback(batch.id, "b", "oak", overwrite=False)
    assert state == "done"
    done = projects.get_batch(batch.id)
    assert done is not None and done.closed_at is not None and done.labelled == 2
    assert [(x.sample_id, x.label) for x in projects.labels(project_id)] == [
        ("a", "steel"),
        ("b", "oak"),
    ]
    assert projects.proposed_sample_ids(project_id) == {"a", "b"}
    assert [b.labelled for b in projects.list_batches(project_id)] == [2]


def test_a_trigger_fires_once_per_key_and_retraining_is_one_transaction(
    stores: tuple[Store, ActiveLearningStore], tmp_path: Path
) -> None:
    store, projects = stores
    project_id = make_project(stores, tmp_path)
    first = projects.fire_trigger(project_id, "drift", "job-1", {"p": 0.001})
    assert first is not None and first.state == "fired"
    assert projects.fire_trigger(project_id, "drift", "job-1", {"p": 0.002}) is None
    assert projects.fire_trigger(project_id, "drift", "job-2", {"p": 0.003}) is not None
    assert projects.fire_trigger(project_id, "uncertainty", "job-1", {}) is not None

    job_id, version = projects.create_retraining(
        project_id, job_spec("retrain"), tmp_path, 7, first.id
    )
    assert version == 2
    assert store.get_job(job_id) is not None
    trigger = projects.get_trigger(first.id)
    assert trigger is not None and trigger.state == "retraining" and trigger.job_id == job_id
    versions = projects.versions(project_id)
    assert [(v.version, v.feedback_samples, v.trigger_id) for v in versions] == [
        (1, 0, None),
        (2, 7, first.id),
    ]
    assert versions[0].val_accuracy == 0.75 and versions[1].val_accuracy is None


def test_project_specs_name_the_bad_field() -> None:
    good = {"dataset_path": "/d", "pool_path": "/p", "model_job_id": "job-1"}
    for change, field in [
        ({"strategy": "psychic"}, "strategy"),
        ({"strategy": "bald"}, "mc_dropout_passes"),
        ({"retrain": {"dataset_path": "/x"}}, "retrain"),
        ({"retrain": {"epoch": 3}}, "retrain"),
        ({"triggers": {"drift_alpha": 2}}, "triggers.drift_alpha"),
        ({"pool_path": ""}, "pool_path"),
    ]:
        with pytest.raises(SpecError) as caught:
            parse_project_spec(good | change)
        assert caught.value.field == field, (change, caught.value)


def test_a_project_records_who_did_what(
    stores: tuple[Store, ActiveLearningStore], tmp_path: Path
) -> None:
    store, projects = stores
    model = store.create_job(
        name="m", kind="finetune", spec=job_spec("m"), resources={}, max_attempts=1,
        artifact_root=tmp_path, owner="alice",
    )  # fmt: skip
    spec = parse_project_spec({"dataset_path": "/d", "pool_path": "/p", "model_job_id": model.id})
    project = projects.create_project(spec, 0.75, datetime.now(UTC), "alice", "tok-a")
    assert (project.owner, project.owner_token_id) == ("alice", "tok-a")
    # A job the project makes belongs to the project's owner, whoever asked for it.
    scoring = projects.create_scoring(project.id, job_spec("score"), tmp_path, "pool", 1)
    scoring_job = store.get_job(scoring)
    assert scoring_job is not None and scoring_job.owner == "alice"
    batch = projects.create_batch(project.id, "entropy", scoring, None, [candidate("a")], "bob")
    assert batch.created_by == "bob"
    labelled, _, _ = projects.record_feedback(batch.id, "a", "oak", False, "carol")
    assert labelled.labelled_by == "carol"
    by_hand = projects.fire_trigger(project.id, "time", "v1", {}, fired_by="bob")
    by_monitor = projects.fire_trigger(project.id, "drift", "v1", {})
    assert by_hand is not None and by_hand.fired_by == "bob"
    assert by_monitor is not None and by_monitor.fired_by is None
    assert [b.created_by for b in projects.list_batches(project.id)] == ["bob"]
