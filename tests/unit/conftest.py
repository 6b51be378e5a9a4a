"""Fixtures for the training tests: a small, real demo dataset shared by the session."""

from __future__ import annotations

import pytest
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDatasetInfo:
    """6 classes x (24 train + 8 val) real texture patches of 32 px."""
    root = tmp_path_factory.mktemp("data") / "demo"
    return make_demo_dataset(root, seed=0, patch_size=32, train_per_class=24, val_per_class=8)
