"""deploy/supabase: generated from the Alembic migrations, applied to a real PostgreSQL server set
up like Supabase's (roles anon/authenticated, the supabase_realtime publication)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import secrets
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from matrec.coordinator.store import Store
from postgrest import APIError, SyncPostgrestClient
from support.postgres import PostgresServer
from support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "supabase"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_supabase", ROOT / "scripts" / "gen_supabase.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_supabase_project_matches_the_alembic_migrations(tmp_path: Path) -> None:
    written = load_generator().generate(tmp_path)
    assert written, "nothing generated"
    for path in written:
        committed = COMMITTED / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing; run `make supabase`"
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale; run `make supabase`"
        )
    generated = {p.relative_to(tmp_path) for p in written}
    extra = {p.relative_to(COMMITTED) for p in COMMITTED.rglob("*.sql")} - generated
    assert not extra, f"migrations with no Alembic revision: {extra}"


@pytest.fixture
def supabase_like_db(postgres_server: PostgresServer) -> tuple[str, dict[str, object]]:
    """A fresh database with Supabase's roles and publication, the migrations applied."""
    name = f"supa_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(name)
    params: dict[str, object] = {
        "host": "127.0.0.1", "port": postgres_server.port, "user": "postgres", "dbname": name
    }  # fmt: skip
    with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
        for role in ("anon", "authenticated"):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {role} NOLOGIN")
        # PostgREST logs in as `authenticator` and switches to the role its JWT names.
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'authenticator'").fetchone():
            conn.execute("CREATE ROLE authenticator LOGIN NOINHERIT")
            conn.execute("GRANT anon, authenticated TO authenticator")
        conn.execute("CREATE PUBLICATION supabase_realtime")
        for migration in sorted((COMMITTED / "migrations").glob("*.sql")):
            conn.execute(migration.read_text().encode())
    url = (
        f"postgresql://postgres@127.0.0.1:{postgres_server.port}/{name}"
        "?options=-csearch_path%3Dmatrec"
    )
    return url, params


def test_migrations_apply_and_lock_down_the_private_schema(
    supabase_like_db: tuple[str, dict[str, object]], tmp_path: Path
) -> None:
    url, params = supabase_like_db
    # The coordinator runs on it (search_path=matrec) without migrating again.
    store = Store.open(url)
    job = store.create_job(
        name="dash", kind="finetune", spec={"config": {"dataset_path": "/secret/path"}},
        resources={"cpus": 1}, max_attempts=1, artifact_root=tmp_path, owner="alice",
        owner_token_id="tok-alice",
    )  # fmt: skip
    store.close()

    with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
        unprotected = conn.execute(
            "SELECT relname FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace "
            "WHERE nspname = 'matrec' AND relkind = 'r' AND NOT relrowsecurity "
            "AND relname <> 'alembic_version'"
        ).fetchall()
        assert unprotected == []
        published = conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
        ).fetchall()
        assert published == [("training_progress",)]

        conn.execute("SET ROLE anon")
        rows = conn.execute("SELECT id, state, owner FROM matrec_api.jobs").fetchall()
        assert rows == [(job.id, "queued", "alice")]
        columns = [c.name for c in conn.execute("SELECT * FROM matrec_api.jobs").description or []]
        # Names only: no spec, no token id (let alone a token's hash).
        assert "spec" not in columns and "owner_token_id" not in columns
        conn.execute("SELECT * FROM matrec.training_progress").fetchall()
        for statement in (
            "SELECT * FROM matrec.training_jobs",
            "SELECT * FROM matrec.agents",
            "SELECT * FROM matrec.tokens",
            "SELECT * FROM matrec.training_parameters",
            "INSERT INTO matrec_api.jobs (id) VALUES ('x')",
            "DELETE FROM matrec_api.progress",
            "DELETE FROM matrec.training_progress",
        ):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)


def jwt_hs256(claims: dict[str, object], secret: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
def data_api(
    supabase_like_db: tuple[str, dict[str, object]], tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """PostgREST over the migrated database, as Supabase's Data API runs it."""
    url, params = supabase_like_db
    binary = require_tool("postgrest")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = secrets.token_hex(32)
    config = tmp_path / "postgrest.conf"
    config.write_text(
        f'db-uri = "postgres://authenticator@127.0.0.1:{params["port"]}/{params["dbname"]}"\n'
        'db-schemas = "matrec_api"\n'
        'db-anon-role = "anon"\n'
        f'jwt-secret = "{secret}"\n'
        'server-host = "127.0.0.1"\n'
        f"server-port = {port}\n"
    )
    log = (tmp_path / "postgrest.log").open("wb")
    process = subprocess.Popen([str(binary), str(config)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=1)
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "postgrest.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "postgrest.log").read_text()
                time.sleep(0.2)
        yield base, jwt_hs256({"role": "anon"}, secret), url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_data_api_reads_progress_and_refuses_writes_and_private_tables(
    data_api: tuple[str, str, str], tmp_path: Path
) -> None:
    base, anon_jwt, url = data_api
    store = Store.open(url)
    job = store.create_job(
        name="dash", kind="finetune", spec={"config": {"dataset_path": "/secret/path"}},
        resources={"cpus": 1}, max_attempts=1, artifact_root=tmp_path,
    )  # fmt: skip
    store.add_metrics(
        job.id,
        [{"task_id": job.tasks[0].id, "attempt": 1, "step": s, "key": "train/loss",
          "value": 1.0 / s, "time": datetime.now(UTC)} for s in (1, 2, 3)],
    )  # fmt: skip
    store.close()
    headers = {"apikey": anon_jwt, "Authorization": f"Bearer {anon_jwt}"}
    with SyncPostgrestClient(base, schema="matrec_api", headers=headers) as client:
        progress = client.from_("progress").select("step,value").eq("job_id", job.id).execute()
        assert sorted(row["step"] for row in progress.data) == [1, 2, 3]
        jobs = client.from_("jobs").select("*").execute().data
        assert [j["id"] for j in jobs] == [job.id]
        assert "spec" not in jobs[0]
        with pytest.raises(APIError):
            client.from_("jobs").insert({"id": "job-evil", "name": "x"}).execute()
        with pytest.raises(APIError):
            client.from_("progress").delete().eq("job_id", job.id).execute()
        # The coordinator's own tables are not reachable through the Data API.
        for private_table in ("training_jobs", "tokens"):
            with pytest.raises(APIError):
                client.from_(private_table).select("*").execute()
    private = SyncPostgrestClient(base, schema="matrec", headers=headers)
    with private:
        for statement in ("training_jobs", "tokens"):
            with pytest.raises(APIError):
                private.from_(statement).select("*").execute()
