"""The seed's examples, each as written (paths filled in, test-sized settings added), against
the embedded default, returning the documented result objects:

- the unified API: ``from matrec.sdk import EnhancedTrainingAPI, train_with_all_improvements``
  with the seed's parameters;
- the seed's module names: ``transfer_learning.transfer_learn``,
  ``hyperparameter_optimization.optimize_hyperparameters``, ``active_learning.ActiveLearner``;
- the command lines: ``matrec-ctl train ...``, ``matrec-ctl active-learning --operation ...``,
  ``matrec-ctl monitor --check-interval 3600``, ``matrec-ctl distributed --operation
  start-workers --num-workers 2`` (stopped with SIGINT), ``matrec-ctl config show`` and
  ``python -m matrec.sdk.training_api`` with the seed's flags.

What these calls do in depth is tested in test_training_api.py, test_cli_active_learning.py and
the engines' own tests; here the seed's spellings run and return the documented types. The
EnhancedTrainingAPI's embedded cluster gives transfer_learn its starting model and runs `python
-m`; the ActiveLearner's embedded cluster (its storage dir) holds the project the
`--operation` commands and the monitor work on. Test-sized: resnet18, 32 px, 1 epoch, 2 trials.
"""

from __future__ import annotations

import fcntl
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
from typing import Any

import pytest
from matrec.sdk.config import SETTINGS
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from matrec.sdk.evaluation import Evaluation
from matrec.sdk.hpo import DEFAULT_HP_SPACE, HPOResult
from matrec.sdk.local_cluster import LocalCluster
from matrec.sdk.training_api import LOCK_FILE, EnhancedTrainingAPI, TrainingResult
from matrec.sdk.types import Candidate, LabellingBatch, RetrainingTrigger
from support.cluster_jobs import wait_until

pytestmark = pytest.mark.slow

CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
FINETUNE = {"model": "resnet18", "image_size": 32, "batch_size": 16}
# The seed's flags, then the test-sized ones.
SEED_TRAIN_FLAGS = [
    "--model-type", "hybrid", "--use-distributed", "--optimize-hyperparams",
    "--use-transfer-learning", "--num-workers", "4",
]  # fmt: skip
TEST_SIZED_FLAGS = [
    "--epochs",
    "1",
    "--max-trials",
    "2",
    "--image-size",
    "32",
    "--batch-size",
    "16",
]
TRAINING_RESULT_KEYS = {
    "job_id", "model_path", "val_accuracy", "best_params", "hpo_study_id", "report_path",
    "study_report_path", "workers_per_host", "device", "degraded", "evaluation",
}  # fmt: skip


def truth(sample_id: str) -> str:
    """Pool images are named <class>-<file>: the label a person would give."""
    return sample_id.split("-", 1)[0]


def ctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def assert_training_result(result: TrainingResult, dataset: DemoDatasetInfo) -> None:
    """A TrainingResult of the seed's all-improvements training, as documented."""
    assert isinstance(result, TrainingResult) and isinstance(result.evaluation, Evaluation)
    assert 0.0 <= result.val_accuracy <= 1.0
    assert result.val_accuracy == pytest.approx(result.evaluation.accuracy)
    assert sorted(result.evaluation.classes) == sorted(dataset.val_counts)
    assert result.best_params is not None and set(result.best_params) == set(DEFAULT_HP_SPACE)
    assert isinstance(result.hpo, HPOResult) and result.hpo_study_id == result.hpo.study_id
    assert result.report_path is not None and Path(result.report_path).is_file()
    assert result.study_report_path is not None and Path(result.study_report_path).is_file()
    assert Path(result.model_path).is_file()
    assert result.workers_per_host >= 1 and result.device in ("cpu", "cuda")
    assert all(isinstance(note, str) and note for note in result.degraded)


