"""Tokens and roles: who may call which RPC.

Every RPC of matrec's services has one required role in `METHOD_ROLES`; a method missing there
is refused for everyone (a test walks the service descriptors, so a new RPC without a rule fails
it). Health checking and reflection stay open for probes. Roles: `viewer` reads, `operator`
also submits and cancels its own jobs and studies, `admin` also manages and limits tokens,
reads the audit log and cancels anyone's; `agent` tokens may only speak the agent
protocol, as the agent named in the token. Tokens travel as `authorization: Bearer <token>`
metadata; only their SHA-256 is stored; a revoked or expired token is refused on its next call
(no cache). With authentication off (the default, for a coordinator on loopback) every call is
let through.

Every record a call makes carries its caller (`caller`): the token's name and id, else the
subject of a verified client certificate (`cert:CN`), else `local`. Permissions widen a role:
`scripts` lets an operator submit `script` jobs (code execution on agent hosts), `cancel-any`
lets an operator cancel other callers' jobs and studies; admin tokens hold every permission.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
import sqlalchemy as sa
from matrec.common.tls import peer_common_name
from matrec.coordinator import schema
from matrec.coordinator.rows import as_utc, new_id, utcnow

ROLES = ("viewer", "operator", "admin", "agent")
#: What each user role may do, as the roles it includes.
ROLE_INCLUDES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer"}),
    "operator": frozenset({"viewer", "operator"}),
    "admin": frozenset({"viewer", "operator", "admin"}),
    "agent": frozenset({"agent"}),
}
TOKEN_PREFIX = "mtk_"
PERMISSION_SCRIPTS = "scripts"
PERMISSION_CANCEL_ANY = "cancel-any"
PERMISSIONS = (PERMISSION_SCRIPTS, PERMISSION_CANCEL_ANY)

METHOD_ROLES: dict[str, str] = {
    "/matrec.v1.JobService/SubmitJob": "operator",
    "/matrec.v1.JobService/GetJob": "viewer",
    "/matrec.v1.JobService/ListJobs": "viewer",
    "/matrec.v1.JobService/CancelJob": "operator",
    "/matrec.v1.JobService/WatchJob": "viewer",
    "/matrec.v1.JobService/ListJobMetrics": "viewer",
    "/matrec.v1.JobService/ListAgents": "viewer",
    "/matrec.v1.JobService/WatchCluster": "viewer",
    "/matrec.v1.JobService/ListArtifacts": "viewer",
    "/matrec.v1.JobService/DownloadArtifact": "viewer",
    "/matrec.v1.StudyService/CreateStudy": "operator",
    "/matrec.v1.StudyService/GetStudy": "viewer",
    "/matrec.v1.StudyService/ListStudies": "viewer",
    "/matrec.v1.StudyService/CancelStudy": "operator",
    "/matrec.v1.StudyService/WatchStudy": "viewer",
    "/matrec.v1.ActiveLearningService/CreateProject": "operator",
    "/matrec.v1.ActiveLearningService/GetProject": "viewer",
    "/matrec.v1.ActiveLearningService/ListProjects": "viewer",
    "/matrec.v1.ActiveLearningService/ScorePool": "operator",
    "/matrec.v1.ActiveLearningService/SelectSamples": "operator",
    "/matrec.v1.ActiveLearningService/GetBatch": "viewer",
    "/matrec.v1.ActiveLearningService/ListBatches": "viewer",
    "/matrec.v1.ActiveLearningService/RecordFeedback": "operator",
    "/matrec.v1.ActiveLearningService/CheckTriggers": "operator",
    "/matrec.v1.ActiveLearningService/ListTriggers": "viewer",
    "/matrec.v1.ActiveLearningService/Retrain": "operator",
    "/matrec.v1.AgentService/RegisterAgent": "agent",
    "/matrec.v1.AgentService/Connect": "agent",
    "/matrec.v1.ArtifactService/GetUploadOffset": "agent",
    "/matrec.v1.ArtifactService/UploadArtifact": "agent",
    "/matrec.v1.TokenService/CreateToken": "admin",
    "/matrec.v1.TokenService/ListTokens": "admin",
    "/matrec.v1.TokenService/RevokeToken": "admin",
    "/matrec.v1.TokenService/SetTokenLimits": "admin",
    "/matrec.v1.TokenService/ListAuditEntries": "admin",
    "/matrec.v1.DashboardService/QueryJobs": "viewer",
    "/matrec.v1.DashboardService/WhoAmI": "viewer",
    "/matrec.v1.DashboardService/GetStudySummary": "viewer",
    "/matrec.v1.DashboardService/GetSampleImage": "viewer",
}
#: Methods an agent token may call besides its own role's: fetching the checkpoint to resume.
AGENT_MAY_ALSO_CALL = frozenset({"/matrec.v1.JobService/DownloadArtifact"})
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Identity:
    token_id: str
    name: str
    role: str
    permissions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Caller:
    """Who made a call, as records store it."""

    name: str
    token_id: str | None = None


LOCAL_CALLER = Caller("local")


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    permissions: tuple[str, ...] = ()
    created_by: str = "unknown"
    revoked_by: str | None = None


#: The caller of the RPC being handled (None with authentication off).
current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "matrec_identity", default=None
)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: sa.Row[Any]) -> TokenRecord:
    m = row._mapping
    created = as_utc(m["created_at"])
    assert created is not None
    return TokenRecord(
        m["id"],
        m["name"],
        m["role"],
        created,
        as_utc(m["expires_at"]),
        as_utc(m["revoked_at"]),
        tuple(p for p in m["permissions"].split(",") if p),
        m["created_by"],
        m["revoked_by"],
    )


def caller(context: grpc.aio.ServicerContext) -> Caller:
    """The caller of the RPC being handled (see the module's notes)."""
    identity = current_identity.get()
    if identity is not None:
        return Caller(identity.name, identity.token_id)
    common_name = peer_common_name(context.auth_context())
    return Caller(f"cert:{common_name}") if common_name else LOCAL_CALLER


def may_cancel(owner: str) -> bool:
    """Whether the current caller may cancel a record `owner` made: its own (same token
    name), or anyone's with `cancel-any` or the admin role, or anything with authentication
    off."""
    identity = current_identity.get()
    return identity is None or identity.name == owner or has_permission(PERMISSION_CANCEL_ANY)


async def refuse_foreign_cancel(context: grpc.aio.ServicerContext, what: str, owner: str) -> None:
    """PERMISSION_DENIED unless the caller may cancel `what` (see `may_cancel`)."""
    if not may_cancel(owner):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{what} belongs to {owner!r}; only its owner, an admin or a token with the "
            f"{PERMISSION_CANCEL_ANY!r} permission may cancel it",
        )


