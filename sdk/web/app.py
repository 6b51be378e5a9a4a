"""The web dashboard: a Starlette app that is a client of the coordinator's public gRPC API
through the SDK's `Client`, like matrec-ctl. It stores nothing: with `auth`, each request acts
with the matrec token of the signed-in user (so the coordinator enforces that token's role);
without it, with the token the dashboard was started with.

Pages are rendered on the server (`pages`); live parts (a run's curves, state, history and log
lines; the cluster) come as server-sent events from WatchJob / WatchCluster.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time as time_module
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from matrec.sdk.client import Client
from matrec.sdk.errors import MatrecError, NotFoundError
from matrec.sdk.job_pages import SORT_KEYS, JobPageQuery
from matrec.sdk.types import (
    JOB_STATES,
    ClusterSnapshot,
    HistoryEntry,
    JobUpdate,
    LogsEvent,
    MetricsEvent,
)
from matrec.sdk.web import pages
from matrec.sdk.web.security import (
    REPORT_POLICY,
    TOKEN_COOKIE,
    CsrfCookie,
    SecurityHeaders,
    csrf_problem,
    csrf_token,
    form_fields,
)
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZE_MAX = 500
CLIENT_CACHE_SIZE = 32
STUDY_POLL_SECONDS = 3.0


@dataclass(frozen=True)
class WebSettings:
    """`coordinator`: its address. `auth`: every user signs in with their own matrec token
    (kept in an HttpOnly, SameSite=Strict cookie); else every request uses `token`.
    `secure_cookies`: the dashboard is served over HTTPS. `allowed_hosts`: Host headers it
    answers (against DNS rebinding); `tls_*`: how to reach a TLS coordinator."""

    coordinator: str
    auth: bool = False
    token: str | None = None
    secure_cookies: bool = False
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class SignInRequired(Exception):
    """No (or no longer a valid) token: send the browser to the sign-in page."""


class Clients:
    """One SDK client per token (a gRPC channel each), the least recently used closed first."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self._clients: OrderedDict[str, Client] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str | None) -> Client:
        key = token or ""
        with self._lock:
            client = self._clients.pop(key, None)
            if client is None:
                s = self.settings
                client = Client(
                    s.coordinator, token=token, tls_ca=s.tls_ca, tls_cert=s.tls_cert,
                    tls_key=s.tls_key,
                )  # fmt: skip
            self._clients[key] = client
            while len(self._clients) > CLIENT_CACHE_SIZE:
                self._clients.popitem(last=False)[1].close()
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _parse_day(text: str, field: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a date (YYYY-MM-DD)") from None


def runs_query(request: Request) -> JobPageQuery:
    """The runs list's filters, order and page from the URL. Raises ValueError naming the
    parameter that is wrong."""
    params = request.query_params
    state = params.get("state", "")
    if state and state not in JOB_STATES:
        raise ValueError(f"state: {state!r} is not one of {', '.join(JOB_STATES)}")
    sort = params.get("sort", "created_at")
    if sort not in SORT_KEYS:
        raise ValueError(f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValueError("order: must be asc or desc")
    try:
        offset = int(params.get("offset", "0"))
        size = int(params.get("size", "50"))
    except ValueError:
        raise ValueError("offset and size must be whole numbers") from None
    if offset < 0 or not 1 <= size <= PAGE_SIZE_MAX:
        raise ValueError(f"offset must be >= 0 and size 1..{PAGE_SIZE_MAX}")
    before = _parse_day(params.get("before", ""), "before")
    return JobPageQuery(
        states=(state,) if state else (),
        kind=params.get("kind", "").strip(),
        name_contains=params.get("name", "").strip(),
        created_after=_parse_day(params.get("after", ""), "after"),
        # "before" is inclusive of the day named, as a person reads a date range.
        created_before=before + timedelta(days=1) if before else None,
        sort=sort,
        descending=order == "desc",
        offset=offset,
        page_size=size,
    )


def _metric_points(event: MetricsEvent) -> list[list[Any]]:
    return [[m.key, m.step, m.value, m.task_id] for m in event.metrics]


def _job_message(event: JobUpdate) -> dict[str, Any]:
    job = event.job
    return {
        "state": job.state,
        "error": job.error,
        "finished": job.finished,
        "final": pages.final_numbers(job.result),
        "tasks": [
            [t.id, t.state, f"{t.attempt}/{t.max_attempts}", t.agent_id or "-", t.error]
            for t in job.tasks
        ],
    }


def watch_messages(client: Client, job_id: str) -> Iterator[str]:
    """The job's WatchJob stream as server-sent events (JSON payloads, one event type each)."""
    for event in client.watch(job_id, include_logs=True):
        data: Any
        if isinstance(event, MetricsEvent):
            kind, data = "metrics", _metric_points(event)
        elif isinstance(event, JobUpdate):
            kind, data = "job", _job_message(event)
        elif isinstance(event, HistoryEntry):
            e = event.event
            row = [pages.format_utc(e.time), e.task_id or "-", e.attempt, e.kind, e.message]
            kind, data = "history", row
        elif isinstance(event, LogsEvent):
            kind, data = "logs", [line.text for line in event.lines]
        else:  # pragma: no cover - a new event type the page does not show yet
            continue
        yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
    yield "event: end\ndata: {}\n\n"


def first_snapshot(client: Client) -> ClusterSnapshot:
    snapshots = client.watch_cluster()
    try:
        return next(snapshots)
    finally:
        snapshots.close()


def study_summary_options(request: Request) -> dict[str, Any]:
    """The trial table's filters, order and page from the URL (GetStudySummary's arguments).
    Raises ValueError naming the parameter that is wrong."""
    params = request.query_params
    options: dict[str, Any] = {
        "trial_states": [params["state"]] if params.get("state") else [],
        "param": params.get("param", ""),
        "sort": params.get("sort") or "number",
        "descending": params.get("order") == "desc",
    }
    for name, key in (("min", "param_min"), ("max", "param_max")):
        if params.get(name):
            try:
                options[key] = float(params[name])
            except ValueError:
                raise ValueError(f"{name}: {params[name]!r} is not a number") from None
    for name, key in (("offset", "offset"), ("size", "page_size")):
        if params.get(name):
            try:
                options[key] = int(params[name])
            except ValueError:
                raise ValueError(f"{name}: {params[name]!r} is not a whole number") from None
    return options


def study_messages(client: Client, study_id: str, options: dict[str, Any]) -> Iterator[str]:
    """The study's summary again whenever it changed, every STUDY_POLL_SECONDS while it runs
    (the summary is bounded in size, unlike WatchStudy's whole study of every trial)."""
    last = ""
    while True:
        summary = client.study_summary(study_id, **options)
        text = json.dumps(summary)
        if text != last:
            last = text
            yield f"event: summary\ndata: {text}\n\n"
        if summary["study"]["state"] != "running":
            yield "event: end\ndata: {}\n\n"
            return
        time_module.sleep(STUDY_POLL_SECONDS)


def cluster_messages(client: Client) -> Iterator[str]:
    for snapshot in client.watch_cluster(interval=1.0):
        yield f"event: snapshot\ndata: {json.dumps(pages.cluster_data(snapshot))}\n\n"


class Dashboard:
    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.clients = Clients(settings)

    # ---- who is asking ------------------------------------------------------------------------

    def token(self, request: Request) -> str | None:
        if not self.settings.auth:
            return self.settings.token
        token = request.cookies.get(TOKEN_COOKIE)
        if not token:
            raise SignInRequired
        return token

    def client(self, request: Request) -> Client:
        return self.clients.get(self.token(request))

    async def call(self, request: Request, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self.client(request)
        try:
            return await run_in_threadpool(getattr(client, method), *args, **kwargs)
        except MatrecError as exc:
            if exc.code == "UNAUTHENTICATED" and self.settings.auth:
                raise SignInRequired from None
            raise

    async def frame(self, request: Request) -> dict[str, Any]:
        """The page frame's values: who is signed in, the CSRF token, whether auth is on."""
        name, role = await self.call(request, "whoami")
        return {"user": name, "role": role, "csrf": csrf_token(request), "auth": self.settings.auth}

    # ---- pages --------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/runs", status_code=303)

    async def login_form(self, request: Request) -> Response:
        return HTMLResponse(pages.login_page(csrf_token(request)))

    async def login(self, request: Request) -> Response:
        problem = await csrf_problem(request)
        if problem:
            return HTMLResponse(pages.login_page(csrf_token(request), problem), status_code=403)
        token = (await form_fields(request)).get("token", "").strip()
        try:
            await run_in_threadpool(self.clients.get(token).whoami)
        except MatrecError as exc:
            message = "that token is unknown, revoked or expired"
            if exc.code != "UNAUTHENTICATED":
                message = f"could not check the token: {exc}"
            return HTMLResponse(pages.login_page(csrf_token(request), message), status_code=401)
        response = RedirectResponse("/runs", status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookies,
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        problem = await csrf_problem(request)
        if problem:
            return HTMLResponse(pages.error_page(403, problem), status_code=403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE, path="/")
        return response

    async def runs(self, request: Request) -> Response:
        try:
            query = runs_query(request)
        except ValueError as exc:
            frame = await self.frame(request)
            return HTMLResponse(pages.error_page(400, str(exc), **frame), status_code=400)
        page = await self.call(request, "query_jobs", query)
        frame = await self.frame(request)
        return HTMLResponse(pages.runs_page(page, query, **frame))

    async def run(self, request: Request, message: str = "", status: int = 200) -> Response:
        job_id = request.path_params["job_id"]
        job = await self.call(request, "get_job", job_id)
        artifacts = await self.call(request, "list_artifacts", job_id)
        frame = await self.frame(request)
        body = pages.run_page(job, artifacts, message=message, **frame)
        return HTMLResponse(body, status_code=status)

    async def report(self, request: Request) -> Response:
        """The run's HTML report (`matrec-ctl report --format html`), scripts forbidden."""
        from matrec.sdk.reports import export_report, fetch_report

        client = self.client(request)
        job_id = request.path_params["job_id"]
        await self.call(request, "get_job", job_id)  # sign-in and 404 first
        report = await run_in_threadpool(fetch_report, client, job_id)
        html = await run_in_threadpool(export_report, report, "html")
        return Response(
            html, media_type="text/html", headers={"content-security-policy": REPORT_POLICY}
        )

    async def cancel(self, request: Request) -> Response:
        problem = await csrf_problem(request)
        if problem:
            return HTMLResponse(pages.error_page(403, problem), status_code=403)
        job_id = request.path_params["job_id"]
        try:
            await self.call(request, "cancel_job", job_id, "cancelled from the web dashboard")
        except MatrecError as exc:
            if exc.code == "PERMISSION_DENIED":
                text = f"you may not cancel this run: {exc.message}"
                return await self.run(request, text, 403)
            if exc.code == "FAILED_PRECONDITION":
                return await self.run(request, exc.message, 409)
            raise
        return RedirectResponse(f"/runs/{job_id}", status_code=303)

    async def run_events(self, request: Request) -> Response:
        client = self.client(request)
        job_id = request.path_params["job_id"]
        await self.call(request, "get_job", job_id)  # 404 / sign-in before the stream starts
        return _event_stream(watch_messages(client, job_id))

    async def artifact(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        uri = request.query_params.get("uri", "")
        known = await self.call(request, "list_artifacts", job_id)
        if uri not in {a.uri for a in known}:
            frame = await self.frame(request)
            text = f"run {job_id} has no artifact {uri!r}"
            return HTMLResponse(pages.error_page(404, text, **frame), status_code=404)
        folder = Path(tempfile.mkdtemp(prefix="matrec-web-"))
        try:
            path = await self.call(request, "download_artifact", job_id, f"{folder}/", uri=uri)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(
            path,
            filename=Path(uri).name,
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )

    async def studies(self, request: Request) -> Response:
        studies = await self.call(request, "list_studies", 50)
        frame = await self.frame(request)
        return HTMLResponse(pages.studies_page(studies, **frame))

    async def study(self, request: Request) -> Response:
        frame = await self.frame(request)
        study_id = request.path_params["study_id"]
        return HTMLResponse(pages.study_page(study_id, request.url.query, **frame))

    async def study_summary(self, request: Request) -> Response:
        try:
            options = study_summary_options(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        study_id = request.path_params["study_id"]
        summary = await self.call(request, "study_summary", study_id, **options)
        return JSONResponse(summary, headers={"cache-control": "no-store"})

    async def study_events(self, request: Request) -> Response:
        study_id = request.path_params["study_id"]
        options = study_summary_options(request)
        await self.call(request, "study_summary", study_id, page_size=1)  # sign-in, 404 first
        return _event_stream(study_messages(self.client(request), study_id, options))

    async def projects(self, request: Request) -> Response:
        projects = await self.call(request, "list_learning_projects")
        frame = await self.frame(request)
        return HTMLResponse(pages.projects_page(projects, **frame))

    async def project(self, request: Request) -> Response:
        project_id = request.path_params["project_id"]
        project = await self.call(request, "get_learning_project", project_id)
        batches = await self.call(request, "list_batches", project_id)
        triggers = await self.call(request, "list_triggers", project_id)
        frame = await self.frame(request)
        return HTMLResponse(pages.project_page(project, batches, triggers, **frame))

    async def labelling(self, request: Request) -> Response:
        batch = await self.call(request, "get_batch", request.path_params["batch_id"])
        project = await self.call(request, "get_learning_project", batch.project_id)
        frame = await self.frame(request)
        return HTMLResponse(pages.labelling_page(batch, project.classes, **frame))

    async def sample_image(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        sample_id = request.path_params["sample_id"]
        png = await self.call(request, "sample_image", batch_id, sample_id)
        return Response(png, media_type="image/png", headers={"cache-control": "private"})

    async def label(self, request: Request) -> Response:
        problem = await csrf_problem(request)
        if problem:
            return JSONResponse({"error": problem}, status_code=403)
        form = await form_fields(request)
        batch_id = request.path_params["batch_id"]
        try:
            candidate, changed = await self.call(
                request,
                "record_feedback",
                batch_id,
                form.get("sample_id", ""),
                form.get("label", ""),
                overwrite=form.get("overwrite") == "1",
            )
        except MatrecError as exc:
            status = {
                "PERMISSION_DENIED": 403,
                "FAILED_PRECONDITION": 409,
                "NOT_FOUND": 404,
            }.get(exc.code or "", 400)
            return JSONResponse({"error": str(exc)}, status_code=status)
        return JSONResponse(
            {"sample_id": candidate.sample_id, "label": candidate.label, "changed": changed}
        )

    async def cluster(self, request: Request) -> Response:
        snapshot = await run_in_threadpool(first_snapshot, self.client(request))
        frame = await self.frame(request)
        return HTMLResponse(pages.cluster_page(snapshot, **frame))

    async def cluster_events(self, request: Request) -> Response:
        await self.frame(request)  # sign-in before the stream starts
        return _event_stream(cluster_messages(self.client(request)))


def _event_stream(messages: Iterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for message in iterate_in_threadpool(messages):
                yield message
        except MatrecError as exc:
            yield f"event: failure\ndata: {json.dumps(str(exc))}\n\n"

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _lifespan(dashboard: Dashboard) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dashboard.clients.close()

    return lifespan


def create_app(settings: WebSettings) -> Starlette:
    dashboard = Dashboard(settings)

    async def sign_in(request: Request, exc: Exception) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE, path="/")
        return response

    async def matrec_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MatrecError)
        status = 404 if isinstance(exc, NotFoundError) else 403
        if exc.code not in ("PERMISSION_DENIED", "NOT_FOUND"):
            status = 502
        return HTMLResponse(pages.error_page(status, str(exc)), status_code=status)

    routes = [
        Route("/", dashboard.home),
        Route("/login", dashboard.login_form, methods=["GET"]),
        Route("/login", dashboard.login, methods=["POST"]),
        Route("/logout", dashboard.logout, methods=["POST"]),
        Route("/runs", dashboard.runs),
        Route("/runs/{job_id}", dashboard.run),
        Route("/runs/{job_id}/cancel", dashboard.cancel, methods=["POST"]),
        Route("/runs/{job_id}/report.html", dashboard.report),
        Route("/runs/{job_id}/events", dashboard.run_events),
        Route("/runs/{job_id}/artifacts", dashboard.artifact),
        Route("/studies", dashboard.studies),
        Route("/studies/{study_id}", dashboard.study),
        Route("/studies/{study_id}/summary.json", dashboard.study_summary),
        Route("/studies/{study_id}/events", dashboard.study_events),
        Route("/projects", dashboard.projects),
        Route("/projects/{project_id}", dashboard.project),
        Route("/labelling/{batch_id}", dashboard.labelling),
        Route("/labelling/{batch_id}/label", dashboard.label, methods=["POST"]),
        Route("/labelling/{batch_id}/images/{sample_id:path}", dashboard.sample_image),
        Route("/cluster", dashboard.cluster),
        Route("/cluster/events", dashboard.cluster_events),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts)),
            Middleware(CsrfCookie, secure=settings.secure_cookies),
        ],
        exception_handlers={SignInRequired: sign_in, MatrecError: matrec_error},
        lifespan=_lifespan(dashboard),
    )
