"""`matrec-ctl active-learning` and `matrec-ctl monitor` against a real coordinator and agent: a
project is created from a tiny fine-tune, a batch is selected, exported as CSV, labelled and
imported; status, triggers and the monitor show what the coordinator stores (`Client`), bad input
is refused with a message naming what is wrong, and a retraining job answers the fired trigger.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from matrec.common.active_learning.selection import STRATEGIES
from matrec.sdk.ctl.active_learning import Strategy
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from matrec.sdk.labelling_files import EXPORT_COLUMNS
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.types import LabellingBatch
from support.cluster_jobs import finetune_spec, wait_until

pytestmark = pytest.mark.slow

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
THRESHOLD = 4
BATCH_ID = re.compile(r"\balb-[0-9a-f]{12}\b")


def ctl(
    address: str, *args: str, columns: int = 200, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [*CTL, "-c", address, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def truth(sample_id: str) -> str:
    """Pool images are named <class>-<file>: the label a person would give."""
    return sample_id.split("-", 1)[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # The coordinator's own monitor checks once at start, then not again during the test: the
    # triggers fire when the CLI asks.
    with LocalCluster(
        tmp_path_factory.mktemp("al-cli"),
        agents=1,
        agent_cpus=2,
        coordinator_args=["--trigger-check-interval", "3600"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDatasetInfo:
    root = tmp_path_factory.mktemp("al-data") / "demo"
    return make_demo_dataset(root, seed=0, patch_size=32, train_per_class=8, val_per_class=3)


@pytest.fixture(scope="module")
def pool(dataset: DemoDatasetInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two validation images per class, in one flat folder."""
    target = tmp_path_factory.mktemp("al-pool")
    for folder in sorted((dataset.path / "val").iterdir()):
        for image in sorted(folder.glob("*.png"))[:2]:
            shutil.copy(image, target / f"{folder.name}-{image.name}")
    return target


@pytest.fixture(scope="module")
def model_job(cluster: LocalCluster, dataset: DemoDatasetInfo) -> str:
    with cluster.client() as client:
        job = client.submit_job(finetune_spec(dataset, epochs=1, dropout_rate=0.2))
        job = client.wait(job.id, 240)
    assert job.state == "succeeded", job.error
    return job.id


@dataclass(frozen=True)
class Created:
    result: subprocess.CompletedProcess[str]
    project_id: str


