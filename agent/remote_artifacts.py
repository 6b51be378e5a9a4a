"""One task attempt's checkpoints and model when hosts share nothing (the coordinator's
`--artifact-store coordinator`).

The worker writes into a private folder of this agent's; each checkpoint it reports is uploaded
in the background while training goes on (only the newest waits when one is still in flight),
and becomes the task's resume point once the coordinator has it complete and recorded. A
requeued task first downloads the checkpoint it resumes from. At the end the model is uploaded
and the result names the uploaded files, not this host's paths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path, PurePosixPath
from typing import IO, Any

from matrec.agent.artifact_transfer import ArtifactTransfers, TransferError
from matrec.v1 import agents_pb2, artifacts_pb2

log = logging.getLogger(__name__)

#: How long a checkpoint upload keeps retrying; the next checkpoint supersedes it anyway.
CHECKPOINT_PATIENCE = 120.0
#: How long the final model upload keeps retrying before the attempt fails.
MODEL_PATIENCE = 600.0


class RemoteArtifacts:
    def __init__(
        self, transfers: ArtifactTransfers, assignment: agents_pb2.Assignment, home: Path
    ) -> None:
        self.transfers = transfers
        self.assignment = assignment
        task = assignment.task
        #: The worker's artifact folder on this host, emptied when an attempt starts (a local
        #: file that was never uploaded cannot become another attempt's resume point). Named as
        #: the coordinator names task folders, so a gang's member 0 finds its own.
        self.dir = home / assignment.job_id / task.task_id
        #: The uri of the newest checkpoint the coordinator recorded.
        self.recorded_checkpoint = assignment.resume_from
        self._pending: tuple[IO[bytes], str] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._uploader: asyncio.Task[None] | None = None

    async def prepare(self) -> str | None:
        """Empty the folder; the local copy of the checkpoint to resume from (downloaded now),
        if any."""
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
        uri = self.assignment.resume_from
        if not uri:
            return None
        target = self.dir / "resume" / PurePosixPath(uri).name
        await self.transfers.download(self.assignment.job_id, uri, target)
        log.info("task %s: resuming from %s", self.assignment.task.task_id, uri)
        return str(target)

    def checkpoint_written(self, path: str, step: int) -> None:
        """Queue the checkpoint at `path` for upload (opened now: the worker replaces the file
        with its next checkpoint later, which leaves the open one as it was)."""
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed by the uploader
        except OSError as error:
            log.warning("checkpoint %s cannot be read for upload: %s", path, error)
            return
        if self._pending is not None:
            self._pending[0].close()  # superseded before its upload began
        name = f"checkpoints/a{self.assignment.task.attempt}-step{step:08d}{Path(path).suffix}"
        self._pending = (file, name)
        self._idle.clear()
        self._wake.set()
        if self._uploader is None:
            self._uploader = asyncio.create_task(self._upload_checkpoints())

    async def _upload_checkpoints(self) -> None:
        task = self.assignment.task
        while True:
            if self._pending is None:
                self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                continue
            (file, name), self._pending = self._pending, None
            try:
                uploaded = await self.transfers.upload(
                    file,
                    task_id=task.task_id,
                    attempt=task.attempt,
                    kind=artifacts_pb2.ARTIFACT_KIND_CHECKPOINT,
                    name=name,
                    patience=CHECKPOINT_PATIENCE,
                )
                self.recorded_checkpoint = uploaded.uri
                log.info("task %s attempt %d: checkpoint %s recorded", *self.key, uploaded.uri)
            except (TransferError, OSError) as error:
                log.warning("task %s attempt %d: checkpoint not recorded: %s", *self.key, error)
            finally:
                file.close()

    @property
    def key(self) -> tuple[str, int]:
        return (self.assignment.task.task_id, self.assignment.task.attempt)

    async def settle(self) -> None:
        """Wait until the checkpoints reported so far are uploaded (or given up on)."""
        await self._idle.wait()

    async def publish(self, result: dict[str, Any]) -> dict[str, Any]:
        """The result with its model uploaded and named by uri, and the recorded checkpoint."""
        published = dict(result)
        model = result.get("model_path")
        if isinstance(model, str) and model:
            with open(model, "rb") as file:
                uploaded = await self.transfers.upload(
                    file,
                    task_id=self.assignment.task.task_id,
                    attempt=self.assignment.task.attempt,
                    kind=artifacts_pb2.ARTIFACT_KIND_MODEL,
                    name=Path(model).name,
                    patience=MODEL_PATIENCE,
                )
            published["model_path"] = uploaded.uri
        if "checkpoint_path" in result:
            published["checkpoint_path"] = self.recorded_checkpoint
        return published

    async def close(self) -> None:
        """Stop uploading and remove the private folder (what counts is on the coordinator)."""
        if self._uploader is not None:
            self._uploader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._uploader
        if self._pending is not None:
            self._pending[0].close()
            self._pending = None
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
