"""Agent settings: command-line flags, each with a MATREC_* environment variable."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from matrec.agent.path_policy import parse_roots
from matrec.agent.script_user import ScriptUser, ScriptUserError
from matrec.common.lifetime import add_parent_flags
from matrec.common.paths import absolute_path, optional_absolute_path


@dataclass(frozen=True)
class AgentSettings:
    coordinator: str
    name: str
    data_dir: Path
    cpus: float | None
    gpus: int | None
    metrics_port: int
    metrics_host: str
    python: str
    stop_grace: float
    log_level: str
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allowed_paths: tuple[Path, ...] = ()
    script_user: str = ""
    parent_fd: int | None = None
    parent_pid: int | None = None
    allow_scripts: bool = False

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call to the coordinator carries: the agent's token, if it has one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MATREC_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matrec-agent",
        description="Run a matrec agent: it offers this host's CPUs and GPUs to a coordinator, "
        "runs the tasks it is given in worker processes and streams their metrics back. "
        "Every flag can also be set with the environment variable shown.",
    )
    parser.add_argument(
        "--coordinator",
        default=_env("COORDINATOR", "127.0.0.1:50051"),
        help="coordinator address HOST:PORT [MATREC_COORDINATOR] (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=_env("AGENT_TOKEN", "") or None,
        help="agent token for a coordinator that requires one (`matrec-ctl tokens create "
        "NAME --role agent`, NAME being this agent's --name) [MATREC_AGENT_TOKEN]",
    )
    for flag, variable, meaning in (
        ("--tls-ca", "TLS_CA", "talk TLS to the coordinator, trusting this CA (PEM)"),
        ("--tls-cert", "TLS_CERT", "this agent's certificate, for mutual TLS"),
        ("--tls-key", "TLS_KEY", "its private key"),
    ):
        parser.add_argument(
            flag,
            type=Path,
            default=Path(_env(variable, "")) if _env(variable, "") else None,
            help=f"{meaning} [MATREC_{variable}]",
        )
    parser.add_argument(
        "--name",
        default=_env("AGENT_NAME", socket.gethostname()),
        help="name shown in `matrec-ctl agents` [MATREC_AGENT_NAME] (default: the hostname)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("AGENT_DATA_DIR", "~/.matrec/agent")).expanduser(),
        help="keeps the agent id and task work dirs [MATREC_AGENT_DATA_DIR] (default: %(default)s)",
    )
    parser.add_argument(
        "--cpus",
        type=float,
        default=float(_env("AGENT_CPUS", "0")) or None,
        help="CPU cores to offer [MATREC_AGENT_CPUS] (default: all cores)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=int(_env("AGENT_GPUS", "-1")),
        help="GPUs to offer [MATREC_AGENT_GPUS] (default: every GPU NVML finds)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("AGENT_METRICS_PORT", "0")),
        help="Prometheus /metrics port for this host's resource use; 0 disables it "
        "[MATREC_AGENT_METRICS_PORT] (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-host",
        default=_env("AGENT_METRICS_HOST", "127.0.0.1"),
        help="address the /metrics endpoint binds (default: %(default)s)",
    )
    parser.add_argument(
        "--python",
        default=_env("AGENT_PYTHON", sys.executable),
        help="Python interpreter for worker processes (default: this one)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=float(_env("AGENT_STOP_GRACE", "60")),
        help="seconds a task gets to checkpoint on shutdown before it is killed "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--allowed-path",
        dest="allowed_paths",
        action="append",
        type=Path,
        default=None,
        metavar="ROOT",
        help="run only tasks whose datasets, models, pools and working folders lie under ROOT "
        "(give it once per root; include the shared artifact root for retraining and resumes) "
        f"[MATREC_ALLOWED_PATHS, separated by '{os.pathsep}'] (default: any path)",
    )
    parser.add_argument(
        "--script-user",
        default=_env("SCRIPT_USER", ""),
        metavar="NAME",
        help="run `script` tasks' programs as this account (its primary group only, in the "
        "task's own working folder); the agent must run as root [MATREC_SCRIPT_USER] "
        "(default: the agent's own user)",
    )
    add_parent_flags(parser)
    parser.add_argument(
        "--allow-scripts",
        action="store_true",
        default=_env("ALLOW_SCRIPTS", "") in ("1", "true", "yes"),
        help="run `script` tasks: arbitrary programs of whoever may submit them, as this agent's "
        "user (or --script-user); without it, script jobs never start here "
        "[MATREC_ALLOW_SCRIPTS]",
    )
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return parser


def parse_settings(argv: list[str] | None = None) -> AgentSettings:
    """The settings from `argv` and the environment; every path made absolute here, because the
    agent starts workers inside task folders and relative paths would point elsewhere there."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.script_user:
        try:
            ScriptUser.lookup(args.script_user)
        except ScriptUserError as exc:
            parser.error(str(exc))
    return AgentSettings(
        coordinator=args.coordinator,
        token=args.token,
        tls_ca=optional_absolute_path(args.tls_ca),
        tls_cert=optional_absolute_path(args.tls_cert),
        tls_key=optional_absolute_path(args.tls_key),
        name=args.name,
        data_dir=absolute_path(args.data_dir),
        cpus=args.cpus,
        gpus=None if args.gpus < 0 else args.gpus,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        python=_interpreter(args.python),
        stop_grace=args.stop_grace,
        log_level=args.log_level,
        allowed_paths=tuple(
            absolute_path(p) for p in (args.allowed_paths or parse_roots(_env("ALLOWED_PATHS", "")))
        ),
        script_user=args.script_user,
        parent_fd=args.parent_fd,
        parent_pid=args.parent_pid,
        allow_scripts=args.allow_scripts,
    )


def _interpreter(python: str) -> str:
    """A bare name (``python3``) is looked up on PATH when a worker starts; a path is made
    absolute, since workers start inside their task's folder."""
    return str(absolute_path(python)) if os.sep in python else python
