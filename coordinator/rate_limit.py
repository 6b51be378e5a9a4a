"""Per-caller rate limits: a token bucket per API token (per client address for calls without
one). A caller over its rate gets RESOURCE_EXHAUSTED with the time to wait, and the SDK waits
and retries; other callers are not slowed. Agents' Connect streams, health checks and
reflection are not limited: an agent's stream is one long call, and its messages are bounded by
its own tasks."""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from matrec.common.metadata import RETRY_AFTER_KEY
from matrec.coordinator.auth import OPEN_PREFIXES, bearer_token, rebuild_handler

UNLIMITED_METHODS = ("/matrec.v1.AgentService/Connect",)
#: Callers remembered at once; the least recently seen are forgotten first.
MAX_CALLERS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`rate` calls per second per key, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one call for `key`: 0.0 if allowed now, else the seconds until it would be."""
        now = self.clock()
        bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        while len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def caller_key(context: grpc.aio.ServicerContext) -> str:
    token = bearer_token(context.invocation_metadata())
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    peer = context.peer() or ""
    # "ipv4:127.0.0.1:53122" -> the address without the client's port.
    return "peer:" + peer.rsplit(":", 1)[0]


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, rate: float, burst: float) -> None:
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            self.buckets is None
            or handler is None
            or method.startswith(OPEN_PREFIXES)
            or method in UNLIMITED_METHODS
        ):
            return handler
        buckets = self.buckets
        unary: Any = handler.unary_unary or handler.stream_unary
        streaming: Any = handler.unary_stream or handler.stream_stream

        async def refuse(context: grpc.aio.ServicerContext, wait: float) -> None:
            millis = max(1, math.ceil(wait * 1000))
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(millis)),))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit: {buckets.rate:g} calls/s per caller (bursts of {buckets.burst:g}); "
                f"retry in {millis} ms",
            )

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            wait = buckets.take(caller_key(context))
            if wait > 0:
                await refuse(context, wait)
            return await unary(request, context)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            wait = buckets.take(caller_key(context))
            if wait > 0:
                await refuse(context, wait)
            async for response in streaming(request, context):
                yield response

        return rebuild_handler(handler, call, stream)
