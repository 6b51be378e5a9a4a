"""The audit log and per-token limits on SQLite and PostgreSQL: refusals are throttled per
caller and reason, entries filter by time and caller, retention deletes old entries, the ids a
call names or makes are extracted without its secrets, and limits bound a token's usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from matrec.coordinator.audit import ALLOWED, REFUSED, AuditLog, target_ids
from matrec.coordinator.auth import TokenStore
from matrec.coordinator.housekeeping import Housekeeper, MetricRetention
from matrec.coordinator.limits import LimitStore, TokenLimits, TokenUsage
from matrec.coordinator.store import Store, TaskRecord
from matrec.v1 import auth_pb2, jobs_pb2


def entry(log: AuditLog, who: str, outcome: str, reason: str = "") -> bool:
    return log.record(
        who=who,
        token_id=None,
        method="/matrec.v1.JobService/CancelJob",
        targets={"job_id": "job-1"},
        peer="ipv4:127.0.0.1:1",
        outcome=outcome,
        reason=reason,
    )


def test_refusals_are_logged_once_per_caller_and_reason_per_minute(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        log = AuditLog(store.engine)
        assert entry(log, "bob", REFUSED, "PERMISSION_DENIED: not yours")
        assert not entry(log, "bob", REFUSED, "PERMISSION_DENIED: not yours")
        assert entry(log, "bob", REFUSED, "NOT_FOUND: no such job")
        assert entry(log, "carol", REFUSED, "PERMISSION_DENIED: not yours")
        assert entry(log, "bob", ALLOWED) and entry(log, "bob", ALLOWED)
        stored = log.entries()
        assert [(e.who, e.outcome) for e in stored] == [
            ("bob", REFUSED),
            ("bob", REFUSED),
            ("carol", REFUSED),
            ("bob", ALLOWED),
            ("bob", ALLOWED),
        ]
        assert stored[0].targets == {"job_id": "job-1"} and stored[0].peer == "ipv4:127.0.0.1:1"
        assert [e.who for e in log.entries(who="carol")] == ["carol"]
        assert log.entries(since=datetime.now(UTC) + timedelta(minutes=1)) == []
        assert [e.id for e in log.entries(limit=2)] == [e.id for e in stored[-2:]]
    finally:
        store.close()


def test_audit_retention_deletes_old_entries(database_url: str) -> None:
    store = Store.open(database_url)
    try:
        log = AuditLog(store.engine)
        entry(log, "alice", ALLOWED)
        keeper = Housekeeper(store, MetricRetention(audit_retention_days=1), log)
        assert keeper.run_once() == 0  # younger than a day
        assert log.delete_before(datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert log.entries() == []
    finally:
        store.close()


def test_target_ids_name_what_a_call_touched_but_never_its_secret() -> None:
    request = auth_pb2.CreateTokenRequest(name="ci", role="operator")
    response = auth_pb2.CreateTokenResponse(
        token=auth_pb2.Token(id="tok-1", name="ci"), secret="mtk_secret"
    )
    assert target_ids(request, response) == {"token_id": "tok-1"}
    cancel = jobs_pb2.CancelJobRequest(job_id="job-9", reason="why")
    assert target_ids(cancel, None) == {"job_id": "job-9"}
    submitted = jobs_pb2.SubmitJobResponse(job=jobs_pb2.Job(id="job-3"))
    assert target_ids(jobs_pb2.SubmitJobRequest(), submitted) == {"job_id": "job-3"}


def task(job_id: str, gpus: int) -> TaskRecord:
    return TaskRecord(
        f"{job_id}-t0", job_id, 0, "running", 1, 0, 1, {"gpus": gpus}, "a", None, "", "", "",
        None,
    )  # type: ignore[arg-type]  # fmt: skip


def test_usage_refuses_past_the_running_task_and_gpu_limits() -> None:
    usage = TokenUsage.of([task("j1", 2), task("j2", 1)], {"j1": "tok-a", "j2": "tok-b"})
    one_task = TokenLimits(max_running_tasks=1)
    assert "limit of 1 running tasks" in (usage.refusal("tok-a", one_task, [task("j3", 0)]) or "")
    assert usage.refusal("tok-c", one_task, [task("j3", 0)]) is None
    four_gpus = TokenLimits(max_gpus=4)
    assert usage.refusal("tok-a", four_gpus, [task("j3", 2)]) is None
    assert "limit of 4 GPUs" in (usage.refusal("tok-a", four_gpus, [task("j3", 3)]) or "")
    usage.add("tok-a", [task("j3", 2)])
    assert usage.refusal("tok-a", four_gpus, [task("j4", 1)]) is not None
    with pytest.raises(ValueError, match="max_gpus must be >= 0"):
        TokenLimits(max_gpus=-1)


def test_limits_are_stored_per_token(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    try:
        tokens = TokenStore(store.engine)
        record, _ = tokens.create("alice", "operator")
        limits = LimitStore(store.engine)
        assert limits.get(record.id) == TokenLimits()
        limits.set(record.id, TokenLimits(max_running_tasks=2), "root")
        limits.set(record.id, TokenLimits(max_gpus=4, max_queued_jobs=3), "root")
        assert limits.all() == {record.id: TokenLimits(0, 4, 3)}
        store.create_job(
            name="j", kind="finetune", spec={"config": {}}, resources={}, max_attempts=1,
            artifact_root=tmp_path, owner="alice", owner_token_id=record.id,
        )  # fmt: skip
        assert store.count_queued_jobs_of_token(record.id) == 1
        assert store.count_queued_jobs_of_token("tok-other") == 0
    finally:
        store.close()


def test_the_flags_of_this_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    from matrec.agent.settings import parse_settings as agent_settings
    from matrec.coordinator.settings import parse_settings as coordinator_settings

    assert coordinator_settings(["--audit-retention-days", "7"]).audit_retention_days == 7.0
    with pytest.raises(SystemExit):
        coordinator_settings(["--audit-retention-days", "-1"])
    monkeypatch.delenv("MATREC_ALLOW_SCRIPTS", raising=False)
    assert not agent_settings([]).allow_scripts  # a shared host opts in
    assert agent_settings(["--allow-scripts"]).allow_scripts
    monkeypatch.setenv("MATREC_ALLOW_SCRIPTS", "1")
    assert agent_settings([]).allow_scripts