async def refuse_scripts_unless_allowed(context: grpc.aio.ServicerContext, kind: str) -> None:
    """PERMISSION_DENIED for a `script` job unless the caller holds the `scripts` permission:
    the right to fine-tune is not a shell on every GPU host."""
    if kind == "script" and not has_permission(PERMISSION_SCRIPTS):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"a script job runs a program on agent hosts; it needs a token with the "
            f"{PERMISSION_SCRIPTS!r} permission (matrec-ctl tokens create --allow-scripts)",
        )


def has_permission(permission: str) -> bool:
    """Whether the current caller holds `permission` (always, with authentication off)."""
    identity = current_identity.get()
    if identity is None or identity.role == "admin":
        return True
    return permission in identity.permissions


class TokenStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(
        self,
        name: str,
        role: str,
        ttl: timedelta | None = None,
        *,
        permissions: Sequence[str] = (),
        created_by: str = "local",
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret (shown once; only its hash is stored)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        unknown = sorted(set(permissions) - set(PERMISSIONS))
        if unknown:
            raise ValueError(
                f"unknown permission {', '.join(unknown)}; choose from: {', '.join(PERMISSIONS)}"
            )
        if not name.strip():
            raise ValueError("a token needs a name (an agent token: the agent's name)")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        token_id = new_id("tok")
        with self.engine.begin() as conn:
            conn.execute(
                schema.tokens.insert().values(
                    id=token_id,
                    name=name,
                    role=role,
                    token_sha256=token_hash(secret),
                    created_at=now,
                    expires_at=now + ttl if ttl else None,
                    permissions=",".join(sorted(set(permissions))),
                    created_by=created_by,
                )
            )
        record = self.get(token_id)
        assert record is not None
        return record, secret

    def get(self, token_id: str) -> TokenRecord | None:
        t = schema.tokens
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == token_id)).first()
        return _record(row) if row is not None else None

    def list(self) -> list[TokenRecord]:
        t = schema.tokens
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(sa.select(t).order_by(t.c.created_at))]

    def revoke(self, token_id: str, revoked_by: str = "local") -> TokenRecord | None:
        t = schema.tokens
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == token_id, t.c.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_by=revoked_by)
            )
        return self.get(token_id)

    def identify(self, secret: str) -> Identity | None:
        """The live token behind `secret`, or None (unknown, revoked or expired)."""
        t = schema.tokens
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.token_sha256 == token_hash(secret))).first()
        if row is None:
            return None
        record = _record(row)
        if record.revoked_at is not None:
            return None
        if record.expires_at is not None and record.expires_at <= utcnow():
            return None
        return Identity(record.id, record.name, record.role, frozenset(record.permissions))

    def has_live_admin(self) -> bool:
        t = schema.tokens
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.role == "admin", t.c.revoked_at.is_(None))
            ).all()
        now = utcnow()
        return any((r := _record(row)).expires_at is None or r.expires_at > now for row in rows)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def allowed(role: str, required: str) -> bool:
    return required in ROLE_INCLUDES.get(role, frozenset())


