"""Where the artifacts agents upload are kept: the store's interface and its first backend, the
coordinator's own disk.

The coordinator-disk backend receives bytes through the coordinator's gRPC streams
(ArtifactService), so it works with partial uploads: `received` tells where an interrupted one
stands, `append` adds bytes, and `commit` renames a finished one into place atomically. A
backend that lets agents move the bytes themselves (S3 with presigned URLs) will add the
presigning calls beside these and answer `streams_through_coordinator` with False; what is
recorded about an object (its uri, size and SHA-256, in `ArtifactObjects`) is the same for both.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from matrec.v1 import artifacts_pb2

#: Where partial uploads wait under the coordinator's artifact root (same filesystem: the
#: final rename is atomic).
UPLOADS_DIR = ".uploads"
#: Partial uploads untouched this long are abandoned (their agent and task moved on): removed
#: when the coordinator starts.
ABANDONED_UPLOAD_SECONDS = 24 * 3600
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ArtifactNameError(ValueError):
    """An upload names its file in a way the store does not accept."""


def check_name(name: str) -> PurePosixPath:
    """A relative name of plain parts (no `..`, no absolute path, no hidden files)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or not all(_NAME_PART.match(p) for p in path.parts):
        raise ArtifactNameError(
            f"{name!r} is not a relative file name of letters, digits, '.', '_' and '-' "
            "(e.g. 'model.pt' or 'checkpoints/step-000120.pt')"
        )
    return path


def upload_id(header: artifacts_pb2.UploadHeader) -> str:
    """The same file of the same attempt always gets the same id, so a retry finds its part."""
    key = "\0".join(
        (header.task_id, str(header.attempt), str(header.kind), header.name,
         str(header.total_size), header.sha256)
    )  # fmt: skip
    return hashlib.sha256(key.encode()).hexdigest()[:40]


class UploadWriter:
    """Appends to one partial upload and hashes it as a whole (the part already held too)."""

    def __init__(self, path: Path, offset: int) -> None:
        self.digest = hashlib.sha256()
        mode = "r+b" if path.exists() else "w+b"
        self._file: IO[bytes] = open(path, mode)  # noqa: SIM115 - closed by close()
        while self._file.tell() < offset:
            data = self._file.read(min(1024 * 1024, offset - self._file.tell()))
            if not data:
                break
            self.digest.update(data)
        self._file.truncate(offset)
        self.size = offset

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class ArtifactStore(Protocol):
    """What ArtifactService needs of a backend that receives the bytes itself."""

    kind: artifacts_pb2.ArtifactStoreKind.ValueType

    def object_uri(self, job_id: str, task_id: str, name: PurePosixPath) -> str: ...
    def received(self, upload: str) -> int: ...
    def writer(self, upload: str, offset: int) -> UploadWriter: ...
    def commit(self, upload: str, uri: str) -> None: ...
    def discard(self, upload: str) -> None: ...
    def delete(self, uri: str) -> None: ...


class CoordinatorDiskStore:
    """Objects are files under the artifact root, named `<job>/<task>/<name>`; the uri of an
    object is its absolute path there, as for files a shared folder holds, so listing and
    downloading treat both alike."""

    kind = artifacts_pb2.ARTIFACT_STORE_KIND_COORDINATOR

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uploads = self.root / UPLOADS_DIR
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.sweep_abandoned(ABANDONED_UPLOAD_SECONDS)

    def sweep_abandoned(self, max_age: float) -> int:
        """Remove partial uploads not written to for `max_age` seconds; how many there were."""
        cutoff = time.time() - max_age
        removed = 0
        for part in self.uploads.glob("*.part"):
            if part.stat().st_mtime < cutoff:
                part.unlink(missing_ok=True)
                removed += 1
        return removed

    def object_uri(self, job_id: str, task_id: str, name: PurePosixPath) -> str:
        return str(self.root / job_id / task_id / name)

    def _part(self, upload: str) -> Path:
        return self.uploads / f"{upload}.part"

    def received(self, upload: str) -> int:
        part = self._part(upload)
        return part.stat().st_size if part.exists() else 0

    def writer(self, upload: str, offset: int) -> UploadWriter:
        return UploadWriter(self._part(upload), offset)

    def commit(self, upload: str, uri: str) -> None:
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._part(upload), target)

    def discard(self, upload: str) -> None:
        self._part(upload).unlink(missing_ok=True)

    def delete(self, uri: str) -> None:
        path = Path(uri)
        if path.is_relative_to(self.root):
            path.unlink(missing_ok=True)
