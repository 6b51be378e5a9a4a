"""The seed's unified training API on real processes: `train_with_all_improvements` with every
flag on against the embedded default (a coordinator and an agent it starts and stops), the
EnhancedTrainingAPI's train / select / label / retrain flow, and `python -m
matrec.sdk.training_api` with the seed's flags. Test-sized: resnet18, 32 px, 1 epoch, 2 trials."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from matrec.sdk.errors import MatrecError
from matrec.sdk.hpo import DEFAULT_HP_SPACE
from matrec.sdk.training_api import (
    LOCK_FILE,
    EnhancedTrainingAPI,
    TrainingResult,
    horovod_installed,
    plan_workers,
    train_with_all_improvements,
)

SETTINGS_ENV = (
    "MATREC_COORDINATOR",
    "MATREC_TOKEN",
    "MATREC_DATABASE_URL",
    "SUPABASE_DB_URL",
    "SUPABASE_URL",
    "SUPABASE_KEY",
    "MATREC_SUPABASE_URL",
    "MATREC_SUPABASE_KEY",
    "MATREC_BASE_DIR",
    "MATREC_NUM_WORKERS",
    "NUM_WORKERS",
    "MATREC_VISUALIZATION_LEVEL",
    "VISUALIZATION_LEVEL",
    "MATREC_ENABLE_TRANSFER_LEARNING",
    "ENABLE_TRANSFER_LEARNING",
    "MATREC_ENABLE_HYPERPARAMETER_OPT",
    "ENABLE_HYPERPARAMETER_OPT",
    "MATREC_ENABLE_ACTIVE_LEARNING",
    "ENABLE_ACTIVE_LEARNING",
    "MATREC_USE_DISTRIBUTED",
    "MATREC_DEVICE",
    "MATREC_PRETRAINED_PATH",
)
FINETUNE = {"model": "resnet18", "image_size": 32, "batch_size": 16}
BATCH_SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No configuration leaks in from the machine: no MATREC_/seed variables, an empty file."""
    empty = tmp_path_factory.mktemp("config") / "config.toml"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        for name in SETTINGS_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("MATREC_CONFIG", str(empty))
        yield empty


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDatasetInfo:
    root = tmp_path_factory.mktemp("data") / "demo"
    return make_demo_dataset(root, seed=0, patch_size=32, train_per_class=12, val_per_class=4)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh patches of the same textures, flat and unlabelled (file names carry the truth)."""
    fresh = make_demo_dataset(
        tmp_path_factory.mktemp("fresh") / "d", seed=7, patch_size=32, train_per_class=1,
        val_per_class=2,
    )  # fmt: skip
    target = tmp_path_factory.mktemp("pool")
    for image in sorted((fresh.path / "val").glob("*/*.png")):
        shutil.copy(image, target / f"{image.parent.name}-{image.name}")
    return target


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("database") / "matrec.db"


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, pool: Path, database: Path
) -> Iterator[EnhancedTrainingAPI]:
    """One embedded cluster for the active-learning flow and the command line's run, storing
    in a database of its own (as it would in Supabase's Postgres)."""
    with EnhancedTrainingAPI(
        base_dir=tmp_path_factory.mktemp("api"),
        database_url=f"sqlite:///{database}",
        num_workers=2,
        enable_hyperparameter_optimization=False,
        use_distributed=False,
        pool_path=pool,
        feedback_threshold=3,
        timeout=300,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def first_model(api: EnhancedTrainingAPI, dataset: DemoDatasetInfo) -> TrainingResult:
    """A model trained by the module's API (no study, one process): the active-learning
    project starts from it and the command line's run transfers from it."""
    return api.train_model(dataset.path, "hybrid", epochs=1, dropout_rate=0.2, **FINETUNE)


def expected_ranks(asked: int, agent_cpus: int, device: str) -> int:
    """The ranks a fine-tune asking for `asked` gets on an agent offering `agent_cpus` CPUs
    (and this machine's GPUs when it trained on one), splitting the batch evenly."""
    if device == "cuda":
        import torch

        capacity = torch.cuda.device_count()
    else:
        capacity = agent_cpus
    ranks = min(asked, capacity)
    return max(k for k in range(1, ranks + 1) if BATCH_SIZE % k == 0)


def assert_report_matches(result: TrainingResult) -> None:
    assert result.report_path is not None and result.report_json_path is not None
    html = Path(result.report_path).read_text()
    assert result.job_id in html
    document = json.loads(Path(result.report_json_path).read_text())
    assert document["type"] == "job_report" and document["job"]["id"] == result.job_id
    assert document["final_val_accuracy"] == pytest.approx(result.val_accuracy)
    assert document["evaluation"]["accuracy"] == pytest.approx(result.evaluation.accuracy)


@pytest.mark.slow
def test_train_with_all_improvements_on_the_embedded_default(
    dataset: DemoDatasetInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "base"
    with caplog.at_level("WARNING", logger="matrec.sdk.training_api"):
        result = train_with_all_improvements(
            dataset.path,
            model_type="hybrid",
            use_transfer_learning=True,
            optimize_hyperparams=True,
            distributed=True,
            num_workers=4,
            base_dir=base,
            supabase_url="https://project.supabase.co",
            supabase_key="not-a-real-key",
            epochs=1,
            max_trials=2,
            timeout=400,
            **FINETUNE,
        )

    assert isinstance(result, TrainingResult)
    # The study chose the hyperparameters, inside the default space, and the final job used them.
    assert result.hpo is not None and result.hpo_study_id == result.hpo.study_id
    assert result.hpo.counts.get("completed") == 2
    assert result.best_params is not None and set(result.best_params) == set(DEFAULT_HP_SPACE)
    for name, value in result.best_params.items():
        assert DEFAULT_HP_SPACE[name]["min"] <= value <= DEFAULT_HP_SPACE[name]["max"]
        assert result.config[name] == value
    assert isinstance(result.best_params["dense_units"], int)
    assert result.best_params["dense_units"] % 64 == 0
    assert result.hpo_best_value == max(
        t.objective_value for t in result.hpo.trials if t.objective_value is not None
    )
    # The final model, its accuracy and its reports.
    assert result.val_accuracy == pytest.approx(result.evaluation.accuracy)
    assert sorted(result.evaluation.classes) == sorted(dataset.val_counts)
    assert Path(result.model_path).is_file()
    assert_report_matches(result)
    assert result.study_report_path is not None
    assert result.hpo_study_id in Path(result.study_report_path).read_text()
    # Distributed over as many ranks as this machine allows.
    # The embedded agent offers min(num_workers, cores) CPUs.
    ranks = expected_ranks(4, min(4, os.cpu_count() or 1), result.device)
    assert result.workers_per_host == result.config["workers_per_host"] == ranks
    # What fell back: no local pretrained model, SQLite instead of Supabase, and what this
    # machine lacks (CPU cores for 4 ranks, a GPU).
    assert result.pretrained_path is None and "pretrained_path" not in result.config
    assert result.config.get("strategy", "full") == "full"  # no gradual unfreezing of nothing
    assert any("from scratch" in note for note in result.degraded)
    storage = [note for note in result.degraded if note.startswith("storage:")]
    assert len(storage) == 1 and "Supabase URL is configured" in storage[0]
    assert "MATREC_DATABASE_URL" in storage[0] and str(base / "cluster") in storage[0]
    assert "not-a-real-key" not in str(result.degraded)
    assert any("workers asked for" in note for note in result.degraded) == (ranks < 4)
    without_horovod = ranks > 1 and not horovod_installed()
    assert any("Horovod is not installed" in note for note in result.degraded) == without_horovod
    if result.device == "cpu":
        assert any("no agent has a GPU" in note for note in result.degraded)
    # Each fallback is reported once, as a warning.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for note in result.degraded:
        assert warnings.count(note) == 1
    # The embedded cluster was stopped: its lock is free again.
    with (base / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.slow
def test_train_select_label_and_retrain_from_feedback(
    api: EnhancedTrainingAPI,
    first_model: TrainingResult,
    pool: Path,
    database: Path,
    tmp_path: Path,
) -> None:
    assert api.embedded
    fresh = EnhancedTrainingAPI(coordinator=api.address, base_dir=tmp_path)
    with fresh, pytest.raises(MatrecError, match="call train_model first"):
        fresh.get_samples_for_labeling(3)
    switched_off = EnhancedTrainingAPI(
        coordinator=api.address, base_dir=tmp_path, enable_active_learning=False
    )
    with switched_off, pytest.raises(MatrecError, match="active learning is off"):
        switched_off.get_samples_for_labeling(3)

    result = first_model
    assert result.best_params is None and result.hpo_study_id is None
    assert result.workers_per_host == 1 and result.study_report_path is None
    assert Path(result.model_path).is_file()
    assert_report_matches(result)
    assert any("from scratch" in note for note in result.degraded)
    # The configured database holds the jobs; nothing fell back to the default SQLite file.
    assert not any(note.startswith("storage:") for note in result.degraded)
    assert database.is_file() and not (api.base_dir / "cluster/coordinator/matrec.db").exists()

    batch = api.get_samples_for_labeling(3, "margin")
    assert len(batch.candidates) == 3 and batch.state == "open"
    assert {c.sample_id for c in batch.candidates} <= {p.name for p in pool.iterdir()}
    assert [c.score for c in batch.candidates] == sorted(
        (c.score for c in batch.candidates), reverse=True
    )
    for candidate in batch.candidates[:2]:
        truth = candidate.sample_id.split("-", 1)[0]
        labelled = api.record_labeling_feedback(candidate.sample_id, truth, batch.id)
        assert labelled.label == truth and labelled.sample_id == candidate.sample_id

    # Two labels wait, the threshold is three: nothing happens yet.
    assert api.retrain_from_feedback() is None
    with pytest.raises(ValueError, match="this project's models are 'hybrid'"):
        api.retrain_from_feedback("cnn", feedback_threshold=1)

    last = batch.candidates[2]
    api.record_labeling_feedback(last.sample_id, last.sample_id.split("-", 1)[0], batch.id)
    retrained = api.retrain_from_feedback("hybrid")
    assert retrained is not None and retrained.version == 2
    assert retrained.val_accuracy is not None and 0.0 <= retrained.val_accuracy <= 1.0
    assert Path(retrained.model_path).is_file() and retrained.model_path != result.model_path
    project = api.client.get_learning_project(batch.project_id)
    assert project.current_version == 2 and project.total_feedback == 3
    assert project.versions[0].job_id == result.job_id


@pytest.mark.slow
def test_the_command_line_accepts_the_seeds_flags(
    api: EnhancedTrainingAPI, dataset: DemoDatasetInfo, first_model: TrainingResult, tmp_path: Path
) -> None:
    """Against the module's cluster, named by MATREC_COORDINATOR (a configured coordinator),
    transferring from the module's first model."""
    command = [
        sys.executable, "-m", "matrec.sdk.training_api",
        "--dataset", str(dataset.path), "--model-type", "hybrid", "--use-distributed",
        "--optimize-hyperparams", "--use-transfer-learning", "--num-workers", "4",
        "--epochs", "1", "--max-trials", "2",
        "--image-size", "32", "--batch-size", str(BATCH_SIZE), "--base-dir", str(tmp_path),
        "--pretrained-path", first_model.model_path, "--json",
    ]  # fmt: skip
    env = {**os.environ, "MATREC_COORDINATOR": api.address}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)

    assert set(printed["best_params"]) == set(DEFAULT_HP_SPACE) and printed["hpo_study_id"]
    assert Path(printed["report_path"]).is_file()
    assert printed["report_path"].startswith(str(tmp_path / "reports"))
    job = api.client.get_job(printed["job_id"])
    assert job.state == "succeeded"
    assert job.result["val_accuracy"] == pytest.approx(printed["val_accuracy"])
    assert job.spec.config["workers_per_host"] == printed["workers_per_host"]
    # The module's agent offers min(2, cores) CPUs: fewer than 4 ranks.
    ranks = expected_ranks(4, min(2, os.cpu_count() or 1), printed["device"])
    assert printed["workers_per_host"] == ranks < 4
    assert any(note.startswith("distributed: 4 workers") for note in printed["degraded"])
    # A configured coordinator: no embedded cluster, so nothing about its storage.
    assert not any(note.startswith("storage:") for note in printed["degraded"])
    assert not (tmp_path / "cluster").exists()
    # Transfer learning from the given model: gradual unfreezing, nothing trained from scratch.
    assert printed["pretrained_path"] == first_model.model_path
    assert job.spec.config["pretrained_path"] == first_model.model_path
    assert job.spec.config["strategy"] == "gradual"
    assert not any("from scratch" in note for note in printed["degraded"])
    # Each fallback is one warning line on stderr.
    for note in printed["degraded"]:
        assert done.stderr.count(note) == 1


def test_bad_configuration_fails_before_anything_starts(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "matrec.sdk.training_api", "--dataset", str(tmp_path)]
    env = {**os.environ, "NUM_WORKERS": "abc", "MATREC_BASE_DIR": str(tmp_path / "base")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "NUM_WORKERS" in done.stderr and "whole number from 1 to 64" in done.stderr
    assert not (tmp_path / "base" / "cluster").exists()


def test_a_second_api_on_the_same_base_dir_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with (base / LOCK_FILE).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(MatrecError, match="another EnhancedTrainingAPI"):
            EnhancedTrainingAPI(base_dir=base)
    assert not (base / "cluster").exists()


@pytest.mark.parametrize(
    ("num_workers", "batch_size", "capacity", "ranks", "said"),
    [
        (4, 32, 16, 4, []),
        (4, 32, 2, 2, ["offers 2 CPUs: 2 ranks"]),
        (4, 32, 1, 1, ["offers 1 CPU: 1 rank"]),
        (4, 30, 8, 3, ["does not split into 4 equal parts: 3 ranks"]),
        (3, 16, 8, 2, ["does not split into 3"]),
        (4, 32, 0, 1, ["offers 0 CPUs: 1 rank"]),
        (1, 32, 8, 1, ["num_workers is 1"]),
    ],
)
def test_plan_workers(
    num_workers: int, batch_size: int, capacity: int, ranks: int, said: list[str]
) -> None:
    planned, notes = plan_workers(num_workers, batch_size, capacity, "CPU")
    assert planned == ranks and batch_size % planned == 0
    assert len(notes) == len(said)
    for note, text in zip(notes, said, strict=True):
        assert text in note


def test_plan_workers_with_batch_size_auto_takes_every_worker_that_fits() -> None:
    # Any number of ranks divides batch_size auto: they choose a multiple of themselves.
    assert plan_workers(3, "auto", 8, "CPU") == (3, [])
    planned, notes = plan_workers(6, "auto", 4, "CPU")
    assert planned == 4 and len(notes) == 1 and "offers 4 CPUs" in notes[0]


def test_the_seed_module_names_are_aliases() -> None:
    from matrec.sdk import active_learning, hpo, transfer
    from matrec.sdk.hyperparameter_optimization import HPOResult, optimize_hyperparameters
    from matrec.sdk.transfer_learning import TransferResult, transfer_learn

    assert transfer_learn is transfer.transfer_learn and TransferResult is transfer.TransferResult
    assert optimize_hyperparameters is hpo.optimize_hyperparameters and HPOResult is hpo.HPOResult
    assert active_learning.ActiveLearner.__module__ == "matrec.sdk.active_learning"
