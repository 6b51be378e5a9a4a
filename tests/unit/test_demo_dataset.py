"""The built-in demo dataset cut from scikit-image's bundled photographs."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
from matrec.sdk import demo_dataset
from matrec.sdk.demo_dataset import make_demo_dataset
from PIL import Image

CLASSES = ["brick", "fur", "grass", "gravel", "metal", "wood"]


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_layout_counts_and_manifest(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    info = make_demo_dataset(
        tmp_path / "d",
        seed=5,
        patch_size=40,
        train_per_class=7,
        val_per_class=3,
        progress=lambda done, total: calls.append((done, total)),
    )
    root = tmp_path / "d"
    assert info.path == root and info.classes == CLASSES
    for split, count in (("train", 7), ("val", 3)):
        assert sorted(p.name for p in (root / split).iterdir()) == CLASSES
        for name in CLASSES:
            files = sorted((root / split / name).glob("*.png"))
            assert len(files) == count
            with Image.open(files[0]) as image:
                assert image.mode == "RGB" and image.size == (40, 40)
    assert info.train_counts == dict.fromkeys(CLASSES, 7)
    assert info.val_counts == dict.fromkeys(CLASSES, 3)

    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["classes"] == CLASSES and manifest["seed"] == 5
    assert manifest["train_counts"]["metal"] == 7 and manifest["val_counts"]["fur"] == 3
    assert manifest["sources"]["fur"] == "skimage.data.chelsea"

    assert calls[-1] == (60, 60) and [done for done, _ in calls] == list(range(1, 61))


def test_same_seed_same_bytes_other_seed_other_patches(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", seed=1, train_per_class=5, val_per_class=2)
    b = make_demo_dataset(tmp_path / "b", seed=1, train_per_class=5, val_per_class=2)
    c = make_demo_dataset(tmp_path / "c", seed=2, train_per_class=5, val_per_class=2)
    assert digests(a.path) == digests(b.path)
    assert digests(a.path).keys() == digests(c.path).keys()
    assert digests(a.path) != digests(c.path)


def test_train_and_val_are_different_pixels(tmp_path: Path) -> None:
    info = make_demo_dataset(tmp_path / "d", train_per_class=40, val_per_class=20)
    train = set(digests(info.train_dir).values())
    val = set(digests(info.val_dir).values())
    assert not train & val

    # Stronger: the source regions each split may crop from never overlap.
    def overlap(a: demo_dataset.Box, b: demo_dataset.Box) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    for source in demo_dataset._SOURCES:
        for t, v in itertools.product(source.train, source.val):
            assert not overlap(t, v), (source.name, t, v)


def test_classes_look_different(tmp_path: Path) -> None:
    """Cheap sanity check that the crops hit the intended material: colour where expected."""
    info = make_demo_dataset(tmp_path / "d", train_per_class=10, val_per_class=5)
    for name in CLASSES:
        pixels = np.stack(
            [np.asarray(Image.open(p), dtype=np.float32) for p in (info.val_dir / name).iterdir()]
        )
        saturation = float(np.mean(pixels.max(axis=-1) - pixels.min(axis=-1)))
        if name in ("fur", "wood"):
            assert saturation > 30, name
        else:
            assert saturation == 0, name  # grey photographs, made RGB
        assert float(pixels.std()) > 5, f"{name} patches are flat: background, not texture?"


def test_rewrites_a_previous_demo_dataset_but_refuses_other_directories(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_demo_dataset(root, train_per_class=6, val_per_class=2)
    info = make_demo_dataset(root, train_per_class=3, val_per_class=1)
    assert len(list((root / "train" / "brick").iterdir())) == 3
    assert info.train_counts["brick"] == 3

    (root / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a matrec demo dataset"):
        make_demo_dataset(root)
    assert (root / "notes.txt").read_text() == "mine"

    other = tmp_path / "photos"
    (other / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not empty"):
        make_demo_dataset(other)
    assert (other / "train").is_dir()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        make_demo_dataset(a_file)


def test_default_size_is_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    info = make_demo_dataset(tmp_path / "d")
    assert time.monotonic() - started < 5
    assert sum(info.train_counts.values()) == 480 and sum(info.val_counts.values()) == 120
