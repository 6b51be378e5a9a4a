"""Active learning end to end on a real coordinator and agent: a project scores its pool, a batch
is selected and labelled, feedback above the threshold fires a stored trigger, the monitor
retrains from the latest model with the new labels, and the new model version is recorded with
its validation accuracy. Nothing of it travels as a shared file: the scores reach the coordinator
over the agent's stream, and the retraining dataset is a manifest the agent resolves on its own
disk (the agents are given no artifact root, and the coordinator builds no folder for them).
Bad feedback gets clear errors and changes nothing; the project survives a coordinator
restart."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from matrec.common.active_learning.pool_scores import SCORES_FILE
from matrec.sdk import (
    ActiveLearner,
    Client,
    InvalidSpecError,
    JobStateError,
    LearningProject,
    ProjectNotFoundError,
)
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from matrec.sdk.local_cluster import LocalCluster
from PIL import Image
from support.cluster_jobs import finetune_spec, job_log_lines

pytestmark = pytest.mark.slow

FINETUNE = {
    "model": "resnet18",
    "image_size": 32,
    "epochs": 1,
    "batch_size": 16,
    "dropout_rate": 0.2,
    "dense_units": 16,
}
THRESHOLD = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("al-cluster")
    with LocalCluster(root, agents=1, coordinator_args=["--trigger-check-interval", "1"]) as c:
        yield c


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh images of the same textures (another seed), flat: nobody knows their labels."""
    fresh = make_demo_dataset(
        tmp_path_factory.mktemp("fresh") / "d", seed=7, patch_size=32, train_per_class=1,
        val_per_class=3,
    )  # fmt: skip
    target = tmp_path_factory.mktemp("pool")
    for image in sorted((fresh.path / "val").glob("*/*.png")):
        shutil.copy(image, target / f"{image.parent.name}-{image.name}")
    return target


