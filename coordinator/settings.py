"""Coordinator settings: command-line flags, each with a MATREC_* environment variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from matrec.common.hosts import is_loopback
from matrec.common.lifetime import add_parent_flags
from matrec.common.paths import absolute_path, optional_absolute_path


@dataclass(frozen=True)
class CoordinatorSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = field(default_factory=lambda: Path("~/.matrec/coordinator").expanduser())
    database_url: str = ""
    artifact_root: Path | None = None
    artifact_store: str = "shared"
    metrics_port: int = 9464
    lease_ttl: float = 30.0
    heartbeat_interval: float = 5.0
    check_paths: bool = True
    metric_max_points: int = 0
    metric_retention_days: float = 0.0
    audit_retention_days: float = 0.0
    ready_file: Path | None = None
    log_level: str = "INFO"
    auth: bool = False
    admin_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    trigger_check_interval: float = 60.0
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    max_queued_jobs: int = 10_000
    max_concurrent_rpcs: int = 10_000
    parent_fd: int | None = None
    parent_pid: int | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'matrec.db'}"

    @property
    def effective_artifact_root(self) -> Path:
        return self.artifact_root or self.data_dir / "artifacts"


#: --artifact-store values: a folder shared by all hosts, or uploads to the coordinator.
ARTIFACT_STORES = ("shared", "coordinator")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MATREC_{name}", default)


def _number_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: type[int] | type[float],
    default: float,
    meaning: str,
) -> None:
    """A numeric flag whose environment variable is MATREC_ and the flag's name in capitals."""
    variable = flag.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(
        flag,
        type=kind,
        default=kind(_env(variable, str(default))),
        help=f"{meaning} [MATREC_{variable}] (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    d = CoordinatorSettings()
    parser = argparse.ArgumentParser(
        prog="matrec-coordinator",
        description="Run the matrec coordinator: the gRPC server that stores jobs, schedules "
        "their tasks onto agents and streams their progress. Every flag can also be set with "
        "the environment variable shown.",
    )
    parser.add_argument(
        "--host",
        default=_env("HOST", d.host),
        help="address to bind; 0.0.0.0 to accept agents from other hosts [MATREC_HOST] "
        "(default: %(default)s)",
    )
    _number_flag(
        parser,
        "--port",
        int,
        d.port,
        "gRPC port; 0 picks a free one",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR", str(d.data_dir))).expanduser(),
        help="where the SQLite database and artifacts live [MATREC_DATA_DIR] "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("MATREC_DATABASE_URL", os.environ.get("SUPABASE_DB_URL", "")),
        help="SQLAlchemy URL; empty means SQLite in the data dir [MATREC_DATABASE_URL]",
    )
    parser.add_argument(
        "--artifact-root",
        type=Path,
        default=Path(_env("ARTIFACT_ROOT", "")) if _env("ARTIFACT_ROOT", "") else None,
        help="where tasks write checkpoints and models; must be shared storage visible to every "
        "agent for resume on another host [MATREC_ARTIFACT_ROOT] (default: DATA_DIR/artifacts)",
    )
    parser.add_argument(
        "--artifact-store",
        choices=ARTIFACT_STORES,
        default=_env("ARTIFACT_STORE", d.artifact_store),
        help="how checkpoints and models cross hosts: 'shared' (the artifact root is one folder "
        "every agent sees at the same path: a single host, or NFS) or 'coordinator' (hosts share "
        "nothing: agents write locally and upload to the artifact root through the coordinator) "
        "[MATREC_ARTIFACT_STORE] (default: %(default)s)",
    )
    _number_flag(
        parser,
        "--metrics-port",
        int,
        d.metrics_port,
        "Prometheus /metrics port; 0 disables it",
    )
    _number_flag(
        parser,
        "--lease-ttl",
        float,
        d.lease_ttl,
        "seconds a task stays with an agent that stopped heartbeating before it is requeued",
    )
    _number_flag(
        parser,
        "--heartbeat-interval",
        float,
        d.heartbeat_interval,
        "seconds between agent heartbeats",
    )
    _number_flag(
        parser,
        "--metric-max-points",
        int,
        0,
        "downsample any metric series (task, attempt, key) longer than this, keeping every "
        "k-th point and the last; 0 keeps every point",
    )
    _number_flag(
        parser,
        "--rate-limit",
        float,
        0.0,
        "calls per second allowed to each caller (API token, else client address); over "
        "it a call gets RESOURCE_EXHAUSTED and the SDK waits and retries; 0 = no limit",
    )
    _number_flag(
        parser,
        "--rate-burst",
        float,
        0.0,
        "calls a caller may make at once before --rate-limit applies; 0 = twice the rate, "
        "at least 10",
    )
    _number_flag(
        parser,
        "--max-queued-jobs",
        int,
        d.max_queued_jobs,
        "refuse SubmitJob with RESOURCE_EXHAUSTED while this many jobs are queued; 0 = no bound",
    )
    _number_flag(
        parser,
        "--max-concurrent-rpcs",
        int,
        d.max_concurrent_rpcs,
        "calls in flight at once, agent streams and watches included; more get "
        "RESOURCE_EXHAUSTED; 0 = no bound",
    )
    _number_flag(
        parser,
        "--trigger-check-interval",
        float,
        60.0,
        "seconds between two evaluations of the active-learning projects' retraining "
        "triggers by the monitor",
    )
    _number_flag(
        parser,
        "--metric-retention-days",
        float,
        0.0,
        "delete the metrics and log lines of jobs finished more than this many days ago; "
        "0 keeps them forever",
    )
    _number_flag(
        parser,
        "--audit-retention-days",
        float,
        0.0,
        "delete audit log entries older than this many days; 0 keeps them forever",
    )
    parser.add_argument(
        "--no-check-paths",
        dest="check_paths",
        action="store_false",
        help="do not check at submission that dataset paths exist on the coordinator host",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write HOST:PORT to this file once serving (for scripts and tests)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        default=_env("AUTH", "") in ("1", "true", "yes"),
        help="require a token on every call (roles viewer, operator, admin, agent; see "
        "`matrec-ctl tokens`) [MATREC_AUTH]",
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        default=Path(_env("ADMIN_TOKEN_FILE", "")) if _env("ADMIN_TOKEN_FILE", "") else None,
        help="with --auth and no admin token yet: create one and write it to this file (mode "
        "0600), to bootstrap `matrec-ctl tokens create` [MATREC_ADMIN_TOKEN_FILE]",
    )
    for flag, variable, meaning in (
        ("--tls-cert", "SERVER_TLS_CERT", "serve TLS with this certificate (PEM)"),
        ("--tls-key", "SERVER_TLS_KEY", "the certificate's private key (PEM)"),
        (
            "--tls-client-ca",
            "SERVER_TLS_CLIENT_CA",
            "require client certificates signed by this CA (mutual TLS; agents are then bound "
            "to their certificate's name)",
        ),
    ):
        parser.add_argument(
            flag,
            type=Path,
            default=Path(_env(variable, "")) if _env(variable, "") else None,
            help=f"{meaning}; `matrec-ctl certs init` makes them [MATREC_{variable}]",
        )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=_env("INSECURE", "") in ("1", "true", "yes"),
        help="allow plaintext on an address other than loopback (a trusted network only) "
        "[MATREC_INSECURE]",
    )
    add_parent_flags(parser)
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level))
    return parser


