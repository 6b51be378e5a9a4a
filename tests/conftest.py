"""Fixtures shared by the whole suite: a real PostgreSQL server, started once per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support.postgres import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database on each backend the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'matrec.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"matrec_{uuid.uuid4().hex[:10]}")
