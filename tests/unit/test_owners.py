"""Owners on stored records: an existing database gains owner `unknown` on its old rows when
migrated (SQLite and PostgreSQL); new jobs, studies' trial jobs and projects' jobs carry their
owner; jobs filter by owner; tokens keep their permissions and who created and revoked them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from matrec.common.studies import parse_study_spec
from matrec.coordinator import schema
from matrec.coordinator.auth import TokenStore
from matrec.coordinator.database import MIGRATIONS_DIR, create_engine_for
from matrec.coordinator.hpo.study_store import StudyStore
from matrec.coordinator.store import Store


def _upgrade(engine: sa.Engine, revision: str) -> None:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_migrating_a_database_with_jobs_gives_old_rows_the_owner_unknown(
    database_url: str,
) -> None:
    engine = create_engine_for(database_url)
    _upgrade(engine, "0004")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO training_jobs (id, name, kind, spec, state, max_attempts, "
                "cancel_requested, error, created_at) VALUES ('job-old', 'old', 'finetune', "
                "'{}', 'succeeded', 1, false, '', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO tokens (id, name, role, token_sha256, created_at) "
                "VALUES ('tok-old', 'ci', 'operator', 'abc', :now)"
            ),
            {"now": now},
        )
    engine.dispose()
    store = Store.open(database_url)  # migrates to the newest revision
    try:
        old = store.get_job("job-old")
        assert old is not None
        assert (old.owner, old.owner_token_id, old.name, old.state) == (
            "unknown",
            None,
            "old",
            "succeeded",
        )
        token = TokenStore(store.engine).get("tok-old")
        assert token is not None
        assert (token.created_by, token.permissions, token.name) == ("unknown", (), "ci")
    finally:
        store.close()


def test_jobs_carry_and_filter_by_owner(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    try:
        made = {}
        for owner, token in (("alice", "tok-a"), ("bob", "tok-b"), ("alice", "tok-a")):
            job = store.create_job(
                name="j",
                kind="finetune",
                spec={"config": {}},
                resources={"cpus": 1.0, "gpus": 0},
                max_attempts=1,
                artifact_root=tmp_path,
                owner=owner,
                owner_token_id=token,
            )
            made[job.id] = owner
        alice = store.list_jobs(owner="alice")
        assert {j.id for j in alice} == {i for i, o in made.items() if o == "alice"}
        assert {j.owner_token_id for j in alice} == {"tok-a"}
        assert [j.owner for j in store.list_jobs(owner="bob")] == ["bob"]
        assert store.list_jobs(owner="carol") == []
        assert len(store.list_jobs()) == 3
        bobs = next(i for i, o in made.items() if o == "bob")
        store.request_cancel(bobs, "not needed", cancelled_by="alice")
        cancelled = store.get_job(bobs)
        assert cancelled is not None and cancelled.cancelled_by == "alice"
    finally:
        store.close()


def test_a_studys_trial_jobs_belong_to_the_study_owner(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    try:
        studies = StudyStore(store.engine)
        spec = parse_study_spec(
            {
                "objective": "val/accuracy",
                "search_space": {"learning_rate": {"type": "float", "min": 0.001, "max": 0.1}},
                "trial": {"kind": "finetune", "config": {"dataset_path": "/d"}},
            }
        )
        study = studies.create_study(spec, "alice", "tok-a")
        assert (study.owner, study.owner_token_id) == ("alice", "tok-a")
        trial_spec = {
            "name": "t",
            "kind": "finetune",
            "config": {},
            "resources": {"cpus": 1.0, "gpus": 0},
            "max_attempts": 1,
        }
        studies.add_trial(
            study.id, 0, {"learning_rate": 0.01}, None, trial_spec, tmp_path, owner=study.owner
        )
        (trial,) = studies.get_study(study.id).trials  # type: ignore[union-attr]
        assert trial.job_id is not None
        job = store.get_job(trial.job_id)
        assert job is not None and job.owner == "alice"
        with store.engine.connect() as conn:
            owners = conn.execute(sa.select(schema.studies.c.owner)).scalars().all()
        assert owners == ["alice"]
    finally:
        store.close()


def test_tokens_keep_permissions_and_who_made_and_revoked_them(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        tokens = TokenStore(store.engine)
        record, secret = tokens.create(
            "runner", "operator", permissions=["scripts"], created_by="root-admin"
        )
        assert (record.permissions, record.created_by) == (("scripts",), "root-admin")
        identity = tokens.identify(secret)
        assert identity is not None and identity.permissions == frozenset({"scripts"})
        with pytest.raises(ValueError, match="unknown permission shell"):
            tokens.create("x", "operator", permissions=["shell"])
        revoked = tokens.revoke(record.id, "other-admin")
        assert revoked is not None and revoked.revoked_by == "other-admin"
    finally:
        store.close()
