"""Database engines, dialect specifics and schema migrations (SQLite or PostgreSQL/Supabase)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The newest migration. A database already there starts without importing Alembic (which costs
#: a fifth of a second); a test checks this against the migration scripts.
HEAD_REVISION = "0006_art15"


def normalize_url(url: str) -> tuple[str, dict[str, Any]]:
    """Pick the psycopg 3 driver for Postgres URLs and turn matrec's own query options into
    connect arguments. Returns (url, connect_args).

    `?prepared_statements=false` is for poolers in transaction mode (Supabase's Supavisor on
    port 6543, PgBouncer): they cannot keep a prepared statement between transactions.
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        query = dict(parsed.query)
        prepared = str(query.pop("prepared_statements", "true")).lower()
        if prepared in ("false", "0", "off", "no"):
            connect_args["prepare_threshold"] = None
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=False), connect_args


def create_engine_for(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    url, connect_args = normalize_url(url)
    if not url.startswith("postgresql"):
        raise ValueError(
            f"unsupported database URL {make_url(url).render_as_string()!r}; "
            "use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def schema_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (creates it on first start)."""
    if schema_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def insert_ignore_for(dialect: str) -> Callable[[sa.Table], Any]:
    """An INSERT that skips rows clashing with a unique constraint, for this dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return lambda table: pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return lambda table: sqlite_insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported database dialect {dialect!r}; use SQLite or PostgreSQL")
