"""Which artifact files the coordinator serves, and how it chunks them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from matrec.coordinator.artifact_files import (
    CHUNK_BYTES,
    ArtifactUnavailable,
    pick_artifact,
    read_chunks,
    readable_path,
)


def test_only_files_under_the_artifact_root_are_served(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "job").mkdir(parents=True)
    inside = root / "job" / "model.pt"
    inside.write_bytes(b"weights")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    assert readable_path(str(inside), root) == inside.resolve()
    for uri in (str(secret), str(root / "job" / ".." / ".." / "secret.txt")):
        with pytest.raises(ArtifactUnavailable, match="outside the artifact root"):
            readable_path(uri, root)
    (root / "job" / "link.pt").symlink_to(secret)
    with pytest.raises(ArtifactUnavailable, match="outside the artifact root"):
        readable_path(str(root / "job" / "link.pt"), root)
    with pytest.raises(ArtifactUnavailable, match="not visible to the coordinator"):
        readable_path(str(root / "job" / "gone.pt"), root)


def test_chunks_cover_the_file_and_end_with_its_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two full chunks and a bit
    path = tmp_path / "f"
    path.write_bytes(data)
    whole = hashlib.sha256(data).hexdigest()
    chunks = list(read_chunks(path, 0))
    assert b"".join(c.data for c in chunks) == data
    assert [c.offset for c in chunks] == [0, CHUNK_BYTES, 2 * CHUNK_BYTES]
    assert [c.sha256 for c in chunks] == ["", "", whole]
    resumed = list(read_chunks(path, 1000))
    assert b"".join(c.data for c in resumed) == data[1000:]
    assert resumed[-1].sha256 == whole
    exact = tmp_path / "g"
    exact.write_bytes(b"x" * CHUNK_BYTES)
    assert [len(c.data) for c in read_chunks(exact, 0)] == [CHUNK_BYTES, 0]
    with pytest.raises(ValueError, match="past the end"):
        list(read_chunks(path, len(data) + 1))


def test_pick_by_uri_or_newest_of_kind() -> None:
    recorded = [
        {"kind": "checkpoint", "uri": "/a/c1"},
        {"kind": "model", "uri": "/a/m1"},
        {"kind": "model", "uri": "/a/m2"},
    ]
    assert pick_artifact(recorded, "", "")["uri"] == "/a/m2"  # type: ignore[index]
    assert pick_artifact(recorded, "", "checkpoint")["uri"] == "/a/c1"  # type: ignore[index]
    assert pick_artifact(recorded, "/a/m1", "checkpoint")["uri"] == "/a/m1"  # type: ignore[index]
    assert pick_artifact(recorded, "/etc/passwd", "") is None
    assert pick_artifact(recorded, "", "report") is None
