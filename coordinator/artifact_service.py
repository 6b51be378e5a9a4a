"""The agent-facing upload API: chunked, resumable, SHA-256-checked uploads into the artifact
store. An object is committed (renamed into place, then recorded) only once all its bytes
arrived and their hash matches; a checkpoint becomes the task's resume point only then."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
from matrec.common.specs import SpecError
from matrec.coordinator.agent_service import _certified_agent
from matrec.coordinator.artifact_records import ArtifactObjects
from matrec.coordinator.artifact_store import (
    SHA256_HEX,
    ArtifactNameError,
    ArtifactStore,
    check_name,
    upload_id,
)
from matrec.coordinator.auth import current_identity
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.coordinator.store import Store
from matrec.v1 import artifacts_pb2, artifacts_pb2_grpc

log = logging.getLogger(__name__)

#: Largest data message accepted (agents send 1 MiB); bounds the memory one upload holds.
MAX_CHUNK_BYTES = 4 * 1024 * 1024

#: Checkpoints kept per task; older ones are deleted when a new one is recorded.
KEEP_CHECKPOINTS = 2

KIND_NAMES = {
    artifacts_pb2.ARTIFACT_KIND_CHECKPOINT: "checkpoint",
    artifacts_pb2.ARTIFACT_KIND_MODEL: "model",
    artifacts_pb2.ARTIFACT_KIND_OTHER: "other",
}


class ArtifactService(artifacts_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, store: Store, artifacts: ArtifactStore, objects: ArtifactObjects) -> None:
        self.store = store
        self.artifacts = artifacts
        self.objects = objects
        self._active: set[str] = set()

    async def GetUploadOffset(
        self, request: artifacts_pb2.GetUploadOffsetRequest, context: grpc.aio.ServicerContext
    ) -> artifacts_pb2.GetUploadOffsetResponse:
        job_id = await self._check_header(request.header, context)
        uri = self._uri(job_id, request.header)
        upload = upload_id(request.header)
        if self._committed(uri, request.header):
            return artifacts_pb2.GetUploadOffsetResponse(
                upload_id=upload, offset=request.header.total_size, committed_uri=uri
            )
        held = min(self.artifacts.received(upload), request.header.total_size)
        return artifacts_pb2.GetUploadOffsetResponse(upload_id=upload, offset=held)

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[artifacts_pb2.UploadArtifactRequest],
        context: grpc.aio.ServicerContext,
    ) -> artifacts_pb2.UploadArtifactResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "header: the first message must be the header"
            )
        assert first is not None
        header = first.header
        job_id = await self._check_header(header, context)
        uri = self._uri(job_id, header)
        upload = upload_id(header)
        if self._committed(uri, header):
            return self._response(uri, header)
        if upload in self._active:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"upload {upload} of {header.name} is already in progress; retry after it ends",
            )
        self._active.add(upload)
        try:
            await self._receive(upload, header, request_iterator, context)
            self.artifacts.commit(upload, uri)
            await self._record(job_id, uri, header, context)
        finally:
            self._active.discard(upload)
        log.info(
            "task %s attempt %d uploaded %s %s (%d bytes)",
            header.task_id, header.attempt, KIND_NAMES[header.kind], uri, header.total_size,
        )  # fmt: skip
        return self._response(uri, header)

    async def _receive(
        self,
        upload: str,
        header: artifacts_pb2.UploadHeader,
        request_iterator: AsyncIterator[artifacts_pb2.UploadArtifactRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        held = self.artifacts.received(upload)
        if header.offset != held:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"offset: the upload starts at byte {header.offset}, but the coordinator holds "
                f"{held} bytes of it; call GetUploadOffset and resume from there",
            )
        writer = await asyncio.to_thread(self.artifacts.writer, upload, header.offset)
        try:
            async for message in request_iterator:
                data = message.data
                if len(data) > MAX_CHUNK_BYTES:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"data: a chunk of {len(data)} bytes; send at most {MAX_CHUNK_BYTES}",
                    )
                if writer.size + len(data) > header.total_size:
                    await self._drop(upload, context, "more bytes than header.total_size")
                await asyncio.to_thread(writer.write, data)
        finally:
            await asyncio.to_thread(writer.close)
        if writer.size < header.total_size:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"the upload ended at byte {writer.size} of {header.total_size}; resume from "
                "there (GetUploadOffset)",
            )
        if writer.digest.hexdigest() != header.sha256:
            await self._drop(
                upload,
                context,
                f"the bytes received hash to {writer.digest.hexdigest()}, not header.sha256 "
                f"{header.sha256}",
            )

    async def _drop(self, upload: str, context: grpc.aio.ServicerContext, why: str) -> NoReturn:
        self.artifacts.discard(upload)
        await context.abort(
            grpc.StatusCode.DATA_LOSS, f"upload refused and dropped: {why}; upload it again"
        )
        raise AssertionError("unreachable")

    async def _record(
        self,
        job_id: str,
        uri: str,
        header: artifacts_pb2.UploadHeader,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.objects.add(
            uri=uri, job_id=job_id, task_id=header.task_id, attempt=header.attempt,
            kind=KIND_NAMES[header.kind], size_bytes=header.total_size, sha256=header.sha256,
            agent_id=header.agent_id,
        )  # fmt: skip
        if header.kind != artifacts_pb2.ARTIFACT_KIND_CHECKPOINT:
            return
        if not self.store.record_checkpoint(header.task_id, header.attempt, header.agent_id, uri):
            self._delete(uri)
            await self._not_holder(header, context)
        self._drop_superseded(header.task_id, job_id)

    def _drop_superseded(self, task_id: str, job_id: str) -> None:
        """Keep the task's last KEEP_CHECKPOINTS checkpoints: the newest is its resume point,
        the one before it a fallback."""
        checkpoints = [
            o
            for o in self.objects.of_job(job_id)
            if o.task_id == task_id and o.kind == "checkpoint"
        ]
        for old in checkpoints[:-KEEP_CHECKPOINTS]:
            self._delete(old.uri)

    def _delete(self, uri: str) -> None:
        self.objects.remove(uri)
        self.artifacts.delete(uri)

    def _uri(self, job_id: str, header: artifacts_pb2.UploadHeader) -> str:
        return self.artifacts.object_uri(job_id, header.task_id, check_name(header.name))

    def _committed(self, uri: str, header: artifacts_pb2.UploadHeader) -> bool:
        recorded = self.objects.get(uri)
        return (
            recorded is not None
            and recorded.sha256 == header.sha256
            and recorded.attempt == header.attempt
        )

    @staticmethod
    def _response(
        uri: str, header: artifacts_pb2.UploadHeader
    ) -> artifacts_pb2.UploadArtifactResponse:
        return artifacts_pb2.UploadArtifactResponse(
            uri=uri, size_bytes=header.total_size, sha256=header.sha256
        )

    async def _check_header(
        self, header: artifacts_pb2.UploadHeader, context: grpc.aio.ServicerContext
    ) -> str:
        """The header's job id, once the header is well-formed and its caller holds the task."""
        problem: SpecError | None = None
        if header.kind not in KIND_NAMES:
            problem = SpecError("header.kind", "give checkpoint, model or other")
        elif header.total_size < 0:
            problem = SpecError("header.total_size", "must be >= 0")
        elif header.offset < 0 or header.offset > header.total_size:
            problem = SpecError("header.offset", f"must be between 0 and {header.total_size}")
        elif not SHA256_HEX.match(header.sha256):
            problem = SpecError("header.sha256", "must be 64 lower-case hex digits")
        else:
            try:
                check_name(header.name)
            except ArtifactNameError as error:
                problem = SpecError("header.name", str(error))
        if problem is not None:
            await abort_invalid(context, problem)
        agent = self.store.get_agent(header.agent_id)
        if agent is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"agent {header.agent_id!r} is not registered; call RegisterAgent first",
            )
        assert agent is not None
        identity = current_identity.get()
        certified = _certified_agent(context)
        for vouched in (certified, identity.name if identity is not None else None):
            if vouched is not None and vouched != agent.name:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this caller is agent {vouched!r}; it cannot upload as {header.agent_id} "
                    f"({agent.name!r})",
                )
        holder = self.store.task_holder(header.task_id)
        if holder is None or holder.agent_id != header.agent_id or holder.attempt != header.attempt:
            await self._not_holder(header, context)
        assert holder is not None
        return holder.job_id

    @staticmethod
    async def _not_holder(
        header: artifacts_pb2.UploadHeader, context: grpc.aio.ServicerContext
    ) -> NoReturn:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"task {header.task_id} attempt {header.attempt} is not held by agent "
            f"{header.agent_id}; its uploads are refused",
        )
        raise AssertionError("unreachable")
