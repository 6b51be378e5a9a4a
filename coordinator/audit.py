"""The audit log: every state-changing call, who made it, what it named or made, from which
peer, and whether it was allowed (refused: the status code and message). Only ids are kept,
never a request body, so no secret (a token's, a dataset's credentials) reaches the log.
A refused call is logged once per caller and reason per minute, so a flood of refusals cannot
fill the database."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from matrec.coordinator import schema
from matrec.coordinator.auth import caller, current_identity
from matrec.coordinator.availability import DATABASE_DOWN_ERRORS
from matrec.coordinator.store import as_utc, utcnow

log = logging.getLogger(__name__)

#: The RPCs that change state (the rest only read): each call of one is logged.
AUDITED_METHODS = frozenset(
    f"/matrec.v1.{path}"
    for path in (
        "JobService/SubmitJob",
        "JobService/CancelJob",
        "StudyService/CreateStudy",
        "StudyService/CancelStudy",
        "ActiveLearningService/CreateProject",
        "ActiveLearningService/ScorePool",
        "ActiveLearningService/SelectSamples",
        "ActiveLearningService/RecordFeedback",
        "ActiveLearningService/CheckTriggers",
        "ActiveLearningService/Retrain",
        "AgentService/RegisterAgent",
        "TokenService/CreateToken",
        "TokenService/RevokeToken",
        "TokenService/SetTokenLimits",
    )
)
ALLOWED, REFUSED = "allowed", "refused"
#: A caller's repeated refusal for the same reason is logged at most this often.
REFUSAL_INTERVAL_SECONDS = 60.0
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: datetime
    who: str
    token_id: str | None
    method: str
    targets: dict[str, str]
    peer: str
    outcome: str
    reason: str


def _entry(row: sa.Row[Any]) -> AuditEntry:
    m = row._mapping
    when = as_utc(m["time"])
    assert when is not None
    return AuditEntry(
        m["id"],
        when,
        m["who"],
        m["token_id"],
        m["method"],
        dict(m["targets"] or {}),
        m["peer"],
        m["outcome"],
        m["reason"],
    )


class AuditLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._refusals: dict[tuple[str, str], float] = {}

    def record(
        self,
        *,
        who: str,
        token_id: str | None,
        method: str,
        targets: dict[str, str],
        peer: str,
        outcome: str,
        reason: str = "",
    ) -> bool:
        """Store one entry; False when a refusal was left out (logged within the minute)."""
        if outcome == REFUSED and not self._first_refusal_this_minute(who, reason):
            return False
        with self.engine.begin() as conn:
            conn.execute(
                schema.audit_log.insert().values(
                    time=utcnow(),
                    who=who,
                    token_id=token_id,
                    method=method,
                    targets=targets,
                    peer=peer,
                    outcome=outcome,
                    reason=reason,
                )
            )
        return True

    def _first_refusal_this_minute(self, who: str, reason: str) -> bool:
        now = time.monotonic()
        if len(self._refusals) > 10_000:  # forget old refusals: the map stays small
            cutoff = now - REFUSAL_INTERVAL_SECONDS
            self._refusals = {k: t for k, t in self._refusals.items() if t > cutoff}
        last = self._refusals.get((who, reason))
        if last is not None and now - last < REFUSAL_INTERVAL_SECONDS:
            return False
        self._refusals[(who, reason)] = now
        return True

    def entries(
        self, since: datetime | None = None, who: str = "", limit: int = 1000
    ) -> list[AuditEntry]:
        """The newest `limit` entries (at or after `since`, of `who`), oldest first."""
        a = schema.audit_log
        query = sa.select(a).order_by(a.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(a.c.time >= since)
        if who:
            query = query.where(a.c.who == who)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_entry(r) for r in reversed(rows)]

    def delete_before(self, cutoff: datetime) -> int:
        a = schema.audit_log
        with self.engine.begin() as conn:
            return conn.execute(a.delete().where(a.c.time < cutoff)).rowcount or 0


def target_ids(request: Message, response: Message | None) -> dict[str, str]:
    """The ids a call named (its request's `*_id` fields) and made (its response's `*_id`
    fields and the `id` of the records it returns)."""
    targets = {
        field.name: value
        for field, value in request.ListFields()
        if field.name.endswith("_id") and isinstance(value, str) and value
    }
    if response is None:
        return targets
    for field, value in response.ListFields():
        if field.name.endswith("_id") and isinstance(value, str) and value:
            targets.setdefault(field.name, value)
        elif field.message_type is not None and "id" in field.message_type.fields_by_name:
            items = [value] if isinstance(value, Message) else list(value)
            ids = ",".join(
                str(getattr(item, "id", "")) for item in items if getattr(item, "id", "")
            )
            if ids:
                targets.setdefault(f"{field.name}_id", ids)
    return targets


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Logs each call of an audited RPC with its outcome. It sits outside the authentication
    interceptor, so that calls refused there are logged too."""

    def __init__(self, audit: AuditLog, *, auth: bool) -> None:
        self.audit = audit
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in AUDITED_METHODS or handler.unary_unary is None:
            return handler
        inner: Unary = handler.unary_unary  # type: ignore[assignment]

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await inner(request, context)
            except BaseException:
                code = context.code()
                reason = f"{code.name if code else 'ERROR'}: {context.details() or ''}".strip()
                self._record(context, method, request, None, REFUSED, reason)
                raise
            self._record(context, method, request, response, ALLOWED, "")
            return response

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _record(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        request: Message,
        response: Message | None,
        outcome: str,
        reason: str,
    ) -> None:
        identity = current_identity.get()
        if identity is not None:
            who, token_id = identity.name, identity.token_id
        elif self.auth:
            who, token_id = ANONYMOUS, None
        else:
            who, token_id = caller(context).name, None
        targets = target_ids(request, response)
        try:
            self.audit.record(
                who=who,
                token_id=token_id,
                method=method,
                targets=targets,
                peer=context.peer() or "",
                outcome=outcome,
                reason=reason,
            )
        except DATABASE_DOWN_ERRORS as error:
            # The call's own answer stands; the entry goes to the log instead.
            log.warning(
                "audit entry not stored (database unreachable: %s): %s %s %s %s %s",
                error, who, method, targets, outcome, reason,
            )  # fmt: skip
