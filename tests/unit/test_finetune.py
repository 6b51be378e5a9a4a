"""The finetune task, run for real on CPU with a small demo dataset."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torchvision
from matrec.agent.training.data import epoch_batches, split_indices
from matrec.agent.training.finetune import FinetuneResult, TrainingPreempted, run_finetune
from matrec.agent.training.models import build_model, head_name, load_pretrained
from matrec.common.specs import KNOWN_MODELS, FinetuneConfig
from matrec.sdk.demo_dataset import DemoDatasetInfo
from torch import nn

STEPS_PER_EPOCH = 9  # 144 training images // batch 16


@dataclass
class RecordingReporter:
    metrics_calls: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[tuple[Path, int, int]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.metrics_calls.append((step, dict(values)))

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        self.checkpoints.append((path, epoch, step))

    def log(self, text: str) -> None:
        self.logs.append(text)

    def points(self) -> dict[tuple[int, str], float]:
        """Every reported (step, key) -> value; fails on a (step, key) reported twice."""
        out: dict[tuple[int, str], float] = {}
        for step, values in self.metrics_calls:
            for key, value in values.items():
                assert (step, key) not in out, f"{key} reported twice at step {step}"
                out[(step, key)] = value
        return out


def make_config(dataset: Path, **overrides: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "dataset_path": str(dataset),
        "model": "resnet18",
        "image_size": 32,
        "batch_size": 16,
        "epochs": 2,
        "learning_rate": 1e-3,
        "log_every_steps": 2,
        "seed": 0,
    }
    values.update(overrides)
    return FinetuneConfig.model_validate(values)


@dataclass
class Run:
    result: FinetuneResult
    reporter: RecordingReporter
    artifact_dir: Path


@pytest.fixture(scope="module")
def uninterrupted(small_dataset: DemoDatasetInfo, tmp_path_factory: pytest.TempPathFactory) -> Run:
    artifact_dir = tmp_path_factory.mktemp("uninterrupted")
    reporter = RecordingReporter()
    result = run_finetune(make_config(small_dataset.path), artifact_dir, reporter)
    return Run(result, reporter, artifact_dir)


def test_training_learns_and_writes_artifacts(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    config = make_config(small_dataset.path, epochs=4)
    result = run_finetune(config, tmp_path, reporter)

    chance = 1 / len(small_dataset.classes)
    assert result.val_accuracy >= 3 * chance
    epoch_rows = [values for _, values in reporter.metrics_calls if "epoch" in values]
    assert [row["epoch"] for row in epoch_rows] == [1.0, 2.0, 3.0, 4.0]
    assert epoch_rows[-1]["train/loss_epoch"] < epoch_rows[0]["train/loss_epoch"]
    assert set(epoch_rows[0]) == {
        "train/loss_epoch",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "val/macro_f1",
        "lr",
        "epoch",
    }
    assert epoch_rows[0]["lr"] < config.learning_rate  # cosine schedule is decaying

    points = reporter.points()  # also asserts that no (step, key) repeats
    loss_steps = [step for step, key in points if key == "train/loss"]
    assert loss_steps == list(range(2, 4 * STEPS_PER_EPOCH + 1, 2))
    epoch_steps = [step for step, key in points if key == "epoch"]
    assert epoch_steps == [STEPS_PER_EPOCH * e for e in (1, 2, 3, 4)]
    call_steps = [step for step, _ in reporter.metrics_calls]
    assert call_steps == sorted(call_steps)

    assert result.steps == 4 * STEPS_PER_EPOCH and result.epochs == 4
    assert result.classes == small_dataset.classes
    assert [(epoch, step) for _, epoch, step in reporter.checkpoints] == [
        (e, STEPS_PER_EPOCH * e) for e in (1, 2, 3, 4)
    ]
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    assert checkpoint.is_file() and Path(result.checkpoint_path) == checkpoint
    assert not list(checkpoint.parent.glob(".*tmp"))

    saved = torch.load(result.model_path, map_location="cpu", weights_only=True)
    assert saved["classes"] == small_dataset.classes
    assert saved["model"] == "resnet18" and saved["image_size"] == 32
    model = build_model("resnet18", len(saved["classes"]))
    model.load_state_dict(saved["model_state"])
    assert json.loads((tmp_path / "result.json").read_text()) == result.to_dict()


@pytest.mark.parametrize("stop_after", [5, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 4])
def test_resume_after_stop_reproduces_the_uninterrupted_run(
    small_dataset: DemoDatasetInfo, tmp_path: Path, uninterrupted: Run, stop_after: int
) -> None:
    config = make_config(small_dataset.path)
    first = RecordingReporter()
    steps_seen = 0

    def stop_after_k() -> bool:
        nonlocal steps_seen
        steps_seen += 1
        return steps_seen >= stop_after

    with pytest.raises(TrainingPreempted) as stopped:
        run_finetune(config, tmp_path, first, should_stop=stop_after_k)
    assert stopped.value.step == stop_after
    assert first.checkpoints[-1][2] == stop_after
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "model.pt").exists()

    second = RecordingReporter()
    result = run_finetune(config, tmp_path, second)
    assert any("resuming" in line for line in second.logs)
    assert result.steps == uninterrupted.result.steps == 2 * STEPS_PER_EPOCH
    resumed_steps = [step for step, _ in second.metrics_calls]
    # Only an epoch end that the stop cut off is reported again, with the step it belongs to.
    assert min(resumed_steps) >= stop_after
    first_points, second_points = first.points(), second.points()
    assert not set(first_points) & set(second_points)

    expected = uninterrupted.reporter.points()
    combined = first_points | second_points
    assert combined.keys() == expected.keys()
    for key, value in expected.items():
        assert combined[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert result.val_accuracy == pytest.approx(uninterrupted.result.val_accuracy)

    resumed_model = torch.load(result.model_path, weights_only=True)["model_state"]
    straight_model = torch.load(uninterrupted.result.model_path, weights_only=True)["model_state"]
    for name, tensor in straight_model.items():
        torch.testing.assert_close(resumed_model[name], tensor, rtol=1e-4, atol=1e-5)


def test_rerunning_a_finished_run_only_reevaluates(uninterrupted: Run, tmp_path: Path) -> None:
    artifact_dir = tmp_path / "copy"
    shutil.copytree(uninterrupted.artifact_dir, artifact_dir)
    config = FinetuneConfig.model_validate(
        torch.load(artifact_dir / "model.pt", weights_only=True)["config"]
    )
    reporter = RecordingReporter()
    result = run_finetune(config, artifact_dir, reporter)
    assert reporter.metrics_calls == [] and reporter.checkpoints == []
    assert result.steps == uninterrupted.result.steps
    assert result.val_accuracy == pytest.approx(uninterrupted.result.val_accuracy)
    assert result.train_accuracy == uninterrupted.result.train_accuracy


def test_resume_refuses_a_checkpoint_for_another_config(
    uninterrupted: Run, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    checkpoint = uninterrupted.artifact_dir / "checkpoints" / "last.pt"
    config = make_config(small_dataset.path, learning_rate=5e-4)
    with pytest.raises(ValueError, match=r"learning_rate: 0\.001 -> 0\.0005"):
        run_finetune(config, tmp_path, RecordingReporter(), resume_from=checkpoint)


def test_head_only_trains_only_the_head(small_dataset: DemoDatasetInfo, tmp_path: Path) -> None:
    config = make_config(small_dataset.path, epochs=1, strategy="head_only")
    result = run_finetune(config, tmp_path, RecordingReporter())

    torch.manual_seed(config.seed)  # run_finetune builds its model right after this seeding
    initial = build_model("resnet18", len(small_dataset.classes)).state_dict()
    trained = torch.load(result.model_path, weights_only=True)["model_state"]
    for name, tensor in initial.items():
        if name.startswith("fc."):
            assert not torch.equal(trained[name], tensor), name
        else:  # weights and BatchNorm running statistics alike
            assert torch.equal(trained[name], tensor), name


def test_flat_layout_is_split_per_class(small_dataset: DemoDatasetInfo, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    shutil.copytree(small_dataset.train_dir, flat)
    reporter = RecordingReporter()
    config = make_config(flat, epochs=1, val_fraction=0.25)
    result = run_finetune(config, tmp_path / "run", reporter)
    assert result.classes == small_dataset.classes
    assert any("108 train / 36 val images" in line for line in reporter.logs), reporter.logs


def test_split_indices_is_seeded_and_stratified() -> None:
    targets = [0] * 10 + [1] * 5 + [2] * 2
    train, val = split_indices(targets, 0.2, seed=3)
    assert sorted(train + val) == list(range(len(targets)))
    assert [sum(targets[i] == c for i in val) for c in (0, 1, 2)] == [2, 1, 1]
    assert split_indices(targets, 0.2, seed=3) == (train, val)
    assert split_indices(targets, 0.2, seed=4) != (train, val)


def test_epoch_batches_are_seeded_full_batches() -> None:
    batches = epoch_batches(10, 3, seed=7)
    assert [len(b) for b in batches] == [3, 3, 3]
    assert len({i for b in batches for i in b}) == 9
    assert epoch_batches(10, 3, seed=7) == batches
    assert epoch_batches(10, 3, seed=8) != batches
    assert [len(b) for b in epoch_batches(2, 3, seed=0)] == [2]


@pytest.mark.parametrize("name", KNOWN_MODELS)
def test_every_known_model_gets_a_new_head(name: str) -> None:
    model = build_model(name, 3)
    head = model.get_submodule(head_name(model))
    assert isinstance(head, nn.Linear) and head.out_features == 3


def test_pretrained_torchvision_state_dict_loads_all_but_the_head(tmp_path: Path) -> None:
    torch.manual_seed(123)
    source = torchvision.models.resnet18(weights=None)  # a 1000-class ImageNet-shaped model
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)

    model = build_model("resnet18", 6)
    summary = load_pretrained(model, path)
    assert "skipped for shape: fc.bias, fc.weight" in summary
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.out_features == 6


def test_pretrained_matrec_model_loads_head_too_and_is_used_by_run(
    uninterrupted: Run, small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    model_path = Path(uninterrupted.result.model_path)
    model = build_model("resnet18", len(small_dataset.classes))
    assert "skipped" not in load_pretrained(model, model_path)
    saved = torch.load(model_path, weights_only=True)["model_state"]
    torch.testing.assert_close(model.fc.weight, saved["fc.weight"])

    reporter = RecordingReporter()
    config = make_config(small_dataset.path, epochs=1, pretrained_path=str(model_path))
    run_finetune(config, tmp_path, reporter)
    assert any(line.startswith("loaded 122/122 tensors") for line in reporter.logs), reporter.logs


def test_pretrained_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"none of the .* tensors .* match ResNet"):
        load_pretrained(build_model("resnet18", 6), path)

    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_pretrained(build_model("resnet18", 6), not_weights)