@pytest.fixture(scope="module", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No configuration leaks in from the machine (no MATREC_ or seed variables, an empty config
    file), so that "no coordinator configured" holds: the embedded default."""
    empty = tmp_path_factory.mktemp("config") / "config.toml"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        for setting in SETTINGS:
            for name in setting.env:
                patch.delenv(name, raising=False)
        patch.setenv("MATREC_CONFIG", str(empty))
        yield empty


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDatasetInfo:
    root = tmp_path_factory.mktemp("data") / "materials"
    return make_demo_dataset(root, seed=0, patch_size=32, train_per_class=6, val_per_class=3)


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
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnhancedTrainingAPI]:
    """The seed's constructor, its nine parameters by name; no coordinator configured, so it
    starts the embedded one. Its cluster also serves the examples that need a model."""
    with EnhancedTrainingAPI(
        base_dir=tmp_path_factory.mktemp("api"),
        supabase_url=None,
        supabase_key=None,
        use_distributed=False,
        enable_transfer_learning=True,
        enable_hyperparameter_optimization=False,
        enable_active_learning=True,
        visualization_level="minimal",
        num_workers=2,
        timeout=300,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def first_model(api: EnhancedTrainingAPI, dataset: DemoDatasetInfo) -> TrainingResult:
    return api.train_model(str(dataset.path), "hybrid", epochs=1, **FINETUNE)


def test_enhanced_training_api_as_the_seed_builds_it(
    api: EnhancedTrainingAPI, first_model: TrainingResult, dataset: DemoDatasetInfo
) -> None:
    assert api.embedded
    assert api.config.visualization_level == "minimal" and api.config.num_workers == 2
    assert api.config.sources["num_workers"] == "argument"
    result = first_model
    assert isinstance(result, TrainingResult) and isinstance(result.evaluation, Evaluation)
    assert result.val_accuracy == pytest.approx(result.evaluation.accuracy)
    assert sorted(result.evaluation.classes) == sorted(dataset.val_counts)
    assert Path(result.model_path).is_file()
    assert result.report_path is not None and Path(result.report_path).is_file()
    # No study was asked for; transfer learning was, without local weights: said so.
    assert result.best_params is None and result.hpo is None
    assert any("from scratch" in note for note in result.degraded)


# The command lines' trainings run meanwhile (see command_line_trainings).
@pytest.mark.usefixtures("command_line_trainings")
def test_train_with_all_improvements_as_written(dataset: DemoDatasetInfo, tmp_path: Path) -> None:
    from matrec.sdk import train_with_all_improvements
    from matrec.sdk.ctl.train import result_table
    from rich.console import Console

    result = train_with_all_improvements(
        str(dataset.path),
        model_type="hybrid",
        use_transfer_learning=True,
        optimize_hyperparams=True,
        distributed=True,
        num_workers=4,
        base_dir=tmp_path / "base",
        epochs=1,
        max_trials=2,
        timeout=400,
        **FINETUNE,
    )
    assert_training_result(result, dataset)
    assert result.hpo is not None and result.hpo.counts.get("completed") == 2
    assert Path(result.report_path or "").is_relative_to(tmp_path / "base" / "reports")

    # `matrec-ctl train`'s summary of it names what the seed promises.
    out = Console(record=True, width=400)
    out.print(result_table(result))
    text = out.export_text()
    for expected in (result.job_id, result.report_path, result.study_report_path):
        assert str(expected) in text
    assert f"{result.val_accuracy:.4f}" in text
    for name in result.best_params or {}:
        assert name in text
    for note in result.degraded:
        assert note in text


def test_transfer_learn_under_the_seeds_module_name(
    dataset: DemoDatasetInfo, first_model: TrainingResult, tmp_path: Path
) -> None:
    """No coordinator: it trains in this process (transfer_learn's embedded default)."""
    from matrec.sdk.transfer import TransferResult
    from matrec.sdk.transfer_learning import transfer_learn

    result = transfer_learn(
        str(dataset.path),
        first_model.model_path,
        model_type="hybrid",
        epochs=1,
        batch_size=16,
        artifact_dir=tmp_path / "transfer",
        model="resnet18",
        image_size=32,
    )
    assert isinstance(result, TransferResult) and result.job_id is None
    assert isinstance(result.evaluation, Evaluation)
    assert sorted(result.evaluation.classes) == sorted(dataset.val_counts)
    assert Path(result.model_path).is_file()
    assert Path(result.model_path).is_relative_to(tmp_path / "transfer")


def test_optimize_hyperparameters_under_the_seeds_module_name(
    dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    """No coordinator: it starts a local cluster in `workdir` for the study."""
    from matrec.sdk.hyperparameter_optimization import optimize_hyperparameters

    result = optimize_hyperparameters(
        str(dataset.path),
        model_type="hybrid",
        max_trials=2,
        epochs=1,
        workdir=tmp_path / "hpo",
        timeout=300,
        **FINETUNE,
    )
    assert isinstance(result, HPOResult)
    assert set(result.best_params) == set(DEFAULT_HP_SPACE)
    assert len(result.trials) == 2
    values = [t.objective_value for t in result.trials if t.objective_value is not None]
    assert result.best_value == max(values)
    assert (tmp_path / "hpo" / "coordinator").is_dir()


@dataclass(frozen=True)
class LearnerRun:
    storage_dir: Path
    project_id: str
    batch: LabellingBatch
    trigger: RetrainingTrigger


@pytest.fixture(scope="module")
def learner_run(
    dataset: DemoDatasetInfo, pool: Path, tmp_path_factory: pytest.TempPathFactory
) -> LearnerRun:
    """The seed's ActiveLearner as written: no coordinator, so it runs on the embedded one in
    storage_dir/cluster (stopped on close), where it trains the first model; then it selects,
    takes two labels and checks the triggers."""
    from matrec.sdk.active_learning import ActiveLearner

    storage = tmp_path_factory.mktemp("al") / "learner"
    with ActiveLearner(
        storage_dir=storage,
        dataset_path=str(dataset.path),
        pool_path=str(pool),
        feedback_threshold=2,
        drift=False,
        finetune={"epochs": 1, **FINETUNE},
        retrain={"epochs": 1},
        timeout=300,
    ) as learner:
        batch = learner.select_samples_for_labeling(3)
        assert isinstance(batch, LabellingBatch) and len(batch.candidates) == 3
        assert all(isinstance(c, Candidate) for c in batch.candidates)
        for candidate in batch.candidates[:2]:
            labelled, changed = learner.record_feedback(
                candidate.sample_id, truth(candidate.sample_id), batch.id
            )
            assert isinstance(labelled, Candidate) and changed
            assert labelled.label == truth(candidate.sample_id)
        fired = learner.check_retraining_triggers()
        assert isinstance(fired, list)
        assert all(isinstance(t, RetrainingTrigger) for t in fired)
        # The coordinator's own monitor may have fired it first: it fires once either way.
        triggers = learner.client.list_triggers(learner.project_id)
        feedback = [t for t in triggers if t.kind == "feedback_count"]
        assert len(feedback) == 1, triggers
        return LearnerRun(storage, learner.project_id, batch, feedback[0])


def test_active_learner_under_the_seeds_module_name(learner_run: LearnerRun) -> None:
    remembered = json.loads((learner_run.storage_dir / "project.json").read_text())
    assert remembered == {"project_id": learner_run.project_id}
    assert (learner_run.storage_dir / "cluster" / "coordinator").is_dir()
    assert learner_run.batch.project_id == learner_run.project_id
    assert learner_run.trigger.state == "fired"


@pytest.fixture(scope="module")
def embedded_selection(learner_run: LearnerRun) -> dict[str, Any]:
    """`--operation select` as written: no coordinator configured, so the command runs the
    storage dir's embedded cluster for the call, on the project remembered there."""
    selected = ctl(
        "active-learning", "--operation", "select", "--count", "2",
        "--storage-dir", str(learner_run.storage_dir), "--json",
    )  # fmt: skip
    assert selected.returncode == 0, selected.stderr
    assert "embedded cluster" in selected.stderr
    batch: dict[str, Any] = json.loads(selected.stdout)
    return batch


def test_active_learning_select_on_the_embedded_default(
    learner_run: LearnerRun, embedded_selection: dict[str, Any]
) -> None:
    batch = embedded_selection
    assert batch["project_id"] == learner_run.project_id and len(batch["candidates"]) == 2
    labelled_before = {c.sample_id for c in learner_run.batch.candidates[:2]}
    assert not labelled_before & {c["sample_id"] for c in batch["candidates"]}


@pytest.fixture(scope="module")
def learner_cluster(learner_run: LearnerRun) -> Iterator[LocalCluster]:
    """The learner's embedded cluster, held open for the remaining operations (each command
    would otherwise start and stop it, as the embedded select did)."""
    with LocalCluster(learner_run.storage_dir / "cluster", agents=1) as cluster:
        yield cluster


def test_active_learning_operations_as_the_seed_spells_them(
    learner_run: LearnerRun, embedded_selection: dict[str, Any], learner_cluster: LocalCluster
) -> None:
    """The other operations on that cluster, configured through MATREC_COORDINATOR."""
    env = {"MATREC_COORDINATOR": learner_cluster.address}
    storage = ["--storage-dir", str(learner_run.storage_dir)]

    status = ctl("active-learning", "--operation", "status", *storage, "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["project"]["id"] == learner_run.project_id

    batch = embedded_selection
    sample = batch["candidates"][0]["sample_id"]
    feedback = ctl(
        "active-learning", "--operation", "feedback", "--batch-id", batch["id"],
        "--sample-id", sample, "--material-id", truth(sample), *storage, env=env,
    )  # fmt: skip
    assert feedback.returncode == 0, feedback.stderr
    assert f"recorded {truth(sample)!r} for {sample}" in feedback.stdout

    checked = ctl("active-learning", "--operation", "check-triggers", *storage, "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    assert isinstance(json.loads(checked.stdout), list)

    retrained = ctl(
        "active-learning", "--operation", "retrain", "--trigger-id", learner_run.trigger.id,
        "--wait", *storage, env=env, timeout=300,
    )  # fmt: skip
    assert retrained.returncode == 0, retrained.stderr + retrained.stdout
    with learner_cluster.client() as client:
        wait_until(
            lambda: client.get_learning_project(learner_run.project_id).current_version == 2,
            30,
            "model version 2 to be recorded",
        )
        project = client.get_learning_project(learner_run.project_id)
    assert project.total_feedback == 3
    assert project.versions[-1].trigger_id == learner_run.trigger.id


def test_monitor_as_the_seed_spells_it(
    learner_run: LearnerRun, learner_cluster: LocalCluster
) -> None:
    done = ctl("-c", learner_cluster.address, "monitor", "--check-interval", "3600", "--once")
    assert done.returncode == 0, done.stderr
    assert learner_run.project_id in done.stdout


@dataclass(frozen=True)
class Background:
    """A command started in the background, its output going to files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def finish(self, timeout: float = 400) -> tuple[int, str, str]:
        code = self.process.wait(timeout)
        return code, self.stdout.read_text(), self.stderr.read_text()


def _start(command: list[str], folder: Path, env: dict[str, str]) -> Background:
    folder.mkdir(parents=True)
    stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
    return Background(process, stdout, stderr)


@pytest.fixture(scope="module")
def command_line_trainings(
    api: EnhancedTrainingAPI, dataset: DemoDatasetInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Background]]:
    """`matrec-ctl train` (no coordinator configured: the embedded default) and `python -m
    matrec.sdk.training_api` (on the API's cluster, named by MATREC_COORDINATOR) with the seed's
    flags, started together. A test-sized training keeps about one of this machine's two cores
    busy, so these two overlap each other and the in-process train_with_all_improvements."""
    root = tmp_path_factory.mktemp("command-lines")
    env = {**os.environ, "COLUMNS": "200"}
    dataset_flags = ["--dataset", str(dataset.path), *SEED_TRAIN_FLAGS, *TEST_SIZED_FLAGS]
    runs = {
        "matrec-ctl": _start(
            [*CTL, "train", *dataset_flags, "--base-dir", str(root / "ctl-base"), "--json"],
            root / "ctl",
            env,
        ),
        "python -m": _start(
            [sys.executable, "-m", "matrec.sdk.training_api", *dataset_flags,
             "--base-dir", str(root / "module-base"), "--json"],
            root / "module",
            {**env, "MATREC_COORDINATOR": api.address},
        ),
    }  # fmt: skip
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            # SIGINT: an embedded cluster is stopped on the way out, not orphaned.
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()


def test_matrec_ctl_train_with_the_seeds_flags(
    command_line_trainings: dict[str, Background],
) -> None:
    run = command_line_trainings["matrec-ctl"]
    code, stdout, stderr = run.finish()
    assert code == 0, stderr[-3000:]
    printed = json.loads(stdout)  # stdout holds only the result

    base = run.stdout.parent.parent / "ctl-base"
    assert set(printed) >= TRAINING_RESULT_KEYS
    assert set(printed["best_params"]) == set(DEFAULT_HP_SPACE) and printed["hpo_study_id"]
    assert 0.0 <= printed["val_accuracy"] <= 1.0
    assert Path(printed["report_path"]).is_file()
    assert Path(printed["report_path"]).is_relative_to(base / "reports")
    # Each fallback is one warning line on stderr, where the phases went too.
    assert printed["degraded"]
    for note in printed["degraded"]:
        assert stderr.count(f"warning: {note}") == 1
    assert "training job" in stderr
    # The embedded cluster was stopped: its lock is free again.
    with (base / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_python_m_training_api_with_the_seeds_flags(
    api: EnhancedTrainingAPI, command_line_trainings: dict[str, Background]
) -> None:
    code, stdout, stderr = command_line_trainings["python -m"].finish()
    assert code == 0, stderr[-3000:]
    printed = json.loads(stdout)
    assert set(printed) >= TRAINING_RESULT_KEYS
    assert set(printed["best_params"]) == set(DEFAULT_HP_SPACE)
    assert Path(printed["report_path"]).is_file()
    job = api.client.get_job(printed["job_id"])
    assert job.state == "succeeded"
    assert job.result["val_accuracy"] == pytest.approx(printed["val_accuracy"])


def test_distributed_start_workers_until_sigint(tmp_path: Path) -> None:
    """`--num-workers 2` with no coordinator configured: an embedded one, then two agents."""
    base = tmp_path / "base"
    output = tmp_path / "stdout.txt"
    args = ["distributed", "--operation", "start-workers", "--num-workers", "2"]
    with output.open("w") as stdout:
        process = subprocess.Popen(
            [*CTL, *args, "--base-dir", str(base)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        deadline = time.monotonic() + 120
        while "workers running" not in output.read_text():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        started = output.read_text()
        workers = dict(re.findall(r"worker (\S+) \(pid (\d+),", started))
        assert len(workers) == 2, started
        for name in workers:
            assert (base / "workers" / "logs" / f"{name}.log").is_file()

        status = ctl("distributed", "--operation", "status", "--base-dir", str(base), "--json")
        assert status.returncode == 0, status.stderr
        agents = {agent["name"]: agent for agent in json.loads(status.stdout)}
        assert set(agents) == set(workers)
        assert all(agent["state"] == "connected" for agent in agents.values())
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stopped 2 workers" in output.read_text()
    for pid in workers.values():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert not (base / "workers" / "coordinator.ready").exists()


def test_config_show_with_the_seeds_environment(clean_environment: Path) -> None:
    env = {
        "SUPABASE_URL": "https://project.supabase.co",
        "SUPABASE_KEY": "seed-secret-key",
        "NUM_WORKERS": "6",
        "VISUALIZATION_LEVEL": "detailed",
        "ENABLE_TRANSFER_LEARNING": "false",
        "ENABLE_HYPERPARAMETER_OPT": "true",
        "ENABLE_ACTIVE_LEARNING": "no",
    }
    done = ctl("config", "show", env=env)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert rows["supabase_url"] == ["https://project.supabase.co", "env", "SUPABASE_URL"]
    assert rows["supabase_key"] == ["********", "env", "SUPABASE_KEY"]
    assert rows["num_workers"] == ["6", "env", "NUM_WORKERS"]
    assert rows["visualization_level"] == ["detailed", "env", "VISUALIZATION_LEVEL"]
    assert rows["enable_transfer_learning"][0] == "false"
    assert rows["enable_hyperparameter_optimization"][0] == "true"
    assert rows["enable_active_learning"][0] == "false"
    assert rows["coordinator"] == ["-", "default"]
    assert "seed-secret-key" not in done.stdout + done.stderr
