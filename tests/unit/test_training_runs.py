"""Real (tiny) fine-tunes: every strategy, the hybrid model, early stopping, exact resume."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from matrec.agent.training.finetune import FinetuneResult, TrainingPreempted, run_finetune
from matrec.agent.training.models import block_groups, build_model, model_from_file
from matrec.common.specs import FinetuneConfig
from matrec.sdk.demo_dataset import DemoDatasetInfo

TINY_STEPS_PER_EPOCH = 3  # 3 classes x 8 training images // batch 8


@dataclass
class Reporter:
    metrics_calls: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[tuple[Path, int, int]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.metrics_calls.append((step, dict(values)))

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        self.checkpoints.append((path, epoch, step))

    def log(self, text: str) -> None:
        self.logs.append(text)

    def epoch_rows(self) -> list[dict[str, float]]:
        return [values for _, values in self.metrics_calls if "epoch" in values]


@pytest.fixture(scope="module")
def tiny(small_dataset: DemoDatasetInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x (8 train + 4 val) images of 32 px, cut from the shared demo dataset."""
    root = tmp_path_factory.mktemp("tiny")
    for split, count in (("train", 8), ("val", 4)):
        for name in small_dataset.classes[:3]:
            source = small_dataset.path / split / name
            target = root / split / name
            target.mkdir(parents=True)
            for image in sorted(source.iterdir())[:count]:
                shutil.copy(image, target / image.name)
    return root


def tiny_config(dataset: Path, **overrides: object) -> FinetuneConfig:
    values: dict[str, object] = {
        "dataset_path": str(dataset),
        "model": "mobilenet_v3_small",
        "image_size": 32,
        "batch_size": 8,
        "epochs": 1,
        "log_every_steps": 1,
        "device": "cpu",
    }
    values.update(overrides)
    return FinetuneConfig.model_validate(values)


def initial_state(config: FinetuneConfig, classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)  # run_finetune builds its model right after this seeding
    return build_model(config.model, classes).state_dict()


def changed_groups(
    config: FinetuneConfig, result: FinetuneResult, classes: int
) -> tuple[list[bool], bool]:
    """Which block groups (input first) and whether the head differ from their initial state."""
    before = initial_state(config, classes)
    after = torch.load(result.model_path, weights_only=True)["model_state"]
    model = build_model(config.model, classes)
    groups = block_groups(model)
    changed = [
        any(
            not torch.equal(before[name], after[name])
            for name in before
            if any(name.startswith(prefix + ".") for prefix in group)
        )
        for group in groups
    ]
    grouped = {p for group in groups for p in group}
    head_changed = any(
        not torch.equal(before[name], after[name])
        for name in before
        if not any(name.startswith(prefix + ".") for prefix in grouped)
    )
    return changed, head_changed


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"strategy": "head_only"}, "none"),
        ({"strategy": "last_n", "trainable_blocks": 2}, "top2"),
        ({"strategy": "discriminative", "lr_decay": 0.5}, "all"),
        (
            {
                "strategy": "full",
                "optimizer": "sgd",
                "schedule": "step",
                "step_size_epochs": 1,
                "warmup_epochs": 0.5,
                "label_smoothing": 0.1,
                "grad_clip_norm": 1.0,
                "augmentation": "strong",
            },
            "all",
        ),
    ],
)
def test_each_strategy_trains_what_it_says_and_checkpoints(
    tiny: Path, tmp_path: Path, overrides: dict[str, object], expected: str
) -> None:
    config = tiny_config(tiny, **overrides)
    reporter = Reporter()
    result = run_finetune(config, tmp_path, reporter)

    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert result.steps == TINY_STEPS_PER_EPOCH and result.strategy == config.strategy
    changed, head_changed = changed_groups(config, result, 3)
    assert head_changed
    count = {"none": 0, "top2": 2, "all": len(changed)}[expected]
    assert changed == [False] * (len(changed) - count) + [True] * count
    evaluation = result.evaluation
    assert evaluation["classes"] == result.classes and evaluation["top_k"] == 3
    assert evaluation["top_k_accuracy"] == 1.0  # 3 classes, top-3
    assert sum(map(sum, evaluation["confusion_matrix"])) == 12
    assert evaluation["accuracy"] == pytest.approx(result.val_accuracy)


