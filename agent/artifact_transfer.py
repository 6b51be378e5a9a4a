"""Moving files between this agent and the coordinator's artifact store when hosts share
nothing: uploads in 1 MiB chunks, resumed from where the coordinator stands after a broken
stream, and downloads checked against the SHA-256 the coordinator sends."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from matrec.v1 import artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
#: Answers after which a transfer is tried again (from where the coordinator stands).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0


class TransferError(Exception):
    """A transfer failed for good (or ran out of patience); the message says why."""


@dataclass(frozen=True)
class Uploaded:
    uri: str
    size_bytes: int
    sha256: str


def file_digest(file: IO[bytes]) -> tuple[int, str]:
    """Size and hex SHA-256 of an open file, read with pread (its position is left alone)."""
    size = os.fstat(file.fileno()).st_size
    return size, _digest_of_prefix(file, size).hexdigest()


def _digest_of_prefix(file: IO[bytes], length: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    offset = 0
    while offset < length:
        data = os.pread(file.fileno(), min(CHUNK_BYTES, length - offset), offset)
        if not data:
            break
        digest.update(data)
        offset += len(data)
    return digest


def _write_and_hash(file: IO[bytes], digest: hashlib._Hash, data: bytes) -> None:
    file.write(data)
    digest.update(data)


class ArtifactTransfers:
    """Uploads and downloads over one channel to the coordinator, as agent `agent_id`."""

    def __init__(
        self, channel: grpc.aio.Channel, agent_id: str, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self.channel = channel
        self.agent_id = agent_id
        self.metadata = tuple(metadata)
        self._uploads = artifacts_pb2_grpc.ArtifactServiceStub(channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(channel)

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def upload(
        self,
        file: IO[bytes],
        *,
        task_id: str,
        attempt: int,
        kind: artifacts_pb2.ArtifactKind.ValueType,
        name: str,
        patience: float,
    ) -> Uploaded:
        """Upload an open file (its content as of now: the worker replaces files atomically, so
        the open one does not change). Retries with backoff for up to `patience` seconds."""
        size, sha256 = await asyncio.to_thread(file_digest, file)
        header = artifacts_pb2.UploadHeader(
            agent_id=self.agent_id, task_id=task_id, attempt=attempt, kind=kind, name=name,
            total_size=size, sha256=sha256,
        )  # fmt: skip
        deadline = time.monotonic() + patience
        delay = RETRY_INITIAL_SECONDS
        while True:
            try:
                return await self._upload_once(file, header)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or time.monotonic() + delay > deadline:
                    raise TransferError(
                        f"upload of {name} failed: {error.code().name}: {error.details()}"
                    ) from None
                log.info("upload of %s: %s; retrying in %.1f s", name, error.details(), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _upload_once(self, file: IO[bytes], header: artifacts_pb2.UploadHeader) -> Uploaded:
        held = await self._uploads.GetUploadOffset(
            artifacts_pb2.GetUploadOffsetRequest(header=header), metadata=self.metadata, timeout=30
        )
        if held.committed_uri:
            return Uploaded(held.committed_uri, header.total_size, header.sha256)
        header.offset = held.offset
        response = await self._uploads.UploadArtifact(
            _upload_requests(file, header), metadata=self.metadata
        )
        return Uploaded(response.uri, response.size_bytes, response.sha256)

    async def download(self, job_id: str, uri: str, target: Path) -> Path:
        """Fetch `uri` of job `job_id` to `target` (through TARGET.part, resumed after a broken
        stream); renamed into place only once its SHA-256 matches the coordinator's."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        delay = RETRY_INITIAL_SECONDS
        for _ in range(8):
            try:
                return await self._download_once(job_id, uri, partial, target)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or error.code() == grpc.StatusCode.DATA_LOSS:
                    partial.unlink(missing_ok=True)
                    raise TransferError(
                        f"could not download {uri}: {error.code().name}: {error.details()}"
                    ) from None
                log.info("download of %s: %s; retrying in %.1f s", uri, error.details(), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        raise TransferError(f"could not download {uri}: the coordinator stayed unreachable")

    async def _download_once(self, job_id: str, uri: str, partial: Path, target: Path) -> Path:
        partial.touch()
        with partial.open("r+b") as file:
            # The bytes kept from an interrupted try count for the hash; the rest is hashed as
            # it arrives (no second pass over the file).
            offset = os.fstat(file.fileno()).st_size
            digest = await asyncio.to_thread(_digest_of_prefix, file, offset)
            file.seek(offset)
            request = jobs_pb2.DownloadArtifactRequest(job_id=job_id, uri=uri, offset=offset)
            expected = ""
            async for chunk in self._jobs.DownloadArtifact(request, metadata=self.metadata):
                if chunk.offset != file.tell():
                    raise TransferError(f"download of {uri} out of step at byte {chunk.offset}")
                await asyncio.to_thread(_write_and_hash, file, digest, chunk.data)
                expected = chunk.sha256 or expected
        actual = digest.hexdigest()
        if not expected or actual != expected:
            partial.unlink()
            raise TransferError(
                f"download of {uri} hashed to {actual}, the coordinator sent {expected or 'none'}"
            )
        partial.replace(target)
        return target


async def _upload_requests(
    file: IO[bytes], header: artifacts_pb2.UploadHeader
) -> AsyncIterator[artifacts_pb2.UploadArtifactRequest]:
    yield artifacts_pb2.UploadArtifactRequest(header=header)
    offset = header.offset
    while offset < header.total_size:
        length = min(CHUNK_BYTES, header.total_size - offset)
        data = await asyncio.to_thread(os.pread, file.fileno(), length, offset)
        if not data:
            return
        yield artifacts_pb2.UploadArtifactRequest(data=data)
        offset += len(data)
