"""Reading a job's artifacts from the artifact root for download: which file a request means,
whether it may be read, and its bytes in chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1024 * 1024


class ArtifactUnavailable(Exception):
    """The artifact is recorded but cannot be served (not under the artifact root, or gone)."""


@dataclass(frozen=True)
class ArtifactChunk:
    offset: int
    data: bytes
    total_size: int
    sha256: str  # on the last chunk only


def pick_artifact(recorded: Sequence[dict[str, Any]], uri: str, kind: str) -> dict[str, Any] | None:
    """The recorded artifact named by `uri`, else the newest of `kind` (model by default)."""
    if uri:
        return next((a for a in recorded if a["uri"] == uri), None)
    wanted = kind or "model"
    matching = [a for a in recorded if a["kind"] == wanted]
    return matching[-1] if matching else None


def readable_path(uri: str, artifact_root: Path) -> Path:
    """The file behind `uri`, if it is a file under the artifact root (never anything else, even
    if the database names it)."""
    path = Path(uri).resolve()
    if not path.is_relative_to(artifact_root.resolve()):
        raise ArtifactUnavailable(
            f"{uri} is outside the artifact root {artifact_root}; only files there are served"
        )
    if not path.is_file():
        raise ArtifactUnavailable(
            f"{uri} is not visible to the coordinator; is the artifact root shared storage?"
        )
    return path


def read_chunks(path: Path, offset: int) -> Iterator[ArtifactChunk]:
    """The file from `offset` on; the last chunk (also for an empty remainder) has the hash."""
    total = path.stat().st_size
    if offset > total:
        raise ValueError(f"offset {offset} is past the end of the file ({total} bytes)")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while file.tell() < offset:  # the skipped part still counts for the whole file's hash
            digest.update(file.read(min(CHUNK_BYTES, offset - file.tell())))
        position = offset
        while True:
            data = file.read(CHUNK_BYTES)
            digest.update(data)
            last = len(data) < CHUNK_BYTES
            yield ArtifactChunk(position, data, total, digest.hexdigest() if last else "")
            position += len(data)
            if last:
                return
