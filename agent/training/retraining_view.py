"""The dataset a retraining fine-tune trains on, built by the agent in its own work folder: the
dataset's images plus the labelled pool images its config's `feedback` manifest names, each
found in this host's own copy of the pool (hosts share no folder), as an ImageFolder of symbolic
links (nothing is copied, the originals are never touched)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from matrec.agent.path_policy import PathPolicy
from matrec.agent.worker_protocol import InvalidTaskInput
from matrec.common.active_learning.pool_scores import list_pool
from matrec.common.specs import FinetuneConfig


class DatasetBuildError(InvalidTaskInput):
    """The retraining dataset cannot be built (a missing image, an unreadable folder)."""


def training_view(config: FinetuneConfig, target: Path, policy: PathPolicy) -> FinetuneConfig:
    """The config to train on: unchanged without feedback, else with dataset_path the view
    built at `target` (replacing an earlier one) and no feedback left to resolve."""
    feedback = config.feedback
    if feedback is None:
        return config
    policy.require(feedback.pool_path, "config.feedback.pool_path")
    try:
        pool = dict(list_pool(Path(feedback.pool_path)))
    except ValueError as error:
        raise DatasetBuildError(f"config.feedback: {error}") from None
    labelled = []
    for sample in feedback.samples:
        source = pool.get(sample.sample_id)
        if source is None or not source.is_file():
            raise DatasetBuildError(
                f"labelled sample {sample.sample_id!r} is not in the pool {feedback.pool_path} "
                "on this host; restore it there or relabel the batch"
            )
        labelled.append((sample.sample_id, source, sample.label))
    view = build_retraining_dataset(config.dataset_path, labelled, target)
    return config.model_copy(update={"dataset_path": str(view), "feedback": None})


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), target)


def _link_name(sample_id: str, source: Path) -> str:
    # Flat, collision-free and recognisable: pool ids can hold '/' and repeat file names.
    digest = hashlib.sha256(sample_id.encode()).hexdigest()[:10]
    return f"feedback-{digest}-{source.name}"


def build_retraining_dataset(
    dataset_path: str, labelled: Sequence[tuple[str, Path, str]], target: Path
) -> Path:
    """Write target/train/<class>/ (the dataset's training images and the labelled pool images,
    given as (sample id, file, class)) and, when the dataset has a val split covering every
    class, target/val/<class>/ (its validation images). Without one the fine-tune holds out
    val_fraction of train. Replaces an earlier, unfinished build at `target`."""
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
        for sample_id, source, label in labelled:
            classes.add(label)
            _link(source, building / "train" / label / _link_name(sample_id, source))
        if val_root is not None:
            val_classes = {p.name for p in val_root.iterdir() if p.is_dir()}
            if classes <= val_classes:
                for class_dir in sorted(p for p in val_root.iterdir() if p.is_dir()):
                    for image in sorted(p for p in class_dir.iterdir() if p.is_file()):
                        _link(image, building / "val" / class_dir.name / image.name)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise DatasetBuildError(f"cannot build the retraining dataset: {error}") from None
    building.rename(target)
    return target
