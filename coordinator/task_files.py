"""Files a task sends to the coordinator over its agent's stream, since hosts share no folder: a
score job's scores. Each lands in ROOT/<job>/received/<task>-a<attempt>/<name>, written chunk by
chunk into `<name>.partial` and renamed only once the last chunk's size and SHA-256 match, so a
half-sent or damaged file is never read. The task's result names the file by its path on the
agent; the stored result names the coordinator's copy instead (`substitute`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from matrec.common.task_files import SENT_RESULT_FILES
from matrec.v1 import agents_pb2

#: The largest file a task may send (a pool of a million images' scores fits).
MAX_TASK_FILE_BYTES = 8 << 30


class TaskFileError(Exception):
    """A chunk that cannot be stored (a bad name, a gap, a size or hash mismatch)."""


class ReceivedFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, job_id: str, task_id: str, attempt: int) -> Path:
        return self.root / job_id / "received" / f"{task_id}-a{attempt}"

    def store_chunk(self, job_id: str, chunk: agents_pb2.TaskFileChunk) -> Path | None:
        """Write one chunk; the finished file's path after the last one, else None."""
        name = chunk.name
        if name not in SENT_RESULT_FILES.values():
            raise TaskFileError(
                f"{name!r} is not a file a task sends ({', '.join(SENT_RESULT_FILES.values())})"
            )
        end = chunk.offset + len(chunk.data)
        if end > MAX_TASK_FILE_BYTES:
            raise TaskFileError(f"{name} is larger than {MAX_TASK_FILE_BYTES} bytes")
        folder = self.folder(job_id, chunk.task.task_id, chunk.task.attempt)
        final, partial = folder / name, folder / f"{name}.partial"
        if final.exists():
            return final if chunk.last else None  # a replay after a reconnect
        folder.mkdir(parents=True, exist_ok=True)
        size = partial.stat().st_size if partial.exists() else 0
        if chunk.offset > size:
            raise TaskFileError(f"{name}: a chunk at {chunk.offset} after only {size} bytes")
        with partial.open("r+b" if size else "wb") as file:
            file.seek(chunk.offset)
            file.write(chunk.data)
            if chunk.last:
                file.truncate(end)
                file.flush()
                os.fsync(file.fileno())
        if not chunk.last:
            return None
        digest = _sha256(partial)
        if end != chunk.size or digest != chunk.sha256:
            partial.unlink()
            raise TaskFileError(
                f"{name} arrived damaged ({end} bytes, SHA-256 {digest}; the agent sent "
                f"{chunk.size} bytes, SHA-256 {chunk.sha256})"
            )
        os.replace(partial, final)
        return final

    def substitute(
        self, job_id: str, task_id: str, attempt: int, result: dict[str, Any]
    ) -> dict[str, Any]:
        """The result with each sent file named by the coordinator's copy; a key whose file did
        not arrive whole is left out (nothing on the coordinator could read it)."""
        out = dict(result)
        for key, name in SENT_RESULT_FILES.items():
            if key in out:
                copy = self.folder(job_id, task_id, attempt) / name
                if copy.is_file():
                    out[key] = str(copy)
                else:
                    del out[key]
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
