"""Fixtures shared by the whole suite: a real PostgreSQL server and a small real dataset, each
made once per session."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from support.postgres import PostgresServer, start_postgres


@pytest.fixture(autouse=True)
def test_temp_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Point TMPDIR (and so every tempfile default, in this process and the agents it starts)
    at a folder of the test's own, removed when it ends: the SDK's default work directories
    hold trained models and would otherwise fill /tmp over a whole run. Not inside tmp_path,
    which tests expect to find as they left it."""
    directory = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


#: Folders of session-scoped fixtures start with this; they outlive every module.
SESSION_PREFIX = "session-"


@pytest.fixture(autouse=True, scope="module")
def module_temp_dirs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Remove the folders a test module made (its module fixtures' clusters and models) once
    it is done, unless one of its tests failed: a passing test's tmp_path is removed at once,
    but module fixtures' folders would otherwise stay until the whole run ends."""
    root = tmp_path_factory.getbasetemp()
    before = set(root.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        return
    for entry in set(root.iterdir()) - before:
        if entry.is_dir() and not entry.name.startswith(SESSION_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)


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


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDatasetInfo:
    """6 classes x (24 train + 8 val) real texture patches of 32 px."""
    root = tmp_path_factory.mktemp(f"{SESSION_PREFIX}data") / "demo"
    return make_demo_dataset(root, seed=0, patch_size=32, train_per_class=24, val_per_class=8)
