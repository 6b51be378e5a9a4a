"""Dataset checks: unreadable images are skipped and counted; unusable layouts fail early."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from matrec.agent.training.augmentation import eval_transform
from matrec.agent.training.data import DatasetError, load_data
from matrec.agent.training.finetune import run_finetune
from matrec.common.specs import FinetuneConfig, SpecError, check_dataset_path
from matrec.sdk.demo_dataset import DemoDatasetInfo


def flat_copy(small_dataset: DemoDatasetInfo, root: Path, classes: int = 2, per: int = 4) -> Path:
    for name in small_dataset.classes[:classes]:
        (root / name).mkdir(parents=True)
        for image in sorted((small_dataset.train_dir / name).iterdir())[:per]:
            shutil.copy(image, root / name / image.name)
    return root


def load(root: Path) -> object:
    tf = eval_transform(32)
    return load_data(str(root), val_fraction=0.25, seed=0, train_transform=tf, eval_transform=tf)


class LogReporter:
    def __init__(self) -> None:
        self.logs: list[str] = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        pass

    def log(self, text: str) -> None:
        self.logs.append(text)


def test_unreadable_images_are_skipped_counted_and_logged(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    root = flat_copy(small_dataset, tmp_path / "data")
    first = small_dataset.classes[0]
    good = sorted((root / first).iterdir())[0].read_bytes()
    (root / first / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / first / "notes.png").write_text("this is not an image\n")
    (root / first / "readme.txt").write_text("ignored: not an image file ending\n")

    data = load(root)
    assert sorted(path.name for path, _ in data.skipped) == ["notes.png", "truncated.png"]
    assert data.train_size + data.val_size == 8

    reporter = LogReporter()
    config = FinetuneConfig(
        dataset_path=str(root),
        model="mobilenet_v3_small",
        image_size=32,
        batch_size=6,
        epochs=1,
        strategy="head_only",
        device="cpu",
    )
    result = run_finetune(config, tmp_path / "run", reporter)
    assert result.skipped_images == 2
    warnings = [line for line in reporter.logs if line.startswith("warning:")]
    assert len(warnings) == 3 and warnings[-1] == "warning: skipped 2 unreadable images"
    assert any("notes.png" in line for line in warnings)


def test_empty_class_folder_is_a_clear_error(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    root = flat_copy(small_dataset, tmp_path / "data")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"class folder .*/empty holds no images"):
        load(root)
    with pytest.raises(SpecError, match=r"class folder .*/empty.* holds no images") as caught:
        check_dataset_path(FinetuneConfig(dataset_path=str(root)))
    assert caught.value.field == "config.dataset_path"


def test_a_class_of_only_unreadable_images_is_a_clear_error(
    small_dataset: DemoDatasetInfo, tmp_path: Path
) -> None:
    root = flat_copy(small_dataset, tmp_path / "data")
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_text("not an image")
    with pytest.raises(DatasetError, match=r"/broken holds no readable images \(1 unreadable\)"):
        load(root)


def test_one_class_is_a_clear_error(small_dataset: DemoDatasetInfo, tmp_path: Path) -> None:
    root = flat_copy(small_dataset, tmp_path / "data", classes=1)
    (root / ".hidden").mkdir()  # not a class
    with pytest.raises(
        DatasetError, match=rf"{root} needs at least two class folders .*found only"
    ):
        load(root)
    with pytest.raises(SpecError, match="needs at least two class folders"):
        check_dataset_path(FinetuneConfig(dataset_path=str(root)))
