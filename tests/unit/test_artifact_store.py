"""The coordinator-disk artifact store: which names it accepts, and partial uploads it sweeps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from matrec.coordinator.artifact_store import (
    ABANDONED_UPLOAD_SECONDS,
    ArtifactNameError,
    CoordinatorDiskStore,
    check_name,
)


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../up.pt", "a/../../b.pt", ".hidden", "checkpoints/.x"]
)
def test_names_that_could_escape_or_hide_are_refused(name: str) -> None:
    with pytest.raises(ArtifactNameError, match="is not a relative file name"):
        check_name(name)


def test_plain_relative_names_are_accepted() -> None:
    assert str(check_name("checkpoints/a1-step00000012.pt")) == "checkpoints/a1-step00000012.pt"


def test_abandoned_partial_uploads_are_swept_at_start_and_recent_ones_kept(tmp_path: Path) -> None:
    uploads = tmp_path / ".uploads"
    uploads.mkdir()
    old, recent = uploads / "old.part", uploads / "recent.part"
    old.write_bytes(b"x")
    recent.write_bytes(b"y")
    past = time.time() - ABANDONED_UPLOAD_SECONDS - 60
    os.utime(old, (past, past))
    store = CoordinatorDiskStore(tmp_path)
    assert not old.exists() and recent.exists()
    assert store.received("recent") == 1 and store.received("old") == 0