def wait_for(predicate, timeout: float = 180.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_feedback_fires_a_trigger_that_retrains_a_new_recorded_version(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, pool: Path, tmp_path: Path
) -> None:
    with ActiveLearner(
        tmp_path / "learner",
        coordinator=cluster.address,
        dataset_path=small_dataset.path,
        pool_path=pool,
        finetune=FINETUNE,
        feedback_threshold=THRESHOLD,
        drift=False,
        auto_retrain=True,
        retrain={"epochs": 1},
        timeout=300,
    ) as learner:
        project = learner.status()
        assert project.current_version == 1 and project.versions[0].val_accuracy is not None
        assert sorted(project.classes) == sorted(small_dataset.val_counts)
        # The agent's configuration names no folder of the coordinator's, nor the reverse.
        agent = psutil.Process(cluster.agent_pid(0))
        assert str(cluster.artifact_root) not in " ".join(agent.cmdline())
        assert not any(str(cluster.artifact_root) in v for v in agent.environ().values())
        assert not cluster.artifact_root.is_relative_to(cluster.workdir / "agent-0")

        # The coordinator selects from its own copy of the scores, sent over the agent's
        # stream: where the agent's worker wrote them is not read.
        scoring = learner.client.wait(project.pool_scoring_job_id, 300)
        assert scoring.state == "succeeded", scoring.error
        task = scoring.tasks[0]
        received = cluster.artifact_root / scoring.id / "received" / f"{task.id}-a{task.attempt}"
        assert scoring.result["scores_path"] == str(received / SCORES_FILE)
        (Path(task.artifact_dir) / SCORES_FILE).unlink()

        batch = learner.select_samples_for_labeling(THRESHOLD, "margin")
        assert len(batch.candidates) == THRESHOLD and batch.state == "open"
        pool_files = {p.name for p in pool.iterdir()}
        assert {c.sample_id for c in batch.candidates} <= pool_files
        measures = {"entropy", "margin", "least_confidence"}
        assert all(measures <= set(c.scores) for c in batch.candidates)
        # Highest margin-uncertainty first.
        assert [c.score for c in batch.candidates] == sorted(
            (c.score for c in batch.candidates), reverse=True
        )

        # A second batch never proposes the same samples.
        second = learner.select_samples_for_labeling(3, "entropy")
        first_ids = {c.sample_id for c in batch.candidates}
        assert not {c.sample_id for c in second.candidates} & first_ids

        for candidate in batch.candidates:
            truth = candidate.sample_id.split("-", 1)[0]
            _, changed = learner.record_feedback(candidate.sample_id, truth, batch.id)
            assert changed

        done = learner.client.get_batch(batch.id)
        assert done.state == "done" and done.labelled == THRESHOLD

        # The monitor (every 1 s here) fires the feedback trigger and retrains on its own; on
        # its next pass after the job succeeded it records the version's accuracy.
        def retrained() -> LearningProject | None:
            current = learner.status()
            settled = current.current is not None and current.current.val_accuracy is not None
            return current if current.current_version == 2 and settled else None

        project = wait_for(retrained, what="version 2")
        version = project.current
        assert version is not None and version.val_accuracy is not None
        assert version.feedback_samples == THRESHOLD and version.state == "succeeded"
        triggers = learner.client.list_triggers(learner.project_id)
        feedback = [t for t in triggers if t.kind == "feedback_count"]
        assert len(feedback) == 1 and feedback[0].details["pending_feedback"] == THRESHOLD
        assert version.trigger_id == feedback[0].id and feedback[0].job_id == version.job_id
        wait_for(
            lambda: learner.client.list_triggers(learner.project_id)[0].state == "done",
            what="trigger done",
        )

        # The retraining job trained on the dataset plus the labelled pool images: a manifest
        # in its config, resolved by the agent in its own work folder.
        job = learner.client.get_job(version.job_id)
        assert Path(job.spec.config["dataset_path"]).resolve() == small_dataset.path.resolve()
        feedback = job.spec.config["feedback"]
        assert Path(feedback["pool_path"]).resolve() == pool.resolve()
        labelled = {(c.sample_id, c.sample_id.split("-", 1)[0]) for c in batch.candidates}
        assert {(x["sample_id"], x["label"]) for x in feedback["samples"]} == labelled
        train_size = sum(small_dataset.train_counts.values()) + THRESHOLD
        assert any(
            f"{train_size} train / " in line for line in job_log_lines(learner.client, job.id)
        )
        assert job.spec.config["pretrained_path"]
        links = [p for p in cluster.artifact_root.rglob("*") if p.is_symlink()]
        assert not links, f"the coordinator built a dataset of links: {links[:3]}"
        work = cluster.workdir / "agent-0" / "tasks" / f"{job.tasks[0].id}-a{job.tasks[0].attempt}"
        views = list(work.glob("retraining-view-*/train/*/feedback-*"))
        assert len(views) == THRESHOLD, views
        assert project.pending_feedback == 0 and project.total_feedback == THRESHOLD

        # The new model gets its own pool scoring.
        wait_for(
            lambda: learner.status().pool_scoring_job_id != "" and any(
                j.spec.labels.get("al-role") == "pool" and j.spec.name.endswith("-v2")
                for j in learner.client.list_jobs()
            ),
            what="the v2 pool scoring",
        )  # fmt: skip


def test_bad_feedback_is_refused_clearly_and_changes_nothing(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, pool: Path, tmp_path: Path
) -> None:
    with ActiveLearner(
        tmp_path / "learner",
        coordinator=cluster.address,
        dataset_path=small_dataset.path,
        pool_path=pool,
        finetune=FINETUNE,
        feedback_threshold=0,
        drift=False,
        timeout=300,
    ) as learner:
        batch = learner.select_samples_for_labeling(2)
        sample = batch.candidates[0].sample_id
        known = learner.status().classes

        with pytest.raises(ProjectNotFoundError, match="not a candidate"):
            learner.record_feedback("no-such-image.png", known[0], batch.id)
        with pytest.raises(ProjectNotFoundError, match="batch"):
            learner.record_feedback(sample, known[0], "alb-missing")
        with pytest.raises(InvalidSpecError) as unknown_class:
            learner.record_feedback(sample, "plastic", batch.id)
        assert unknown_class.value.field == "label" and "add_class" in str(unknown_class.value)
        assert learner.client.get_batch(batch.id).labelled == 0

        _, changed = learner.record_feedback(sample, known[0], batch.id)
        assert changed
        _, again = learner.record_feedback(sample, known[0], batch.id)
        assert not again  # the same label twice: idempotent
        with pytest.raises(JobStateError, match="overwrite"):
            learner.record_feedback(sample, known[1], batch.id)
        candidate, changed = learner.record_feedback(sample, known[1], batch.id, overwrite=True)
        assert changed and candidate.label == known[1]
        candidate, _ = learner.record_feedback(
            batch.candidates[1].sample_id, "plastic", batch.id, add_class=True
        )
        assert candidate.label == "plastic"
        state = learner.client.get_batch(batch.id)
        assert state.state == "done" and state.labelled == 2

        # Nothing is lost across a coordinator restart: the learner's next call reconnects.
        project_id = learner.project_id
    cluster.restart_coordinator()
    with Client(cluster.address) as client:
        after = client.get_batch(batch.id)
        assert [(c.sample_id, c.label) for c in after.candidates] == [
            (sample, known[1]),
            (batch.candidates[1].sample_id, "plastic"),
        ]
        assert client.get_learning_project(project_id).total_feedback == 2
    # storage_dir remembers the project: a new learner picks it up without paths.
    with ActiveLearner(tmp_path / "learner", coordinator=cluster.address) as again_learner:
        assert again_learner.project_id == project_id


def test_a_project_needs_a_succeeded_finetune_model(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, pool: Path
) -> None:
    with Client(cluster.address) as client:
        with pytest.raises(InvalidSpecError) as missing:
            client.create_learning_project(
                {"dataset_path": str(small_dataset.path), "pool_path": str(pool),
                 "model_job_id": "job-nope"}
            )  # fmt: skip
        assert missing.value.field == "model_job_id"
        # A job that exists but is not a succeeded finetune: a succeeded diagnostic job, and a
        # cancelled finetune.
        diagnostic = client.submit_job({"kind": "diagnostic", "config": {"duration_seconds": 0.1}})
        assert client.wait(diagnostic.id, 60).state == "succeeded"
        cancelled = client.submit_job(finetune_spec(small_dataset, 50))
        client.cancel_job(cancelled.id, reason="not a model")
        assert client.wait(cancelled.id, 60).state == "cancelled"
        for job_id, words in ((diagnostic.id, "succeeded diagnostic"), (cancelled.id, "cancelled")):
            with pytest.raises(InvalidSpecError) as wrong:
                client.create_learning_project(
                    {"dataset_path": str(small_dataset.path), "pool_path": str(pool),
                     "model_job_id": job_id}
                )  # fmt: skip
            assert wrong.value.field == "model_job_id"
            assert words in str(wrong.value) and "succeeded finetune" in str(wrong.value)
        with pytest.raises(InvalidSpecError) as strategy:
            client.create_learning_project(
                {"dataset_path": str(small_dataset.path), "pool_path": str(pool),
                 "model_job_id": "job-x", "strategy": "bald"}
            )  # fmt: skip
        assert strategy.value.field == "mc_dropout_passes"
        assert client.list_learning_projects() == [] or all(
            p.spec["model_job_id"] != "job-nope" for p in client.list_learning_projects()
        )


def test_the_monitor_fires_on_a_shifted_pool_and_not_on_a_clean_one(
    cluster: LocalCluster, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    fresh = make_demo_dataset(
        tmp_path / "fresh", seed=11, patch_size=32, train_per_class=1, val_per_class=6
    )
    clean, dark = tmp_path / "clean", tmp_path / "dark"
    clean.mkdir()
    dark.mkdir()
    for path in sorted((fresh.path / "val").glob("*/*.png")):
        name = f"{path.parent.name}-{path.name}"
        shutil.copy(path, clean / name)
        with Image.open(path) as opened:
            Image.eval(opened.convert("RGB"), lambda v: int(v * 0.3)).save(dark / name)

    with Client(cluster.address) as client:
        spec = {
            "name": "drift-model",
            "config": {"dataset_path": str(small_dataset.path), **FINETUNE},
        }
        model = client.wait(client.submit_job(spec).id, 300)
        assert model.state == "succeeded", model.error
        fired: dict[str, list[str]] = {}
        policies = {
            "clean": (clean, {"feedback_threshold": 0, "drift": True}),
            "dark": (dark, {"feedback_threshold": 0, "drift": True}),
            # A model trained for one epoch is unsure of everything; and it is over a second old.
            "stale": (
                clean,
                {"feedback_threshold": 0, "drift": False, "max_age_seconds": 1,
                 "uncertainty_threshold": 0.05},
            ),
        }  # fmt: skip
        for name, (pool_dir, triggers) in policies.items():
            project = client.create_learning_project(
                {"name": name, "dataset_path": str(small_dataset.path), "pool_path": str(pool_dir),
                 "model_job_id": model.id, "triggers": triggers}
            )  # fmt: skip
            for job_id in (project.pool_scoring_job_id, project.reference_scoring_job_id):
                assert client.wait(job_id, 300).state == "succeeded"
            client.check_triggers(project.id)
            stored = client.list_triggers(project.id)
            fired[name] = sorted(t.kind for t in stored)
            for trigger in stored:
                if trigger.kind in ("drift", "uncertainty"):
                    assert trigger.details["scoring_job_id"] == project.pool_scoring_job_id
                if trigger.kind == "drift":
                    expected = sum(small_dataset.val_counts.values())
                    assert trigger.details["reference_size"] == expected
                if trigger.kind == "uncertainty":
                    assert trigger.details["mean_normalised_entropy"] >= 0.05
            # Evaluating again fires nothing new: one trigger per kind and model or scoring.
            assert client.check_triggers(project.id) == []
    assert fired == {"clean": [], "dark": ["drift"], "stale": ["time", "uncertainty"]}, fired


def test_the_embedded_learner_keeps_its_project_across_restarts(
    small_dataset: DemoDatasetInfo, pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MATREC_COORDINATOR", raising=False)
    storage = tmp_path / "embedded"
    with ActiveLearner(
        storage, dataset_path=small_dataset.path, pool_path=pool, finetune=FINETUNE, timeout=300
    ) as learner:
        batch = learner.select_samples_for_labeling(2, "coreset")
        learner.record_feedback(
            batch.candidates[0].sample_id, learner.status().classes[0], batch.id
        )
        project_id = learner.project_id
    # The embedded coordinator is gone; a new learner on the same storage_dir starts it again
    # on the same database and finds the project, its batch and the label.
    with ActiveLearner(storage, timeout=300) as learner:
        assert learner.project_id == project_id
        project = learner.status()
        assert project.total_feedback == 1 and project.pending_feedback == 1
        assert learner.client.get_batch(batch.id).labelled == 1
        second = learner.select_samples_for_labeling(2, "coreset")
        assert not {c.sample_id for c in second.candidates} & {
            c.sample_id for c in batch.candidates
        }