def test_gradual_unfreezes_one_group_per_epoch(tiny: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny, strategy="gradual", epochs=2)
    reporter = Reporter()
    result = run_finetune(config, tmp_path, reporter)
    changed, head_changed = changed_groups(config, result, 3)
    assert head_changed and changed == [False] * (len(changed) - 1) + [True]
    plans = [line for line in reporter.logs if line.startswith("epoch ")]
    assert plans == [
        "epoch 1: strategy gradual, training the head only",
        f"epoch 2: strategy gradual, training the head and the top 1/{len(changed)} block groups",
    ]


def test_hybrid_trains_and_saves_a_rebuildable_model(tiny: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny, model_type="hybrid", descriptors=["lbp", "color"])
    reporter = Reporter()
    result = run_finetune(config, tmp_path, reporter)
    assert result.model_type == "hybrid"
    assert any("40 values per image for 36 images" in line for line in reporter.logs)
    assert list((tmp_path / "cache").glob("descriptors-*.npy"))

    model, saved = model_from_file(Path(result.model_path))
    assert saved["descriptors"] == ["lbp", "color"] and saved["model_type"] == "hybrid"
    assert model.desc_mean.shape == (40,) and bool((model.desc_std > 0).all())
    assert not torch.equal(model.desc_mean, torch.zeros(40))


def test_early_stopping_stops_when_val_loss_stalls(tiny: Path, tmp_path: Path) -> None:
    # A learning rate too small to move float32 weights, and a frozen backbone (BatchNorm
    # statistics fixed): the validation loss is exactly the same every epoch.
    config = tiny_config(
        tiny,
        strategy="head_only",
        learning_rate=1e-12,
        schedule="constant",
        epochs=5,
        early_stopping_patience=1,
    )
    reporter = Reporter()
    result = run_finetune(config, tmp_path, reporter)
    assert result.stopped_early and result.epochs == 2
    assert result.steps == 2 * TINY_STEPS_PER_EPOCH
    assert any(line.startswith("early stopping after epoch 2") for line in reporter.logs)
    # A rerun sees a finished run.
    again = run_finetune(config, tmp_path, Reporter())
    assert again.epochs == 2 and again.stopped_early


def test_epoch_metrics_include_macro_f1(tiny: Path, tmp_path: Path) -> None:
    """The epoch's macro-F1 is the mean over classes of 2 TP / (2 TP + FP + FN), computed here
    from the confusion matrix of the final evaluation (the same model: one epoch)."""
    reporter = Reporter()
    result = run_finetune(tiny_config(tiny, strategy="head_only"), tmp_path, reporter)
    (row,) = reporter.epoch_rows()
    matrix = result.evaluation["confusion_matrix"]  # rows: true class, columns: predicted
    n = len(matrix)
    assert n == len(result.classes) and sum(map(sum, matrix)) > 0
    f1s = []
    for c in range(n):
        tp = matrix[c][c]
        fp = sum(matrix[r][c] for r in range(n)) - tp
        fn = sum(matrix[c]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert row["val/macro_f1"] == pytest.approx(sum(f1s) / n, abs=1e-9)
    correct = sum(matrix[c][c] for c in range(n))
    assert row["val/accuracy"] == pytest.approx(correct / sum(map(sum, matrix)), abs=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [{"strategy": "gradual"}, {"model_type": "hybrid", "strategy": "discriminative"}],
    ids=["gradual", "hybrid"],
)
def test_resume_after_stop_gives_the_same_final_weights(  # "full": see test_finetune.py
    tiny: Path, tmp_path: Path, overrides: dict[str, object]
) -> None:
    config = tiny_config(tiny, epochs=2, **overrides)
    straight = run_finetune(config, tmp_path / "straight", Reporter())

    stop_after = TINY_STEPS_PER_EPOCH + 1  # in epoch 2, after gradual unfreezing moved on
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= stop_after

    with pytest.raises(TrainingPreempted):
        run_finetune(config, tmp_path / "resumed", Reporter(), should_stop=stop)
    resumed = run_finetune(config, tmp_path / "resumed", Reporter())

    assert resumed.steps == straight.steps == 2 * TINY_STEPS_PER_EPOCH
    a = torch.load(straight.model_path, weights_only=True)["model_state"]
    b = torch.load(resumed.model_path, weights_only=True)["model_state"]
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.evaluation == straight.evaluation
