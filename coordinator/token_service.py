"""The gRPC TokenService: create, list and revoke API tokens (admin only)."""

from __future__ import annotations

import logging
from datetime import timedelta

import grpc
from matrec.common.specs import SpecError
from matrec.coordinator import convert
from matrec.coordinator.auth import TokenRecord, TokenStore, caller
from matrec.coordinator.rpc_errors import abort_invalid
from matrec.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def token_to_proto(record: TokenRecord) -> auth_pb2.Token:
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
    )


class TokenService(auth_pb2_grpc.TokenServiceServicer):
    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

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
        return auth_pb2.ListTokensResponse(tokens=[token_to_proto(t) for t in self.tokens.list()])

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
