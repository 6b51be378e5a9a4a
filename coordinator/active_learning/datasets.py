"""The dataset a retraining job trains on: the project's labelled dataset plus every labelled
pool image, as an ImageFolder of symbolic links (nothing is copied, the originals are never
touched). The coordinator must see the dataset and pool paths (one host, or shared storage)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from matrec.coordinator.active_learning.store import Label


class DatasetBuildError(Exception):
    """The retraining dataset cannot be built (a missing image, an unreadable folder)."""


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), target)


def _link_name(sample_id: str, source: Path) -> str:
    # Flat, collision-free and recognisable: pool ids can hold '/' and repeat file names.
    digest = hashlib.sha256(sample_id.encode()).hexdigest()[:10]
    return f"feedback-{digest}-{source.name}"


def build_retraining_dataset(dataset_path: str, labels: Sequence[Label], target: Path) -> Path:
    """Write target/train/<class>/ (the dataset's training images and the labelled pool images)
    and, when the dataset has a val split covering every class, target/val/<class>/ (its
    validation images). Without one the fine-tune holds out val_fraction of train. Replaces an
    earlier, unfinished build at `target`."""
    root = Path(dataset_path).expanduser()
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root = root / "val" if (root / "val").is_dir() else None
    if target.exists():
        shutil.rmtree(target)
    building = target.with_name(target.name + ".partial")
    if building.exists():
        shutil.rmtree(building)
    try:
        classes = {p.name for p in train_root.iterdir() if p.is_dir()}
        for class_dir in sorted(p for p in train_root.iterdir() if p.is_dir()):
            for image in sorted(p for p in class_dir.iterdir() if p.is_file()):
                _link(image, building / "train" / class_dir.name / image.name)
        for label in labels:
            source = Path(label.sample_uri)
            if not source.is_file():
                raise DatasetBuildError(
                    f"labelled sample {label.sample_id!r} is gone from {label.sample_uri}; "
                    "restore it or relabel the batch"
                )
            classes.add(label.label)
            _link(source, building / "train" / label.label / _link_name(label.sample_id, source))
        if val_root is not None:
            val_classes = {p.name for p in val_root.iterdir() if p.is_dir()}
            if classes <= val_classes:
                for class_dir in sorted(p for p in val_root.iterdir() if p.is_dir()):
                    for image in sorted(p for p in class_dir.iterdir() if p.is_file()):
                        _link(image, building / "val" / class_dir.name / image.name)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise DatasetBuildError(f"cannot build the retraining dataset: {error}") from None
    except DatasetBuildError:
        shutil.rmtree(building, ignore_errors=True)
        raise
    building.rename(target)
    return target
