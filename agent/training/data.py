"""The dataset: ImageFolder layout, train/validation split, unreadable images skipped.

Two layouts: root/train/<class>/ and root/val/<class>/, or class folders directly under root
(or under root/train) of which a seeded, stratified fraction is held out. Class folders are
the visible sub-folders (a leading dot hides one); images are found recursively by their file
ending, as torchvision's ImageFolder finds them. Every image is decoded once before training:
the ones that cannot be are skipped and reported, so a bad file costs a warning, not the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from matrec.agent.worker_protocol import InvalidTaskInput
from matrec.common.specs import IMAGE_EXTENSIONS
from PIL import Image
from torch.utils.data import Dataset, Subset

#: One image: (file, class index).
Sample = tuple[Path, int]


class DatasetError(InvalidTaskInput):
    """The dataset cannot be trained on as it is; retrying will not help."""


@dataclass
class Data:
    train: Dataset[tuple[torch.Tensor, int, int]]  # items: (image, class, index into `paths`)
    val: Dataset[tuple[torch.Tensor, int, int]]
    classes: list[str]
    paths: list[Path]  # every usable image, train and validation
    train_indices: list[int]  # into `paths`
    val_indices: list[int]
    skipped: list[tuple[Path, str]]  # unreadable images and why

    @property
    def train_size(self) -> int:
        return len(self.train_indices)

    @property
    def val_size(self) -> int:
        return len(self.val_indices)


class ImageSamples(Dataset[tuple[torch.Tensor, int, int]]):
    """Images as (transformed image, class index, sample index)."""

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, target = self.samples[index]
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb), target, index


def load_data(
    dataset_path: str,
    *,
    val_fraction: float,
    seed: int,
    train_transform: Callable[[Image.Image], torch.Tensor],
    eval_transform: Callable[[Image.Image], torch.Tensor],
) -> Data:
    """Scan, check and split the dataset. Raises DatasetError before any training starts."""
    root = Path(dataset_path).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset_path {str(root)!r} is not a directory")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = class_folders(root / "train")
        val_classes = class_folders(root / "val")
        if val_classes != classes:
            raise DatasetError(
                f"{root}: train/ and val/ have different class folders ({classes} vs {val_classes})"
            )
        train_samples, train_skipped = scan_images(root / "train", classes)
        val_samples, val_skipped = scan_images(root / "val", classes)
        samples = train_samples + val_samples
        skipped = train_skipped + val_skipped
        train_indices = list(range(len(train_samples)))
        val_indices = list(range(len(train_samples), len(samples)))
    else:
        folder_root = root / "train" if (root / "train").is_dir() else root
        classes = class_folders(folder_root)
        samples, skipped = scan_images(folder_root, classes)
        train_indices, val_indices = split_indices(
            [target for _, target in samples], val_fraction, seed
        )
    if not val_indices:
        raise DatasetError(f"{root}: no validation images (every class needs two or more images)")
    return Data(
        train=Subset(ImageSamples(samples, train_transform), train_indices),
        val=Subset(ImageSamples(samples, eval_transform), val_indices),
        classes=classes,
        paths=[path for path, _ in samples],
        train_indices=train_indices,
        val_indices=val_indices,
        skipped=skipped,
    )


def class_folders(root: Path) -> list[str]:
    """The class names under `root`, sorted; at least two, or DatasetError naming `root`."""
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != "val"
    )
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DatasetError(
            f"{root} needs at least two class folders (one per class, ImageFolder layout); "
            f"found {found}"
        )
    return classes


def scan_images(root: Path, classes: Sequence[str]) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Every readable image of each class folder, and the unreadable ones with the reason.

    Raises DatasetError naming the folder when a class has no (readable) images.
    """
    candidates: list[Sample] = []
    for target, name in enumerate(classes):
        folder = root / name
        files = sorted(
            path
            for path in folder.rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        )
        if not files:
            raise DatasetError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add some or remove the folder"
            )
        candidates += [(path, target) for path in files]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(_unreadable, [path for path, _ in candidates]))
    samples = [sample for sample, problem in zip(candidates, problems, strict=True) if not problem]
    skipped = [
        (path, problem) for (path, _), problem in zip(candidates, problems, strict=True) if problem
    ]
    for target, name in enumerate(classes):
        if not any(t == target for _, t in samples):
            raise DatasetError(
                f"class folder {root / name} holds no readable images "
                f"({sum(1 for p, _ in skipped if p.is_relative_to(root / name))} unreadable)"
            )
    return samples, skipped


def _unreadable(path: Path) -> str:
    """Why `path` cannot be decoded, or "" when it can."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at a reduced scale, still to the end
            image.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def split_indices(
    targets: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out `val_fraction` of each class (at least one image when a class has two or more),
    chosen by a seeded permutation. Returns sorted (train, val) indices."""
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    for target in sorted(by_class):
        indices = by_class[target]
        order = torch.randperm(len(indices), generator=generator).tolist()
        n_val = min(len(indices) - 1, max(1, round(len(indices) * val_fraction)))
        val.extend(indices[i] for i in order[:n_val])
        train.extend(indices[i] for i in order[n_val:])
    return sorted(train), sorted(val)


def epoch_batches(size: int, batch_size: int, seed: int) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation cut into full batches (one partial batch
    only when the whole set is smaller than a batch)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    if size < batch_size:
        return [order]
    return [order[i : i + batch_size] for i in range(0, size - batch_size + 1, batch_size)]
