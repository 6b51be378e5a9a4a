"""Synchronous client for the coordinator: every public RPC of its JobService (jobs, agents,
metrics, artifacts, the cluster view), StudyService (hyperparameter studies), TokenService (API
tokens) and ActiveLearningService (projects, batches, feedback, triggers), over one channel."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from matrec.common.active_learning.project import parse_project_spec
from matrec.common.metadata import RETRY_AFTER_KEY
from matrec.common.specs import JobSpecModel, SpecError, parse_job_spec
from matrec.common.studies import StudySpecModel, parse_study_spec
from matrec.common.wire import job_spec_to_proto, study_spec_to_proto
from matrec.sdk.address import default_address, default_tls, default_token
from matrec.sdk.convert import (
    agent_from_proto,
    artifact_from_proto,
    audit_entry_from_proto,
    batch_from_proto,
    candidate_from_proto,
    cluster_snapshot_from_proto,
    job_from_proto,
    job_state_to_proto,
    metric_from_proto,
    project_from_proto,
    study_from_proto,
    token_from_proto,
    trigger_from_proto,
    watch_event_from_proto,
)
from matrec.sdk.errors import (
    CoordinatorUnavailableError,
    InvalidSpecError,
    JobNotFoundError,
    JobStateError,
    MatrecError,
    NotFoundError,
    ProjectNotFoundError,
    StudyNotFoundError,
    from_rpc_error,
)
from matrec.sdk.evaluation import Evaluation, EvaluationMissingError
from matrec.sdk.job_pages import JobPage, JobPageQuery, job_page_query_to_proto
from matrec.sdk.types import (
    Agent,
    ApiToken,
    Artifact,
    AuditEntry,
    Candidate,
    ClusterSnapshot,
    Job,
    LabellingBatch,
    LearningProject,
    Metric,
    RetrainingTrigger,
    Study,
    WatchEvent,
)
from matrec.v1 import (
    active_learning_pb2,
    active_learning_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    dashboard_pb2,
    dashboard_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    studies_pb2,
    studies_pb2_grpc,
)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: A call refused by the coordinator's rate limit is retried after the wait it names.
RATE_LIMIT_RETRIES = 20
MAX_RATE_LIMIT_WAIT = 10.0

T = TypeVar("T")

# Keepalive pings only while a call is open (a long WatchJob); a coordinator must allow pings this
# often (grpc.http2.min_ping_interval_without_data_ms <= 60 s) or it answers with GOAWAY.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


#: Backoff of `Client.wait` while the coordinator is unreachable (e.g. restarting).
RECONNECT_INITIAL_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the API token) to every call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), *self._metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class Client:
    """A connection to one coordinator.

    `address` defaults to $MATREC_COORDINATOR, else 127.0.0.1:50051. `token` (default
    $MATREC_TOKEN) is sent with every call, for a coordinator that requires one. With `tls_ca`
    (default $MATREC_TLS_CA) the connection is TLS, trusting that CA; `tls_cert`/`tls_key` add a
    client certificate for mutual TLS. `timeout` bounds every single request; watching a job
    has no deadline of its own.

    >>> with Client("127.0.0.1:50051") as client:
    ...     job = client.submit_job({"config": {"dataset_path": "/data/materials"}})
    ...     job = client.wait(job.id)
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        env_ca, env_cert, env_key = default_tls()
        ca = tls_ca or env_ca
        self.tls = bool(ca)
        if ca:
            from matrec.common.tls import channel_credentials

            cert, key = tls_cert or env_cert, tls_key or env_key
            credentials = channel_credentials(
                Path(ca), Path(cert) if cert else None, Path(key) if key else None
            )
            channel = grpc.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        token = token or default_token()
        if token:
            channel = grpc.intercept_channel(
                channel, _MetadataInterceptor((("authorization", f"Bearer {token}"),))
            )
        self._channel = channel
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._studies = studies_pb2_grpc.StudyServiceStub(self._channel)
        self._tokens = auth_pb2_grpc.TokenServiceStub(self._channel)
        self._learning = active_learning_pb2_grpc.ActiveLearningServiceStub(self._channel)
        self._dashboard = dashboard_pb2_grpc.DashboardServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _error(
        self, exc: grpc.RpcError, not_found: type[NotFoundError] = JobNotFoundError
    ) -> MatrecError:
        return from_rpc_error(exc, address=self.address, not_found=not_found, tls=self.tls)

    def _call(
        self, method: Any, request: Any, not_found: type[NotFoundError] = JobNotFoundError
    ) -> Any:
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                wait = _rate_limit_wait(exc)
                if wait is None or attempt == RATE_LIMIT_RETRIES:
                    raise self._error(exc, not_found) from None
                time.sleep(wait)
        raise AssertionError("unreachable")

    def submit_job(self, spec: JobSpecModel | Mapping[str, Any]) -> Job:
        """Validate `spec` locally, then submit it. Raises InvalidSpecError naming the field."""
        raw = spec.model_dump() if isinstance(spec, JobSpecModel) else dict(spec)
        try:
            model, config = parse_job_spec(raw)
        except SpecError as exc:
            raise InvalidSpecError(exc.field, exc.message) from None
        message = job_spec_to_proto(model, config.model_dump(mode="json", exclude_none=True))
        response = self._call(self._stub.SubmitJob, jobs_pb2.SubmitJobRequest(spec=message))
        return job_from_proto(response.job)

    def get_job(self, job_id: str) -> Job:
        """The job with its tasks and full history. Raises JobNotFoundError."""
        response = self._call(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))
        return job_from_proto(response.job, list(response.history))

    def list_jobs(
        self,
        states: Sequence[str] | None = None,
        limit: int = 100,
        *,
        owner: str = "",
        mine: bool = False,
    ) -> list[Job]:
        """Jobs, optionally only those in `states` (e.g. ``["running", "queued"]``), of `owner`
        (a token's name), or the caller's own (`mine`)."""
        request = jobs_pb2.ListJobsRequest(
            states=[job_state_to_proto(state) for state in states or ()],
            limit=limit,
            owner=owner,
            mine=mine,
        )
        response = self._call(self._stub.ListJobs, request)
        return [job_from_proto(job) for job in response.jobs]

    def query_jobs(self, query: JobPageQuery | None = None) -> JobPage:
        """One page of jobs filtered and sorted by the coordinator, and how many match in all
        (see `JobPageQuery`). Raises InvalidSpecError naming a bad field."""
        response = self._call(
            self._dashboard.QueryJobs, job_page_query_to_proto(query or JobPageQuery())
        )
        return JobPage([job_from_proto(job) for job in response.jobs], response.total)

    def whoami(self) -> tuple[str, str]:
        """The caller's name and role as the coordinator sees its token (`admin` with
        authentication off). Raises MatrecError (unauthenticated) for a bad token."""
        response = self._call(self._dashboard.WhoAmI, dashboard_pb2.WhoAmIRequest())
        return response.name, response.role

    def cancel_job(self, job_id: str, reason: str = "") -> Job:
        """Cancel queued and running tasks. Raises JobStateError if the job already finished."""
        response = self._call(
            self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        )
        return job_from_proto(response.job)

    def job_metrics(self, job_id: str) -> list[Metric]:
        """Every stored metric of the job, ordered by (task, step, key)."""
        response = self._call(
            self._stub.ListJobMetrics, jobs_pb2.ListJobMetricsRequest(job_id=job_id)
        )
        return [metric_from_proto(metric) for metric in response.metrics]

    def list_agents(self) -> list[Agent]:
        response = self._call(self._stub.ListAgents, jobs_pb2.ListAgentsRequest())
        return [agent_from_proto(agent) for agent in response.agents]

    def evaluation(self, job_id: str) -> Evaluation:
        """The stored validation metrics of a succeeded finetune job.

        Raises JobStateError when the job has not succeeded (or its result holds no evaluation),
        JobNotFoundError when there is no such job.
        """
        job = self.get_job(job_id)
        if job.state != "succeeded":
            raise JobStateError(
                f"job {job_id} is {job.state}; only a succeeded job has an evaluation"
            )
        try:
            return Evaluation.from_result(job.result)
        except EvaluationMissingError as exc:
            raise JobStateError(f"job {job_id} has no evaluation: {exc}") from None

    def watch_cluster(self, interval: float = 2.0) -> Iterator[ClusterSnapshot]:
        """Follow the whole cluster: a snapshot now, then one whenever something changed (at
        most one per `interval` seconds). Runs until the caller stops iterating."""
        request = jobs_pb2.WatchClusterRequest()
        request.interval.FromMilliseconds(int(interval * 1000))
        stream = self._stub.WatchCluster(request)
        try:
            for message in stream:
                yield cluster_snapshot_from_proto(message.snapshot)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise self._error(exc) from None
        finally:
            stream.cancel()

    def watch(
        self, job_id: str, include_logs: bool = False, *, timeout: float | None = None
    ) -> Iterator[WatchEvent]:
        """Follow a job: its history so far, then state changes, metrics (and log lines).

        The first event is a JobUpdate. Iteration ends when the coordinator ends the stream, which
        it does once the job is final. Leaving the loop early cancels the stream. With `timeout`,
        TimeoutError once that many seconds have passed.
        """
        return self._watch(job_id, include_logs, timeout=timeout)

    def _watch(
        self, job_id: str, include_logs: bool, timeout: float | None
    ) -> Iterator[WatchEvent]:
        request = jobs_pb2.WatchJobRequest(job_id=job_id, include_logs=include_logs)
        stream = self._stub.WatchJob(request, timeout=timeout)
        try:
            for message in stream:
                event = watch_event_from_proto(message)
                if event is not None:
                    yield event
        except grpc.RpcError as exc:
            if timeout is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s") from None
            raise self._error(exc) from None
        finally:
            stream.cancel()

    def wait(self, job_id: str, timeout: float | None = None, *, reconnect: bool = True) -> Job:
        """Block until the job is final and return it (with history). Raises TimeoutError.

        With `reconnect` (the default) a coordinator restart is ridden out: the watch is resumed,
        retrying with backoff, until the job is final or `timeout` runs out.
        """
        return _wait_until_final(
            f"job {job_id}",
            lambda remaining: self._watch(job_id, include_logs=False, timeout=remaining),
            lambda: self.get_job(job_id),
            lambda job: job.finished,
            timeout,
            reconnect,
        )

    # ---- artifacts -----------------------------------------------------------------------------

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        """The files the job produced (model, last checkpoint). Raises JobNotFoundError."""
        response = self._call(
            self._stub.ListArtifacts, jobs_pb2.ListArtifactsRequest(job_id=job_id)
        )
        return [artifact_from_proto(a) for a in response.artifacts]

    def download_artifact(
        self,
        job_id: str,
        destination: str | Path,
        *,
        kind: str = "model",
        uri: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Copy one of the job's artifacts (`uri`, else its newest `kind`) to `destination`: a
        file, or a folder to put it in (an existing one, or a name ending in "/", then created).
        Bytes go to DESTINATION.part first, so an interrupted download resumes where it stopped;
        the file is renamed into place only after its SHA-256 matched. `progress(done, total)`
        is called per chunk. Raises JobNotFoundError, JobStateError (the coordinator cannot see
        the file) or MatrecError (corrupt transfer).
        """
        target = Path(destination)
        if str(destination).endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            name = Path(uri).name if uri else f"{job_id}-{kind}.pt"
            target = target / name
        partial = target.with_name(target.name + ".part")
        offset = partial.stat().st_size if partial.exists() else 0
        request = jobs_pb2.DownloadArtifactRequest(job_id=job_id, uri=uri, kind=kind, offset=offset)
        digest = ""
        try:
            with partial.open("ab") as file:
                for chunk in self._stub.DownloadArtifact(request):
                    if chunk.offset != file.tell():
                        raise MatrecError(
                            f"download of {chunk.uri} out of step at byte {chunk.offset}"
                        )
                    file.write(chunk.data)
                    if progress is not None:
                        progress(file.tell(), chunk.total_size)
                    digest = chunk.sha256 or digest
        except grpc.RpcError as exc:
            # Nothing to resume from, or bytes the coordinator found corrupt (DATA_LOSS).
            if partial.stat().st_size == 0 or exc.code() == grpc.StatusCode.DATA_LOSS:
                partial.unlink()
            raise self._error(exc) from None
        if not digest or _sha256(partial) != digest:
            partial.unlink(missing_ok=True)
            raise MatrecError(f"download of job {job_id}'s {kind or uri} was corrupted; retry")
        partial.replace(target)
        return target

    # ---- API tokens (admin) -------------------------------------------------------------------

    def create_token(
        self, name: str, role: str, ttl_seconds: int = 0, *, permissions: Sequence[str] = ()
    ) -> tuple[ApiToken, str]:
        """A new token and its secret, which is shown only now. Roles: viewer, operator, admin,
        agent (then `name` is the agent's name). Permissions beyond the role: `scripts`,
        `cancel-any`."""
        response = self._call(
            self._tokens.CreateToken,
            auth_pb2.CreateTokenRequest(
                name=name, role=role, ttl_seconds=ttl_seconds, permissions=list(permissions)
            ),
        )
        return token_from_proto(response.token), response.secret

    def list_tokens(self) -> list[ApiToken]:
        response = self._call(self._tokens.ListTokens, auth_pb2.ListTokensRequest())
        return [token_from_proto(t) for t in response.tokens]

    def revoke_token(self, token_id: str) -> ApiToken:
        """Refused from the next call on."""
        response = self._call(
            self._tokens.RevokeToken, auth_pb2.RevokeTokenRequest(token_id=token_id)
        )
        return token_from_proto(response.token)

    def set_token_limits(
        self,
        token_id: str,
        *,
        max_running_tasks: int = 0,
        max_gpus: int = 0,
        max_queued_jobs: int = 0,
    ) -> ApiToken:
        """Bound what the token's jobs may hold at once (0: no bound); replaces its limits."""
        limits = auth_pb2.TokenLimits(
            max_running_tasks=max_running_tasks, max_gpus=max_gpus, max_queued_jobs=max_queued_jobs
        )
        response = self._call(
            self._tokens.SetTokenLimits,
            auth_pb2.SetTokenLimitsRequest(token_id=token_id, limits=limits),
        )
        return token_from_proto(response.token)

    def audit_log(
        self, since: datetime | None = None, who: str = "", limit: int = 1000
    ) -> list[AuditEntry]:
        """The newest `limit` audit entries (at or after `since`, of `who`), oldest first."""
        request = auth_pb2.ListAuditEntriesRequest(who=who, limit=limit)
        if since is not None:
            request.since.FromDatetime(since)
        response = self._call(self._tokens.ListAuditEntries, request)
        return [audit_entry_from_proto(e) for e in response.entries]

    # ---- hyperparameter studies ---------------------------------------------------------------

    def create_study(self, spec: StudySpecModel | Mapping[str, Any]) -> Study:
        """Validate `spec` locally, then start the study. Raises InvalidSpecError naming the
        field (e.g. ``search_space.learning_rate.min``)."""
        raw = spec.model_dump() if isinstance(spec, StudySpecModel) else dict(spec)
        try:
            model = parse_study_spec(raw)
        except SpecError as exc:
            raise InvalidSpecError(exc.field, exc.message) from None
        message = study_spec_to_proto(model)
        if "max_trials" not in raw:
            message.max_trials = 0  # the coordinator's default (grid: the whole grid)
        response = self._call(
            self._studies.CreateStudy, studies_pb2.CreateStudyRequest(spec=message)
        )
        return study_from_proto(response.study)

    def get_study(self, study_id: str) -> Study:
        """The study with every trial and its intermediate values. Raises StudyNotFoundError."""
        response = self._call(
            self._studies.GetStudy,
            studies_pb2.GetStudyRequest(study_id=study_id),
            StudyNotFoundError,
        )
        return study_from_proto(response.study)

    def list_studies(self, limit: int = 100) -> list[Study]:
        """Newest first, without intermediate values."""
        response = self._call(
            self._studies.ListStudies, studies_pb2.ListStudiesRequest(limit=limit)
        )
        return [study_from_proto(s) for s in response.studies]

    def study_summary(
        self,
        study_id: str,
        *,
        max_points: int = 0,
        trial_states: Sequence[str] = (),
        param: str = "",
        param_min: float | None = None,
        param_max: float | None = None,
        sort: str = "number",
        descending: bool = False,
        offset: int = 0,
        page_size: int = 0,
    ) -> dict[str, Any]:
        """The study aggregated for charts (each series at most `max_points` points, default
        1000) and one page of its trial table (filtered by state and one parameter's range,
        sorted by "number" or "value"); the document `matrec.coordinator.study_summary`
        describes. Raises StudyNotFoundError."""
        request = dashboard_pb2.GetStudySummaryRequest(
            study_id=study_id, max_points=max_points, trial_states=list(trial_states),
            param=param, sort=sort, descending=descending, offset=offset, page_size=page_size,
            param_min=param_min, param_max=param_max,
        )  # fmt: skip
        response = self._call(self._dashboard.GetStudySummary, request, StudyNotFoundError)
        return dict(json.loads(response.summary_json))

    def cancel_study(self, study_id: str, reason: str = "") -> Study:
        """Stop the study: no new trials, running ones cancelled. JobStateError once final."""
        response = self._call(
            self._studies.CancelStudy,
            studies_pb2.CancelStudyRequest(study_id=study_id, reason=reason),
            StudyNotFoundError,
        )
        return study_from_proto(response.study)

    def watch_study(
        self, study_id: str, interval: float = 1.0, *, timeout: float | None = None
    ) -> Iterator[Study]:
        """The study now, then again whenever it changed (at most once per `interval`);
        iteration ends once the study is final. TimeoutError after `timeout` seconds."""
        request = studies_pb2.WatchStudyRequest(study_id=study_id)
        request.interval.FromMilliseconds(int(interval * 1000))
        stream = self._studies.WatchStudy(request, timeout=timeout)
        try:
            for message in stream:
                yield study_from_proto(message.study)
        except grpc.RpcError as exc:
            if timeout is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(
                    f"study {study_id} did not finish within {timeout:g} s"
                ) from None
            raise self._error(exc, StudyNotFoundError) from None
        finally:
            stream.cancel()

    def wait_study(
        self, study_id: str, timeout: float | None = None, *, reconnect: bool = True
    ) -> Study:
        """Block until the study is final and return it; rides out coordinator restarts like
        `wait`. Raises TimeoutError."""
        return _wait_until_final(
            f"study {study_id}",
            lambda remaining: self.watch_study(study_id, timeout=remaining),
            lambda: self.get_study(study_id),
            lambda study: study.finished,
            timeout,
            reconnect,
        )

    # ---- active learning ------------------------------------------------------------------

    def create_learning_project(self, spec: Mapping[str, Any]) -> LearningProject:
        """Validate `spec` locally (see matrec.common.active_learning.project), then create the
        project; it scores its labelled data and its pool at once. Raises InvalidSpecError."""
        try:
            model = parse_project_spec(dict(spec))
        except SpecError as exc:
            raise InvalidSpecError(exc.field, exc.message) from None
        request = active_learning_pb2.CreateProjectRequest(
            spec=_struct(model.model_dump(mode="json"))
        )
        response = self._call(self._learning.CreateProject, request, ProjectNotFoundError)
        return project_from_proto(response.project)

    def get_learning_project(self, project_id: str) -> LearningProject:
        """Raises ProjectNotFoundError."""
        request = active_learning_pb2.GetProjectRequest(project_id=project_id)
        response = self._call(self._learning.GetProject, request, ProjectNotFoundError)
        return project_from_proto(response.project)

    def list_learning_projects(self) -> list[LearningProject]:
        response = self._call(
            self._learning.ListProjects, active_learning_pb2.ListProjectsRequest()
        )
        return [project_from_proto(p) for p in response.projects]

    def score_pool(self, project_id: str) -> str:
        """Score the pool again with the current model (new images arrived); the job's id."""
        request = active_learning_pb2.ScorePoolRequest(project_id=project_id)
        return str(self._call(self._learning.ScorePool, request, ProjectNotFoundError).job_id)

    def select_samples(
        self,
        project_id: str,
        count: int,
        strategy: str = "",
        *,
        class_balance: bool = False,
        seed: int = 0,
    ) -> LabellingBatch:
        """A new batch of `count` candidates from the newest pool scoring ("" strategy: the
        project's default). Raises JobStateError while no pool scoring has finished."""
        request = active_learning_pb2.SelectSamplesRequest(
            project_id=project_id,
            count=count,
            strategy=strategy,
            class_balance=class_balance,
            seed=seed,
        )
        response = self._call(self._learning.SelectSamples, request, ProjectNotFoundError)
        return batch_from_proto(response.batch)

    def get_batch(self, batch_id: str) -> LabellingBatch:
        request = active_learning_pb2.GetBatchRequest(batch_id=batch_id)
        response = self._call(self._learning.GetBatch, request, ProjectNotFoundError)
        return batch_from_proto(response.batch)

    def list_batches(self, project_id: str) -> list[LabellingBatch]:
        """The project's batches, without their candidates."""
        request = active_learning_pb2.ListBatchesRequest(project_id=project_id)
        response = self._call(self._learning.ListBatches, request, ProjectNotFoundError)
        return [batch_from_proto(b) for b in response.batches]

    def record_feedback(
        self,
        batch_id: str,
        sample_id: str,
        label: str,
        *,
        overwrite: bool = False,
        add_class: bool = False,
    ) -> tuple[Candidate, bool]:
        """Record `label` for a candidate; returns it and whether anything changed (the same
        label twice is a no-op). Raises ProjectNotFoundError (unknown batch or sample),
        InvalidSpecError (a class the model does not know, without add_class) or JobStateError
        (already labelled differently, without overwrite)."""
        request = active_learning_pb2.RecordFeedbackRequest(
            batch_id=batch_id,
            sample_id=sample_id,
            label=label,
            overwrite=overwrite,
            add_class=add_class,
        )
        response = self._call(self._learning.RecordFeedback, request, ProjectNotFoundError)
        return candidate_from_proto(response.candidate), response.changed

    def sample_image(self, batch_id: str, sample_id: str, max_side: int = 0) -> bytes:
        """A PNG thumbnail (longest side `max_side`, default 160) of one candidate of a
        labelling batch, read by the coordinator from the project's pool. Raises
        ProjectNotFoundError; MatrecError when the image is outside the pool or unreadable."""
        request = dashboard_pb2.GetSampleImageRequest(
            batch_id=batch_id, sample_id=sample_id, max_side=max_side
        )
        response = self._call(self._dashboard.GetSampleImage, request, ProjectNotFoundError)
        return bytes(response.png)

    def check_triggers(self, project_id: str) -> list[RetrainingTrigger]:
        """Evaluate the project's triggers now; the ones that fired."""
        request = active_learning_pb2.CheckTriggersRequest(project_id=project_id)
        response = self._call(self._learning.CheckTriggers, request, ProjectNotFoundError)
        return [trigger_from_proto(t) for t in response.fired]

    def list_triggers(self, project_id: str) -> list[RetrainingTrigger]:
        request = active_learning_pb2.ListTriggersRequest(project_id=project_id)
        response = self._call(self._learning.ListTriggers, request, ProjectNotFoundError)
        return [trigger_from_proto(t) for t in response.triggers]

    def retrain(self, project_id: str, trigger_id: str = "") -> tuple[str, int]:
        """Submit a retraining job from the latest model with every label so far; returns
        (job id, model version). Raises JobStateError while one is running."""
        request = active_learning_pb2.RetrainRequest(project_id=project_id, trigger_id=trigger_id)
        response = self._call(self._learning.Retrain, request, ProjectNotFoundError)
        return response.job_id, response.version


def _rate_limit_wait(exc: grpc.RpcError) -> float | None:
    """Seconds the coordinator asked a rate-limited caller to wait; None for other errors."""
    call: grpc.Call = exc  # type: ignore[assignment]
    if call.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for key, value in call.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            try:
                return min(MAX_RATE_LIMIT_WAIT, max(0.001, int(value) / 1000))
            except ValueError:
                break
    return None


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(dict(value))
    return message


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _wait_until_final(
    what: str,
    watch: Callable[[float | None], Iterator[Any]],
    fetch: Callable[[], T],
    finished: Callable[[T], bool],
    timeout: float | None,
    reconnect: bool,
) -> T:
    """Follow `watch` to its end, then `fetch`; repeat (with backoff while the coordinator is
    unreachable, if `reconnect`) until the fetched thing is `finished` or `timeout` runs out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = RECONNECT_INITIAL_SECONDS
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"{what} did not finish within {timeout:g} s")
        try:
            for _ in watch(remaining):
                pass
            current = fetch()
            if finished(current):
                return current
        except CoordinatorUnavailableError:
            if not reconnect:
                raise
        pause = delay if remaining is None else min(delay, max(remaining, 0.0))
        time.sleep(pause)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)