def parse_settings(argv: list[str] | None = None) -> CoordinatorSettings:
    """The settings from `argv` and the environment; every path made absolute here, because
    artifact folders travel to agents, whose tasks run in other working folders."""
    args = build_parser().parse_args(argv)
    if args.metric_max_points < 0 or args.metric_retention_days < 0:
        build_parser().error("--metric-max-points and --metric-retention-days must be >= 0")
    if args.audit_retention_days < 0:
        build_parser().error("--audit-retention-days must be >= 0")
    if args.rate_limit < 0 or args.rate_burst < 0:
        build_parser().error("--rate-limit and --rate-burst must be >= 0")
    if args.max_queued_jobs < 0 or args.max_concurrent_rpcs < 0:
        build_parser().error("--max-queued-jobs and --max-concurrent-rpcs must be >= 0")
    if args.artifact_store not in ARTIFACT_STORES:  # argparse checks choices on the flag only
        build_parser().error(
            f"--artifact-store / MATREC_ARTIFACT_STORE {args.artifact_store!r}: give one of "
            + ", ".join(ARTIFACT_STORES)
        )
    if args.trigger_check_interval <= 0:
        build_parser().error("--trigger-check-interval must be > 0 seconds")
    if args.lease_ttl <= args.heartbeat_interval:
        build_parser().error("--lease-ttl must be longer than --heartbeat-interval")
    if (args.tls_cert is None) != (args.tls_key is None):
        build_parser().error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        build_parser().error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.tls_cert is None and not args.insecure and not is_loopback(args.host):
        build_parser().error(
            f"--host {args.host} without TLS would send tokens and data in the clear; give "
            "--tls-cert/--tls-key (`matrec-ctl certs init`), or --insecure on a trusted network"
        )
    return CoordinatorSettings(
        host=args.host,
        port=args.port,
        data_dir=absolute_path(args.data_dir),
        database_url=_absolute_sqlite_url(args.database_url),
        artifact_root=optional_absolute_path(args.artifact_root),
        artifact_store=args.artifact_store,
        metrics_port=args.metrics_port,
        lease_ttl=args.lease_ttl,
        heartbeat_interval=args.heartbeat_interval,
        check_paths=args.check_paths,
        metric_max_points=args.metric_max_points,
        metric_retention_days=args.metric_retention_days,
        audit_retention_days=args.audit_retention_days,
        ready_file=optional_absolute_path(args.ready_file),
        log_level=args.log_level,
        auth=args.auth,
        admin_token_file=optional_absolute_path(args.admin_token_file),
        tls_cert=optional_absolute_path(args.tls_cert),
        tls_key=optional_absolute_path(args.tls_key),
        tls_client_ca=optional_absolute_path(args.tls_client_ca),
        insecure=args.insecure,
        trigger_check_interval=args.trigger_check_interval,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst or max(10.0, 2 * args.rate_limit),
        max_queued_jobs=args.max_queued_jobs,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        parent_fd=args.parent_fd,
        parent_pid=args.parent_pid,
    )


def _absolute_sqlite_url(url: str) -> str:
    """A SQLite URL naming a relative file (``sqlite:///matrec.db``) made absolute; other URLs
    as given."""
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite"):
        return url
    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return url
    return parsed.set(database=str(absolute_path(parsed.database))).render_as_string(
        hide_password=False
    )
