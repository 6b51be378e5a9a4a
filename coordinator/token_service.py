"""The gRPC TokenService: create, list, revoke and limit API tokens, and read the audit log
(admin only)."""

from __future__ import annotations

import logging
from datetime import UTC, timedelta

import grpc
from matrec.common.specs import SpecError
from matrec.coordinator import convert
from matrec.coordinator.audit import AuditEntry, AuditLog
from matrec.coordinator.auth import TokenRecord, TokenStore, caller
from matrec.coordinator.limits import NO_LIMITS, LimitStore, TokenLimits
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
AUDIT_LIMIT_DEFAULT = 1000
AUDIT_LIMIT_MAX = 10_000


def token_to_proto(record: TokenRecord, limits: TokenLimits = NO_LIMITS) -> auth_pb2.Token:
    return auth_pb2.Token(
        id=record.id,
        name=record.name,
        role=record.role,
        created_at=convert.timestamp(record.created_at),
        expires_at=convert.timestamp(record.expires_at),
        revoked_at=convert.timestamp(record.revoked_at),
        permissions=record.permissions,
        created_by=record.created_by,
        revoked_by=record.revoked_by or "",
        limits=auth_pb2.TokenLimits(
            max_running_tasks=limits.max_running_tasks,
            max_gpus=limits.max_gpus,
            max_queued_jobs=limits.max_queued_jobs,
        ),
    )


def audit_entry_to_proto(entry: AuditEntry) -> auth_pb2.AuditEntry:
    return auth_pb2.AuditEntry(
        id=entry.id,
        time=convert.timestamp(entry.time),
        who=entry.who,
        token_id=entry.token_id or "",
        method=entry.method,
        targets=entry.targets,
        peer=entry.peer,
        outcome=entry.outcome,
        reason=entry.reason,
    )


class TokenService(auth_pb2_grpc.TokenServiceServicer):
    def __init__(self, tokens: TokenStore, limits: LimitStore, audit: AuditLog) -> None:
        self.tokens = tokens
        self.limits = limits
        self.audit = audit

    async def CreateToken(
        self, request: auth_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateTokenResponse:
        if not 0 <= request.ttl_seconds <= MAX_TTL_SECONDS:
            await abort_invalid(
                context,
                SpecError("ttl_seconds", f"must be 0 (no expiry) to {MAX_TTL_SECONDS} (10 years)"),
            )
        ttl = timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        try:
            record, secret = self.tokens.create(
                request.name,
                request.role,
                ttl,
                permissions=request.permissions,
                created_by=caller(context).name,
            )
        except ValueError as error:
            field = next((f for f in ("role", "permission") if f in str(error)), "name")
            await abort_invalid(context, SpecError(field, str(error)))
        log.info("token %s created for %r (%s)", record.id, record.name, record.role)
        return auth_pb2.CreateTokenResponse(token=token_to_proto(record), secret=secret)

    async def ListTokens(
        self, request: auth_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListTokensResponse:
        limits = self.limits.all()
        return auth_pb2.ListTokensResponse(
            tokens=[token_to_proto(t, limits.get(t.id, NO_LIMITS)) for t in self.tokens.list()]
        )

    async def RevokeToken(
        self, request: auth_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeTokenResponse:
        record = self.tokens.revoke(request.token_id, caller(context).name)
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"token {request.token_id!r} not found; `matrec-ctl tokens list` lists them",
            )
            raise AssertionError("unreachable")
        log.info("token %s (%r) revoked", record.id, record.name)
        return auth_pb2.RevokeTokenResponse(token=token_to_proto(record))

    async def SetTokenLimits(
        self, request: auth_pb2.SetTokenLimitsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SetTokenLimitsResponse:
        record = self.tokens.get(request.token_id) if request.token_id else None
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"token {request.token_id!r} not found; `matrec-ctl tokens list` lists them",
            )
            raise AssertionError("unreachable")
        wanted = request.limits
        try:
            limits = TokenLimits(wanted.max_running_tasks, wanted.max_gpus, wanted.max_queued_jobs)
        except ValueError as error:
            await abort_invalid(context, SpecError("limits", str(error)))
        self.limits.set(record.id, limits, caller(context).name)
        log.info("token %s (%r) limits set: %s", record.id, record.name, limits)
        return auth_pb2.SetTokenLimitsResponse(token=token_to_proto(record, limits))

    async def ListAuditEntries(
        self, request: auth_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListAuditEntriesResponse:
        if request.limit < 0:
            await abort_invalid(context, SpecError("limit", "must be >= 0"))
        limit = min(request.limit or AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX)
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        entries = self.audit.entries(since, request.who, limit)
        return auth_pb2.ListAuditEntriesResponse(entries=[audit_entry_to_proto(e) for e in entries])
