"""A small, real material dataset cut from the photographs bundled in scikit-image's wheel.

No download is needed: brick, grass and gravel are texture photographs, and fur, wood and metal
are cut from regions of other bundled images that show only that material. Train and validation
patches come from disjoint regions of each source image, so validation accuracy is honest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MANIFEST_NAME = "dataset.json"
MANIFEST_FORMAT = "matrec-demo-dataset"
MANIFEST_VERSION = 1

#: (top, left, bottom, right) in source-image pixels, bottom/right exclusive.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Source:
    """Where one class's patches come from."""

    name: str
    image: str  # a skimage.data function
    crop: int  # side of a patch in source pixels, before resizing to patch_size
    train: tuple[Box, ...]
    val: tuple[Box, ...]
    coins_only: bool = False  # restrict crops to the interior of the detected coins


_FULL = 512
_SOURCES: tuple[_Source, ...] = (
    # The three texture photographs: top rows for training, bottom rows for validation, with a
    # gap so that no validation patch touches a training one.
    _Source("brick", "brick", 96, ((0, 0, 320, _FULL),), ((336, 0, _FULL, _FULL),)),
    _Source("grass", "grass", 64, ((0, 0, 320, _FULL),), ((336, 0, _FULL, _FULL),)),
    _Source("gravel", "gravel", 64, ((0, 0, 320, _FULL),), ((336, 0, _FULL, _FULL),)),
    # Chelsea the cat: forehead and nose bridge (train) versus the left cheek (val); eyes,
    # nose and background excluded.
    _Source("fur", "chelsea", 64, ((0, 60, 85, 340), (85, 212, 215, 288)), ((100, 15, 300, 132),)),
    # The wooden table around the coffee cup: right edge (train) versus left edge (val).
    _Source("wood", "coffee", 64, ((0, 490, 400, 600),), ((110, 0, 400, 78),)),
    # Struck metal coins: crops lie inside a coin; top two rows (train) versus bottom two (val).
    _Source("metal", "coins", 24, ((0, 0, 160, 384),), ((160, 0, 303, 384),), coins_only=True),
)


@dataclass(frozen=True)
class DemoDatasetInfo:
    path: Path
    classes: list[str]
    train_counts: dict[str, int]
    val_counts: dict[str, int]
    seed: int
    patch_size: int
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def val_dir(self) -> Path:
        return self.path / "val"


def make_demo_dataset(
    path: Path,
    *,
    seed: int = 0,
    patch_size: int = 64,
    train_per_class: int = 80,
    val_per_class: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> DemoDatasetInfo:
    """Write an ImageFolder dataset (train/<class>/*.png, val/<class>/*.png) under `path`.

    Deterministic for a given seed. Replaces a previous demo dataset at `path`; refuses any other
    non-empty directory (FileExistsError). `progress(done, total)` is called after each image.
    """
    if patch_size < 8:
        raise ValueError(f"patch_size must be at least 8 (got {patch_size})")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be at least 1")
    path = Path(path).expanduser()
    _prepare_directory(path)

    rng = np.random.default_rng(seed)
    total = len(_SOURCES) * (train_per_class + val_per_class)
    done = 0
    train_counts: dict[str, int] = {}
    val_counts: dict[str, int] = {}
    for source in _SOURCES:
        image = _load_rgb(source.image)
        coin_mask = _coin_mask(source.image) if source.coins_only else None
        for split, boxes, count, counts in (
            ("train", source.train, train_per_class, train_counts),
            ("val", source.val, val_per_class, val_counts),
        ):
            corners = _valid_corners(image.shape[:2], boxes, source.crop, coin_mask)
            out_dir = path / split / source.name
            out_dir.mkdir(parents=True, exist_ok=True)
            picks = rng.integers(len(corners), size=count)
            rotations = rng.integers(4, size=count)
            flips = rng.integers(2, size=count)
            for index in range(count):
                top, left = corners[picks[index]]
                patch = image[top : top + source.crop, left : left + source.crop]
                patch = np.rot90(patch, k=int(rotations[index]))
                if flips[index]:
                    patch = patch[:, ::-1]
                img = Image.fromarray(np.ascontiguousarray(patch))
                if source.crop != patch_size:
                    img = img.resize((patch_size, patch_size), Image.Resampling.BICUBIC)
                img.save(out_dir / f"{source.name}_{index:04d}.png")
                done += 1
                if progress is not None:
                    progress(done, total)
            counts[source.name] = count

    info = DemoDatasetInfo(
        path=path,
        classes=sorted(s.name for s in _SOURCES),
        train_counts=train_counts,
        val_counts=val_counts,
        seed=seed,
        patch_size=patch_size,
        sources={s.name: f"skimage.data.{s.image}" for s in _SOURCES},
    )
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "classes": info.classes,
        "train_counts": train_counts,
        "val_counts": val_counts,
        "seed": seed,
        "patch_size": patch_size,
        "sources": info.sources,
    }
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return info


def _prepare_directory(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if not path.exists():
        path.mkdir(parents=True)
        return
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    if not _is_demo_dataset(path) or not entries <= {"train", "val", MANIFEST_NAME}:
        raise FileExistsError(
            f"{path} is not empty and is not a matrec demo dataset; "
            "choose an empty or new directory"
        )
    for name in ("train", "val"):
        if (path / name).exists():
            shutil.rmtree(path / name)
    (path / MANIFEST_NAME).unlink()


def _is_demo_dataset(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT


def _load_rgb(name: str) -> NDArray[np.uint8]:
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _coin_mask(name: str) -> NDArray[np.bool_]:
    """Discs inside the coins of skimage.data.coins, slightly shrunk to stay off the rims."""
    from skimage import data
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    gray = np.asarray(getattr(data, name)())
    # The top of the photograph has a bright background that merges with the first coins under a
    # global threshold; compact (solid) blobs of coin size are the coins.
    blobs = [
        p
        for p in regionprops(label(gray > threshold_otsu(gray)))
        if 800 < p.area < 8000 and p.solidity > 0.85
    ]
    rows, cols = np.mgrid[: gray.shape[0], : gray.shape[1]]
    mask = np.zeros(gray.shape, dtype=bool)
    for blob in blobs:
        cy, cx = blob.centroid
        radius = 0.95 * blob.equivalent_diameter_area / 2
        mask |= (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    return mask


def _valid_corners(
    shape: tuple[int, ...], boxes: tuple[Box, ...], crop: int, mask: NDArray[np.bool_] | None
) -> NDArray[np.int64]:
    """Top-left corners (row, col) of every crop x crop window lying wholly inside the region."""
    region = np.zeros(shape[:2], dtype=bool)
    for top, left, bottom, right in boxes:
        region[top:bottom, left:right] = True
    if mask is not None:
        region &= mask
    integral = np.pad(region.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    window = (
        integral[crop:, crop:]
        - integral[:-crop, crop:]
        - integral[crop:, :-crop]
        + integral[:-crop, :-crop]
    )
    corners = np.argwhere(window == crop * crop)
    if len(corners) == 0:
        raise RuntimeError(f"no {crop}px window fits the demo regions {boxes}")
    return corners