Behaviour = Callable[..., Any]


def _deny(
    handler: grpc.RpcMethodHandler,
    code: grpc.StatusCode,
    message: str,
    identity: Identity | None = None,
) -> Any:
    """A handler that refuses the call (as `identity`, when the caller is known, for the
    audit log)."""

    async def abort(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        current_identity.set(identity)
        await context.abort(code, message)

    async def abort_stream(
        request_or_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        current_identity.set(identity)
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    return rebuild_handler(handler, abort, abort_stream)


def _as(handler: grpc.RpcMethodHandler, identity: Identity) -> Any:
    """The handler, run with `identity` as the current caller."""
    # grpc's stubs type these as sync behaviours; on an aio server they are coroutines.
    unary: Any = handler.unary_unary or handler.stream_unary
    streaming: Any = handler.unary_stream or handler.stream_stream

    async def call(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        current_identity.set(identity)
        assert unary is not None
        return await unary(request_or_iterator, context)

    async def stream(
        request_or_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        current_identity.set(identity)
        assert streaming is not None
        async for response in streaming(request_or_iterator, context):
            yield response

    return rebuild_handler(handler, call, stream)


def rebuild_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    streaming: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
) -> Any:
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **serializers)
    return grpc.stream_stream_rpc_method_handler(streaming, **serializers)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenStore, *, enabled: bool) -> None:
        self.tokens = tokens
        self.enabled = enabled

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if not self.enabled or handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        required = METHOD_ROLES.get(method)
        if required is None:
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, f"{method}: no access rule")
        secret = bearer_token(handler_call_details.invocation_metadata)
        identity = self.tokens.identify(secret) if secret else None
        if identity is None:
            why = "no token" if secret is None else "unknown, revoked or expired token"
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{why}; pass one as `authorization: Bearer <token>` "
                "(matrec-ctl --token or MATREC_TOKEN)",
            )
        if not allowed(identity.role, required) and not (
            identity.role == "agent" and method in AGENT_MAY_ALSO_CALL
        ):
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {identity.name!r} has role {identity.role}; {method} needs {required}",
                identity,
            )
        return _as(handler, identity)