@pytest.fixture(scope="module")
def created(
    cluster: LocalCluster,
    dataset: DemoDatasetInfo,
    pool: Path,
    model_job: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Created:
    """`create` with relative paths (from the dataset's parent folder), then the pool scored."""
    spec = tmp_path_factory.mktemp("al-spec") / "project.json"
    spec.write_text(json.dumps({"name": "from-file", "strategy": "margin"}))
    args = [
        "active-learning", "create", "--spec", str(spec), "--dataset", dataset.path.name,
        "--pool", str(pool), "--model-job", model_job, "--name", "cli-al",
        "--feedback-threshold", str(THRESHOLD), "--no-drift", "--retrain-epochs", "1",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [*CTL, "-c", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=dataset.path.parent,
    )
    assert result.returncode == 0, result.stderr
    project_id = result.stdout.strip()
    with cluster.client() as client:
        project = client.get_learning_project(project_id)
        assert project.pool_scoring_job_id, "creating the project scored nothing"
        scored = client.wait(project.pool_scoring_job_id, 180)
    assert scored.state == "succeeded", scored.error
    return Created(result, project_id)


@dataclass(frozen=True)
class Labelled:
    selected: subprocess.CompletedProcess[str]
    batch: LabellingBatch  # as selected, before labelling
    exported: list[dict[str, str]]
    exported_json: list[dict[str, object]]
    imported: subprocess.CompletedProcess[str]
    imported_again: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def labelled(
    cluster: LocalCluster, created: Created, tmp_path_factory: pytest.TempPathFactory
) -> Labelled:
    """select --count 4; export as CSV; fill in the labels; import (twice)."""
    address, project_id = cluster.address, created.project_id
    selected = ctl(address, "active-learning", "select", project_id, "--count", str(THRESHOLD))
    assert selected.returncode == 0, selected.stderr
    found = BATCH_ID.search(selected.stdout)
    assert found, selected.stdout
    with cluster.client() as client:
        batch = client.get_batch(found.group())

    folder = tmp_path_factory.mktemp("al-files")
    csv_file = folder / "batch.csv"
    written = ctl(address, "active-learning", "export", batch.id, "--output", str(csv_file))
    assert written.returncode == 0, written.stderr
    with csv_file.open(newline="") as handle:
        exported = list(csv.DictReader(handle))
    as_json = ctl(address, "active-learning", "export", batch.id, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr

    # A labelling tool fills in the label column.
    filled = folder / "labelled.csv"
    with filled.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(EXPORT_COLUMNS))
        writer.writeheader()
        writer.writerows({**row, "label": truth(row["sample_id"])} for row in exported)
    imported = ctl(address, "active-learning", "import", batch.id, str(filled))
    again = ctl(address, "active-learning", "import", batch.id, str(filled))
    return Labelled(selected, batch, exported, json.loads(as_json.stdout), imported, again)


def test_the_strategy_choices_are_the_selection_strategies() -> None:
    assert tuple(s.value for s in Strategy) == STRATEGIES


def test_create_prints_the_id_and_stores_the_spec(
    cluster: LocalCluster, created: Created, dataset: DemoDatasetInfo, pool: Path, model_job: str
) -> None:
    assert re.fullmatch(r"alp-[0-9a-f]{12}", created.project_id)
    with cluster.client() as client:
        project = client.get_learning_project(created.project_id)
    spec = project.spec
    # Flags override the spec file; the relative --dataset became absolute against the cwd.
    assert spec["name"] == "cli-al" and spec["strategy"] == "margin"
    assert spec["dataset_path"] == str(dataset.path.resolve()) and spec["pool_path"] == str(pool)
    assert spec["model_job_id"] == model_job
    assert spec["triggers"]["feedback_threshold"] == THRESHOLD
    assert spec["triggers"]["drift"] is False and spec["triggers"]["auto_retrain"] is False
    assert spec["retrain"] == {"epochs": 1}
    # What happens next names the scoring job and the next command.
    assert project.pool_scoring_job_id in created.result.stderr
    assert f"active-learning select {project.id}" in created.result.stderr
    assert "Traceback" not in created.result.stderr


def test_select_prints_the_batch_in_the_stored_order(
    cluster: LocalCluster, labelled: Labelled, pool: Path
) -> None:
    batch = labelled.batch
    assert len(batch.candidates) == THRESHOLD and batch.strategy == "margin"
    assert {c.sample_id for c in batch.candidates} <= {p.name for p in pool.iterdir()}
    lines = labelled.selected.stdout.splitlines()
    assert lines[0].startswith(f"batch {batch.id} · margin · 0/{THRESHOLD} labelled · open")
    # One row per candidate, in the batch's order, with its predicted class and scores.
    positions = []
    for candidate in batch.candidates:
        row = next(line for line in lines if candidate.sample_id in line)
        positions.append(lines.index(row))
        assert candidate.predicted_class in row
        assert f"{candidate.score:.4f}" in row
        assert f"{candidate.scores['entropy']:.4f}" in row
    assert positions == sorted(positions)


def test_export_writes_the_batch_as_csv_and_json(labelled: Labelled) -> None:
    batch = labelled.batch
    assert [list(row) for row in labelled.exported] == [list(EXPORT_COLUMNS)] * THRESHOLD
    expected = [
        {
            "sample_id": c.sample_id,
            "sample_uri": c.sample_uri,
            "predicted_class": c.predicted_class,
            "score": c.score,
            "label": None,
        }
        for c in batch.candidates
    ]
    assert labelled.exported_json == expected
    as_csv = [{**row, "score": float(row["score"]), "label": row["label"] or None} for row in
              labelled.exported]  # fmt: skip
    assert as_csv == expected
    assert all(Path(row["sample_uri"]).is_file() for row in labelled.exported)


def test_import_records_every_label_once(cluster: LocalCluster, labelled: Labelled) -> None:
    assert labelled.imported.returncode == 0, labelled.imported.stderr
    assert "recorded 4, unchanged 0, failed 0, without a label 0" in labelled.imported.stdout
    with cluster.client() as client:
        batch = client.get_batch(labelled.batch.id)
    assert [c.label for c in batch.candidates] == [truth(c.sample_id) for c in batch.candidates]
    assert batch.state == "done" and batch.labelled == THRESHOLD
    # The same file again: nothing changes, and that is not a failure.
    assert labelled.imported_again.returncode == 0, labelled.imported_again.stderr
    assert "recorded 0, unchanged 4, failed 0" in labelled.imported_again.stdout


def test_status_shows_the_project_its_batches_and_feedback(
    cluster: LocalCluster, created: Created, labelled: Labelled
) -> None:
    address, project_id = cluster.address, created.project_id
    shown = ctl(address, "active-learning", "status", project_id)
    assert shown.returncode == 0, shown.stderr
    with cluster.client() as client:
        project = client.get_learning_project(project_id)
    batch_row = next(line for line in shown.stdout.splitlines() if labelled.batch.id in line)
    assert f"{THRESHOLD}/{THRESHOLD}" in batch_row and "done" in batch_row
    assert f"{project.pending_feedback} new (not yet trained on)" in shown.stdout
    assert f"{project.total_feedback} in all" in shown.stdout
    assert project.total_feedback >= THRESHOLD
    version = project.versions[0]
    assert version.val_accuracy is not None
    version_row = next(line for line in shown.stdout.splitlines() if "v1 (current)" in line)
    assert version.job_id in version_row and f"{version.val_accuracy:.4f}" in version_row
    assert ", ".join(project.classes) in shown.stdout
    assert f"{project.pool_scoring_job_id} succeeded" in shown.stdout

    listed = ctl(address, "active-learning", "status")
    row = next(line for line in listed.stdout.splitlines() if project_id in line)
    assert "cli-al" in row and "v1" in row and "margin" in row

    as_json = json.loads(ctl(address, "active-learning", "status", project_id, "--json").stdout)
    assert as_json["project"]["total_feedback"] == project.total_feedback
    stored = {b["id"]: b["labelled"] for b in as_json["batches"]}
    assert stored[labelled.batch.id] == THRESHOLD

    # A batch: its candidates with their labels (the column before the time they were given).
    batch_view = ctl(address, "active-learning", "status", labelled.batch.id)
    for candidate in labelled.batch.candidates:
        row = next(line for line in batch_view.stdout.splitlines() if candidate.sample_id in line)
        assert re.split(r"\s{2,}", row.strip())[-2] == truth(candidate.sample_id), row


def test_bad_feedback_and_bad_files_are_refused_clearly(
    cluster: LocalCluster, created: Created, tmp_path: Path
) -> None:
    address = cluster.address
    selected = ctl(address, "active-learning", "select", created.project_id, "-n", "2", "--json")
    assert selected.returncode == 0, selected.stderr
    batch = json.loads(selected.stdout)
    first, second = (c["sample_id"] for c in batch["candidates"])
    with cluster.client() as client:
        classes = client.get_learning_project(created.project_id).classes

    unknown = ctl(address, "active-learning", "feedback", batch["id"], "no-such.png", classes[0])
    assert unknown.returncode == 1
    assert "'no-such.png' is not a candidate of batch" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    new_class = ctl(address, "active-learning", "feedback", batch["id"], first, "plastic")
    assert new_class.returncode == 2
    assert "'plastic' is not one of the model's classes" in new_class.stderr
    assert "pass --add-class" in new_class.stderr

    recorded = ctl(address, "active-learning", "feedback", batch["id"], first, truth(first))
    assert recorded.returncode == 0 and recorded.stdout.startswith("recorded"), recorded.stderr
    same = ctl(address, "active-learning", "feedback", batch["id"], first, truth(first))
    assert same.returncode == 0 and same.stdout.startswith("unchanged"), same.stderr
    other = next(c for c in classes if c != truth(first))
    conflict = ctl(address, "active-learning", "feedback", batch["id"], first, other)
    assert conflict.returncode == 1 and "pass --overwrite" in conflict.stderr

    # Files that are not batch files: an error before anything is recorded.
    extra = tmp_path / "extra.csv"
    extra.write_text(f"sample_id,label,colour\n{second},{truth(second)},red\n")
    no_id = tmp_path / "no-id.json"
    no_id.write_text(json.dumps([{"sample_uri": "x.png", "label": truth(second)}]))
    for path, message in ((extra, "unknown columns 'colour'"), (no_id, "no sample_id column")):
        refused = ctl(address, "active-learning", "import", batch["id"], str(path))
        assert refused.returncode == 2, refused.stdout
        assert str(path) in refused.stderr and message in refused.stderr
    with cluster.client() as client:
        assert client.get_batch(batch["id"]).labelled == 1

    # One bad row fails alone, with its reason; the others are recorded; exit code 1.
    mixed = tmp_path / "mixed.json"
    mixed.write_text(
        json.dumps([
            {"sample_id": "ghost.png", "label": classes[0]},
            {"sample_id": second, "label": truth(second)},
        ])
    )  # fmt: skip
    partly = ctl(address, "active-learning", "import", batch["id"], str(mixed))
    assert partly.returncode == 1
    assert "recorded 1, unchanged 0, failed 1, without a label 0" in partly.stdout
    failure = next(line for line in partly.stdout.splitlines() if "ghost.png" in line)
    assert "item 1" in failure and "not a candidate of batch" in failure
    with cluster.client() as client:
        after = client.get_batch(batch["id"])
    assert after.state == "done" and [c.label for c in after.candidates] == [
        truth(first),
        truth(second),
    ]

    missing = ctl(address, "active-learning", "select", "alp-000000000000", "--count", "1")
    assert missing.returncode == 1
    assert "project 'alp-000000000000' not found" in missing.stderr


def test_monitor_once_fires_the_feedback_trigger(
    cluster: LocalCluster, created: Created, labelled: Labelled
) -> None:
    address, project_id = cluster.address, created.project_id
    with cluster.client() as client:
        assert client.list_triggers(project_id) == []
    once = ctl(address, "monitor", project_id, "--once", "--check-interval", "5")
    assert once.returncode == 0, once.stderr
    with cluster.client() as client:
        fired = client.list_triggers(project_id)
        project = client.get_learning_project(project_id)
    assert [t.kind for t in fired] == ["feedback_count"] and fired[0].state == "fired"
    trigger = fired[0]
    assert trigger.details["pending_feedback"] == project.pending_feedback >= THRESHOLD
    line = f"project {project_id}: trigger {trigger.id} fired: feedback_count"
    assert line in once.stdout
    assert f"({project.pending_feedback} new labels ≥ {THRESHOLD})" in once.stdout
    assert f"retrain {project_id} --trigger {trigger.id}" in once.stdout

    # A trigger fires once: the next check shows it, but fires nothing.
    again = ctl(address, "monitor", "--once")
    assert again.returncode == 0, again.stderr
    assert "no trigger fired" in again.stdout and trigger.id in again.stdout

    listed = ctl(address, "active-learning", "triggers", project_id)
    row = next(line for line in listed.stdout.splitlines() if trigger.id in line)
    assert "feedback_count" in row and "fired" in row
    as_json = json.loads(ctl(address, "active-learning", "triggers", project_id, "--json").stdout)
    assert [t["id"] for t in as_json] == [trigger.id]


def test_monitor_runs_until_interrupted(cluster: LocalCluster, created: Created) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    command = [*CTL, "-c", cluster.address, "monitor", "--check-interval", "1"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("monitoring 1 projects, checking every 1s"), first
        project_line = process.stdout.readline()
        assert f"project {created.project_id}: model v1" in project_line
        time.sleep(2.5)  # a few more checks
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    match = re.search(r"stopped monitoring after (\d+) checks", out)
    assert match and int(match.group(1)) >= 2, out
    assert "Traceback" not in err


def test_retrain_wait_answers_the_trigger_with_a_new_version(
    cluster: LocalCluster, created: Created, labelled: Labelled
) -> None:
    address, project_id = cluster.address, created.project_id
    with cluster.client() as client:
        if not client.list_triggers(project_id):
            client.check_triggers(project_id)
        trigger = client.list_triggers(project_id)[0]
    result = ctl(
        address, "active-learning", "retrain", project_id, "--trigger", trigger.id, "--wait",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"model version 2 of {project_id}" in result.stdout
    with cluster.client() as client:
        job_id = client.get_learning_project(project_id).versions[1].job_id
        assert f"job {job_id} succeeded" in result.stdout

        def settled() -> bool:
            project = client.get_learning_project(project_id)
            return project.current_version == 2 and project.versions[1].val_accuracy is not None

        wait_until(settled, 30, "version 2 recorded with its accuracy")
        project = client.get_learning_project(project_id)
        wait_until(lambda: client.list_triggers(project_id)[0].state == "done", 30, "trigger done")
    version = project.versions[1]
    assert version.trigger_id == trigger.id and version.feedback_samples == project.total_feedback
    shown = ctl(address, "active-learning", "status", project_id)
    row = next(line for line in shown.stdout.splitlines() if "v2 (current)" in line)
    assert job_id in row and "succeeded" in row and trigger.id in row
    assert version.val_accuracy is not None and f"{version.val_accuracy:.4f}" in row
    assert project.pending_feedback == 0
    triggers_row = next(
        line
        for line in ctl(address, "active-learning", "triggers", project_id).stdout.splitlines()
        if trigger.id in line
    )
    assert "done" in triggers_row and job_id in triggers_row
