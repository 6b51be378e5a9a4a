"""The dashboard's browser-facing security: response headers (a strict Content-Security-Policy:
scripts and styles only from matrec's own files, nothing inline), the sign-in cookie, and the
CSRF check every state-changing request must pass (same-origin Origin header and a double-submit
token).

The session cookie holds the user's matrec token itself: the dashboard keeps no sessions of its
own, and the coordinator judges every call by that token's role, exactly as for matrec-ctl.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_COOKIE = "matrec_token"
CSRF_COOKIE = "matrec_csrf"
CSRF_FIELD = "csrf"
NEW_CSRF_STATE = "matrec_new_csrf"
MAX_FORM_BYTES = 64 * 1024
#: Nothing from anywhere but the dashboard itself; no inline script or style, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: The HTML reports (sdk/reports) have no scripts at all, but inline styles and data: images.
REPORT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on POSTs.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response (pages, assets, errors, event streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                # A response may set its own, stricter or differently scoped policy.
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CsrfCookie:
    """Gives every browser a random CSRF token in an HttpOnly, SameSite=Strict cookie (set on
    its first response); pages put the same token into their forms (`csrf_token`)."""

    def __init__(self, app: ASGIApp, *, secure: bool = False) -> None:
        self.app = app
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.cookies.get(CSRF_COOKIE):
            await self.app(scope, receive, send)
            return
        token = secrets.token_urlsafe(32)
        scope.setdefault("state", {})[NEW_CSRF_STATE] = token
        cookie = f"{CSRF_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        if self.secure:
            cookie += "; Secure"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def csrf_token(request: Request) -> str:
    """The request's CSRF token: its cookie's, or the new one its response sets."""
    return request.cookies.get(CSRF_COOKIE) or str(getattr(request.state, NEW_CSRF_STATE))


def _same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this dashboard: its Origin (else its Referer)
    names this very scheme, host and port. Browsers send Origin with every cross-site POST."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    host = request.headers.get("host", "")
    return parts.scheme == request.url.scheme and parts.netloc == host


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form (the only kind the dashboard's pages send), first value
    of each; a body over `MAX_FORM_BYTES` or of another type gives no fields."""
    if "state" in request.scope and "matrec_form" in request.scope["state"]:
        return dict(request.scope["state"]["matrec_form"])
    fields: dict[str, str] = {}
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/x-www-form-urlencoded":
        body = await request.body()
        if len(body) <= MAX_FORM_BYTES:
            for key, values in parse_qs(body.decode("utf-8", "replace")).items():
                fields[key] = values[0]
    request.scope.setdefault("state", {})["matrec_form"] = fields
    return dict(fields)


async def csrf_problem(request: Request) -> str | None:
    """Why a state-changing request must be refused, or None when it passes: it must come from
    this dashboard's own origin and carry the CSRF token of its cookie in its form."""
    if not _same_origin(request):
        return "cross-site request refused (its Origin is not this dashboard)"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = (await form_fields(request)).get(CSRF_FIELD, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return "missing or wrong CSRF token; reload the page and try again"
    return None
