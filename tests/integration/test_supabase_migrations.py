"""deploy/supabase: generated from the Alembic migrations, applied to a real PostgreSQL server set
up like Supabase's (roles anon/authenticated, the supabase_realtime publication)."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from matrec.coordinator.store import Store
from support.postgres import PostgresServer

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
        resources={"cpus": 1}, max_attempts=1, artifact_root=tmp_path,
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
        rows = conn.execute("SELECT id, state FROM matrec_api.jobs").fetchall()
        assert rows == [(job.id, "queued")]
        columns = [c.name for c in conn.execute("SELECT * FROM matrec_api.jobs").description or []]
        assert "spec" not in columns
        conn.execute("SELECT * FROM matrec.training_progress").fetchall()
        for statement in (
            "SELECT * FROM matrec.training_jobs",
            "SELECT * FROM matrec.agents",
            "INSERT INTO matrec_api.jobs (id) VALUES ('x')",
            "DELETE FROM matrec_api.progress",
            "DELETE FROM matrec.training_progress",
        ):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
