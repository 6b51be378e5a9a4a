"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temp dir, loopback only.

Uses the server binaries of the OS package (`make setup` installs them where missing). As root,
the server runs as the `postgres` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from matrec.sdk.ctl.doctor import missing_message, postgres_bin_dir

from support.network import free_port

# Taken at import, before a test points TMPDIR at its own tmp_path: the server outlives tests.
SYSTEM_TEMP_DIR = tempfile.gettempdir()


def find_bindir() -> Path:
    """The folder of initdb and pg_ctl: MATREC_PG_BIN, the OS package's, or on PATH."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(missing_message("postgres-server"))
    return bin_dir


@dataclass
class PostgresServer:
    root: Path
    port: int
    bindir: Path
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-w",
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )  # fmt: skip
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
                ):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its SQLAlchemy URL."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bindir = find_bindir()
    run_as = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's tmp dir: that one is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="matrec-pg-", dir=SYSTEM_TEMP_DIR))
    if run_as:
        shutil.chown(root, user=run_as)
    server = PostgresServer(root, free_port(), bindir, run_as)
    server._run(
        "initdb", "-D", str(server.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
    )
    server.start()
    return server
