"""Assembles the coordinator: store, scheduler, gRPC services, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from matrec.common.tls import server_credentials
from matrec.coordinator.active_learning.monitor import TriggerMonitor
from matrec.coordinator.active_learning.projects import ProjectManager
from matrec.coordinator.active_learning.service import ActiveLearningService
from matrec.coordinator.active_learning.store import ActiveLearningStore
from matrec.coordinator.agent_service import AgentService
from matrec.coordinator.artifact_records import ArtifactObjects
from matrec.coordinator.artifact_service import ArtifactService
from matrec.coordinator.artifact_store import CoordinatorDiskStore
from matrec.coordinator.audit import AuditInterceptor, AuditLog
from matrec.coordinator.auth import AuthInterceptor, TokenStore
from matrec.coordinator.availability import DatabaseAvailability, DatabaseErrorInterceptor
from matrec.coordinator.dashboard_service import DashboardService
from matrec.coordinator.housekeeping import Housekeeper, MetricRetention
from matrec.coordinator.hpo.driver import StudyDriver
from matrec.coordinator.hpo.study_service import StudyService
from matrec.coordinator.hpo.study_store import StudyStore
from matrec.coordinator.job_service import JobService, SubmitPolicy
from matrec.coordinator.limits import LimitStore
from matrec.coordinator.notifier import JobNotifier
from matrec.coordinator.rate_limit import RateLimitInterceptor
from matrec.coordinator.scheduler import Scheduler
from matrec.coordinator.sessions import AgentSessions
from matrec.coordinator.settings import CoordinatorSettings
from matrec.coordinator.store import Store
from matrec.coordinator.task_files import ReceivedFiles
from matrec.coordinator.telemetry import CoordinatorTelemetry, LatencyInterceptor
from matrec.coordinator.token_service import TokenService
from matrec.v1 import (
    active_learning_pb2,
    active_learning_pb2_grpc,
    agents_pb2,
    agents_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    dashboard_pb2,
    dashboard_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    studies_pb2,
    studies_pb2_grpc,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    agents_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    studies_pb2.DESCRIPTOR.services_by_name["StudyService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
    active_learning_pb2.DESCRIPTOR.services_by_name["ActiveLearningService"].full_name,
    dashboard_pb2.DESCRIPTOR.services_by_name["DashboardService"].full_name,
    artifacts_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
)


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self._background: list[asyncio.Task[None]] = []
        self.sessions = AgentSessions()
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]

    async def start(self) -> int:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.effective_artifact_root.mkdir(parents=True, exist_ok=True)
        self.store = store = Store.open(s.effective_database_url)
        store.mark_all_agents_disconnected()
        renewed = store.extend_all_leases(s.lease_ttl)
        if renewed:
            log.info(
                "gave %d running tasks one lease period for their agents to reconnect", renewed
            )
        telemetry = CoordinatorTelemetry()
        notifier = JobNotifier()
        availability = DatabaseAvailability(self.health, SERVICE_NAMES, telemetry)
        limits = LimitStore(store.engine)
        audit = AuditLog(store.engine)
        share_nothing = s.artifact_store == "coordinator"
        objects = ArtifactObjects(store.engine)
        scheduler = Scheduler(
            store,
            self.sessions,
            notifier,
            telemetry,
            availability,
            lease_ttl=s.lease_ttl,
            limits=limits,
            share_nothing=share_nothing,
        )
        tokens = TokenStore(store.engine)
        if s.auth:
            _bootstrap_admin_token(tokens, s.admin_token_file)
        server = grpc.aio.server(
            interceptors=[
                LatencyInterceptor(telemetry),
                # Before auth: a flood of calls with bad tokens must not reach the token table.
                RateLimitInterceptor(s.rate_limit, s.rate_burst),
                # Outside auth: calls that authentication refuses are logged too.
                AuditInterceptor(audit, auth=s.auth),
                AuthInterceptor(tokens, enabled=s.auth),
                DatabaseErrorInterceptor(),
            ],
            options=GRPC_SERVER_OPTIONS,
            # Calls beyond this many in flight (streams included) get RESOURCE_EXHAUSTED.
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        auth_pb2_grpc.add_TokenServiceServicer_to_server(
            TokenService(tokens, limits, audit), server
        )
        jobs_pb2_grpc.add_JobServiceServicer_to_server(
            JobService(
                store,
                self.sessions,
                scheduler,
                notifier,
                telemetry,
                SubmitPolicy(s.effective_artifact_root, s.check_paths, s.max_queued_jobs),
                limits,
                objects=objects,
            ),
            server,
        )
        agents_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(
                store,
                self.sessions,
                scheduler,
                notifier,
                telemetry,
                availability,
                heartbeat_interval=s.heartbeat_interval,
                lease_ttl=s.lease_ttl,
                artifact_store=(
                    artifacts_pb2.ARTIFACT_STORE_KIND_COORDINATOR
                    if share_nothing
                    else artifacts_pb2.ARTIFACT_STORE_KIND_SHARED
                ),
                received=ReceivedFiles(s.effective_artifact_root),
            ),
            server,
        )
        artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(
            ArtifactService(store, CoordinatorDiskStore(s.effective_artifact_root), objects),
            server,
        )
        studies = StudyStore(store.engine)
        study_driver = StudyDriver(
            store, studies, self.sessions, scheduler, notifier, s.effective_artifact_root
        )
        studies_pb2_grpc.add_StudyServiceServicer_to_server(
            StudyService(studies, study_driver, notifier, check_paths=s.check_paths), server
        )
        learning_store = ActiveLearningStore(store.engine)
        al_manager = ProjectManager(store, learning_store, s.effective_artifact_root)
        active_learning_pb2_grpc.add_ActiveLearningServiceServicer_to_server(
            ActiveLearningService(al_manager, scheduler, check_paths=s.check_paths), server
        )
        trigger_monitor = TriggerMonitor(
            al_manager, scheduler, notifier, check_interval=s.trigger_check_interval
        )
        dashboard_pb2_grpc.add_DashboardServiceServicer_to_server(
            DashboardService(store.engine, studies, learning_store, auth_enabled=s.auth), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if s.tls:
            assert s.tls_cert is not None and s.tls_key is not None
            credentials = server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
            self.port = server.add_secure_port(f"{s.host}:{s.port}", credentials)
        else:
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise OSError(f"could not bind {s.host}:{s.port}; is another coordinator running?")
        await server.start()
        self.server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port:
            self.metrics_port = telemetry.serve(s.host, s.metrics_port)
        self._background = [
            asyncio.create_task(scheduler.run()),
            asyncio.create_task(study_driver.run()),
            asyncio.create_task(trigger_monitor.run()),
        ]
        retention = MetricRetention(
            s.metric_max_points,
            s.metric_retention_days,
            audit_retention_days=s.audit_retention_days,
        )
        if retention.enabled:
            self._background.append(asyncio.create_task(Housekeeper(store, retention, audit).run()))
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        self.sessions.close_all()
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.server.stop(grace)
        if self.store is not None:
            self.store.close()

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()


def _bootstrap_admin_token(tokens: TokenStore, path: Path | None) -> None:
    """With no live admin token, make one and write it (0600) where the operator asked."""
    if tokens.has_live_admin():
        return
    if path is None:
        log.warning(
            "authentication is on but no admin token exists; restart with --admin-token-file "
            "PATH to create one"
        )
        return
    record, secret = tokens.create("bootstrap-admin", "admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    log.info("admin token %s written to %s", record.id, path)
