"""Tokens and roles on a real coordinator started with --auth: every RPC of every matrec service
refuses a call without a token (UNAUTHENTICATED) and a token of too small a role
(PERMISSION_DENIED); revoked tokens stop working on the next call; an agent token acts only as
its own agent. The expected role of each RPC is written out here, independently of the
coordinator's table: the two are compared RPC by RPC (every RPC of every service in the
descriptors must be in both), and the refusals are checked against this file's table, so a
wrong role in the code fails here instead of being read back from the code under test."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from matrec.coordinator.auth import METHOD_ROLES
from matrec.sdk import Client, MatrecError
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import agents_pb2, agents_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from support.cluster_jobs import wait_until
from support.rpcs import METHODS, answer, method_path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict]]:
    root = tmp_path_factory.mktemp("auth")
    admin_file = root / "admin.token"
    args = ["--auth", "--admin-token-file", str(admin_file)]
    with LocalCluster(root / "cluster", agents=0, coordinator_args=args) as cluster:
        admin = admin_file.read_text().strip()
        tokens = {"admin": admin}
        with Client(cluster.address, token=admin) as client:
            for role in ("viewer", "operator", "agent"):
                name = "gpu-a" if role == "agent" else f"{role}-user"
                tokens[role] = client.create_token(name, role)[1]
        yield cluster, tokens


#: The role each RPC requires, written independently of `coordinator/auth.py`: reads need a
#: viewer, anything that changes state needs at least an operator, the token service is
#: admin-only, and the agent protocol is for agent tokens only.
REQUIRED_ROLE: dict[str, str] = {
    "/matrec.v1.JobService/SubmitJob": "operator",
    "/matrec.v1.JobService/GetJob": "viewer",
    "/matrec.v1.JobService/ListJobs": "viewer",
    "/matrec.v1.JobService/CancelJob": "operator",
    "/matrec.v1.JobService/WatchJob": "viewer",
    "/matrec.v1.JobService/ListJobMetrics": "viewer",
    "/matrec.v1.JobService/ListAgents": "viewer",
    "/matrec.v1.JobService/WatchCluster": "viewer",
    "/matrec.v1.JobService/ListArtifacts": "viewer",
    "/matrec.v1.JobService/DownloadArtifact": "viewer",
    "/matrec.v1.StudyService/CreateStudy": "operator",
    "/matrec.v1.StudyService/GetStudy": "viewer",
    "/matrec.v1.StudyService/ListStudies": "viewer",
    "/matrec.v1.StudyService/CancelStudy": "operator",
    "/matrec.v1.StudyService/WatchStudy": "viewer",
    "/matrec.v1.ActiveLearningService/CreateProject": "operator",
    "/matrec.v1.ActiveLearningService/GetProject": "viewer",
    "/matrec.v1.ActiveLearningService/ListProjects": "viewer",
    "/matrec.v1.ActiveLearningService/ScorePool": "operator",  # starts a scoring job
    "/matrec.v1.ActiveLearningService/SelectSamples": "operator",  # records a batch
    "/matrec.v1.ActiveLearningService/GetBatch": "viewer",
    "/matrec.v1.ActiveLearningService/ListBatches": "viewer",
    "/matrec.v1.ActiveLearningService/RecordFeedback": "operator",
    "/matrec.v1.ActiveLearningService/CheckTriggers": "operator",  # may start a retrain
    "/matrec.v1.ActiveLearningService/ListTriggers": "viewer",
    "/matrec.v1.ActiveLearningService/Retrain": "operator",
    "/matrec.v1.AgentService/RegisterAgent": "agent",
    "/matrec.v1.AgentService/Connect": "agent",
    "/matrec.v1.ArtifactService/GetUploadOffset": "agent",
    "/matrec.v1.ArtifactService/UploadArtifact": "agent",
    "/matrec.v1.TokenService/CreateToken": "admin",
    "/matrec.v1.TokenService/ListTokens": "admin",
    "/matrec.v1.TokenService/RevokeToken": "admin",
    "/matrec.v1.TokenService/SetTokenLimits": "admin",
    "/matrec.v1.TokenService/ListAuditEntries": "admin",
    "/matrec.v1.DashboardService/QueryJobs": "viewer",
    "/matrec.v1.DashboardService/WhoAmI": "viewer",
    "/matrec.v1.DashboardService/GetStudySummary": "viewer",
    "/matrec.v1.DashboardService/GetSampleImage": "viewer",
}
#: Which token roles satisfy each required role (written out, not taken from the code).
SATISFIED_BY: dict[str, set[str]] = {
    "viewer": {"viewer", "operator", "admin"},
    "operator": {"operator", "admin"},
    "admin": {"admin"},
    "agent": {"agent"},
}
#: Roles let through beyond SATISFIED_BY: an agent fetches the checkpoint a task resumes from
#: (the coordinator then refuses jobs the agent runs no task of).
ALSO_LET_THROUGH: dict[str, set[str]] = {"/matrec.v1.JobService/DownloadArtifact": {"agent"}}


def call(address: str, method: MethodDescriptor, token: str | None) -> grpc.StatusCode:
    """Call `method` with an empty request; the status code it ends with."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        request = message_factory.GetMessageClass(method.input_type)()
        return answer(channel, method, request, metadata)


def test_every_rpc_has_the_expected_access_rule() -> None:
    rpcs = {method_path(m) for m in METHODS}
    problems = []
    for rpc in sorted(rpcs | set(REQUIRED_ROLE) | set(METHOD_ROLES)):
        expected, coded = REQUIRED_ROLE.get(rpc), METHOD_ROLES.get(rpc)
        if rpc not in rpcs:
            problems.append(f"{rpc}: a rule for an RPC that no service has")
        elif expected is None or coded is None or expected != coded:
            problems.append(
                f"{rpc}: this test expects {expected or '(no entry)'}, "
                f"coordinator/auth.py METHOD_ROLES has {coded or '(no entry)'}"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_every_rpc_refuses_missing_and_weak_tokens(
    secured: tuple[LocalCluster, dict], method: MethodDescriptor
) -> None:
    cluster, tokens = secured
    rpc = method_path(method)
    assert rpc in REQUIRED_ROLE, f"{rpc} has no expected role in this test's REQUIRED_ROLE"
    required = REQUIRED_ROLE[rpc]
    assert call(cluster.address, method, None) == grpc.StatusCode.UNAUTHENTICATED
    assert call(cluster.address, method, "mtk_not-a-token") == grpc.StatusCode.UNAUTHENTICATED
    for role, token in tokens.items():
        code = call(cluster.address, method, token)
        if role in SATISFIED_BY[required] | ALSO_LET_THROUGH.get(rpc, set()):
            assert code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), f"{rpc} refused a {role} token ({code}); it needs {required}"
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (
                f"{rpc} let a {role} token through ({code}); it needs {required}"
            )


def test_health_stays_open_for_probes(secured: tuple[LocalCluster, dict]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cluster, _ = secured
    with grpc.insecure_channel(cluster.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_revoked_token_stops_working_on_the_next_call(secured: tuple[LocalCluster, dict]) -> None:
    cluster, tokens = secured
    with Client(cluster.address, token=tokens["admin"]) as admin:
        token, secret = admin.create_token("short-lived", "operator")
        with Client(cluster.address, token=secret) as user:
            assert isinstance(user.list_jobs(), list)  # works while the token is live
            admin.revoke_token(token.id)
            with pytest.raises(MatrecError) as raised:
                user.list_jobs()
        assert raised.value.code == "UNAUTHENTICATED"
        listed = {t.id: t for t in admin.list_tokens()}
    assert listed[token.id].revoked_at is not None
    assert all("mtk_" not in t.name for t in listed.values())


def test_a_token_past_its_ttl_is_refused(secured: tuple[LocalCluster, dict]) -> None:
    cluster, tokens = secured
    with Client(cluster.address, token=tokens["admin"]) as admin:
        token, secret = admin.create_token("two-seconds", "viewer", ttl_seconds=2)
    assert token.expires_at is not None
    with Client(cluster.address, token=secret) as user:
        assert isinstance(user.list_jobs(), list)  # works while the token is live
        time.sleep(max(0.0, token.expires_at.timestamp() - time.time()) + 0.5)
        with pytest.raises(MatrecError) as raised:
            user.list_jobs()
    assert raised.value.code == "UNAUTHENTICATED"
    assert "expired" in str(raised.value)


def test_admin_token_file_is_private(secured: tuple[LocalCluster, dict]) -> None:
    cluster, _ = secured
    mode = stat.S_IMODE((cluster.workdir.parent / "admin.token").stat().st_mode)
    assert mode == 0o600


def test_an_agent_token_acts_only_as_its_agent(
    secured: tuple[LocalCluster, dict], tmp_path: Path
) -> None:
    cluster, tokens = secured
    metadata = [("authorization", f"Bearer {tokens['agent']}")]
    with grpc.insecure_channel(cluster.address) as channel:
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterAgent(
                agents_pb2.RegisterAgentRequest(name="gpu-b", hostname="h"), metadata=metadata
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        # A second agent, registered with its own token.
        with Client(cluster.address, token=tokens["admin"]) as admin:
            other_token = admin.create_token("gpu-b", "agent")[1]
        other = stub.RegisterAgent(
            agents_pb2.RegisterAgentRequest(name="gpu-b", hostname="h"),
            metadata=[("authorization", f"Bearer {other_token}")],
        )
        # gpu-a's token cannot open gpu-b's stream, nor take over its id.
        hello = agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id=other.agent_id))
        stream = stub.Connect(iter([hello]), metadata=metadata)
        with pytest.raises(grpc.RpcError) as raised:
            next(stream)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterAgent(
                agents_pb2.RegisterAgentRequest(
                    agent_id=other.agent_id, name="gpu-a", hostname="h"
                ),
                metadata=metadata,
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]

    # The real agent, with its token, joins and runs a job submitted by an operator.
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "matrec.agent.main", "--coordinator", cluster.address,
            "--name", "gpu-a", "--data-dir", str(tmp_path / "agent"), "--metrics-port", "0",
        ],
        env=os.environ | {"MATREC_AGENT_TOKEN": tokens["agent"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with Client(cluster.address, token=tokens["operator"]) as operator:
            wait_until(
                lambda: any(
                    a.name == "gpu-a" and a.state == "connected" for a in operator.list_agents()
                ),
                60,
                "the agent to connect",
            )
            spec = {"kind": "diagnostic", "config": {"duration_seconds": 0.2}}
            job = operator.wait(operator.submit_job(spec).id, 60)
        assert job.state == "succeeded", job.error
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def test_an_agent_token_downloads_only_from_jobs_it_runs(
    secured: tuple[LocalCluster, dict],
) -> None:
    cluster, tokens = secured
    with Client(cluster.address, token=tokens["operator"]) as operator:
        job = operator.submit_job({"kind": "diagnostic", "config": {"duration_seconds": 0.2}})
    try:
        with grpc.insecure_channel(cluster.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                next(
                    stub.DownloadArtifact(
                        jobs_pb2.DownloadArtifactRequest(job_id=job.id),
                        metadata=[("authorization", f"Bearer {tokens['agent']}")],
                    )
                )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert f"runs no task of job {job.id}" in raised.value.details()  # type: ignore[attr-defined]
    finally:
        with Client(cluster.address, token=tokens["operator"]) as operator:
            operator.cancel_job(job.id)


CTL = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]


def test_cli_tokens_and_refusals(secured: tuple[LocalCluster, dict]) -> None:
    cluster, tokens = secured
    base = [*CTL, "-c", cluster.address]
    env = {k: v for k, v in os.environ.items() if k != "MATREC_TOKEN"}
    created = subprocess.run(
        [*base, "--token", tokens["admin"], "tokens", "create", "dashboard", "--role", "viewer"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("mtk_") and "\n" not in secret  # only the secret on stdout
    listed = subprocess.run(
        [*base, "tokens", "list"], capture_output=True, text=True,
        env=env | {"MATREC_TOKEN": tokens["admin"]},
    )  # fmt: skip
    assert listed.returncode == 0 and "dashboard" in listed.stdout
    assert secret not in listed.stdout and tokens["admin"] not in listed.stdout
    viewer_jobs = subprocess.run(
        [*base, "--token", secret, "jobs"], capture_output=True, text=True, env=env
    )
    assert viewer_jobs.returncode == 0, viewer_jobs.stderr
    for command, words in (
        (["jobs"], "no token"),
        (["--token", secret, "cancel", "job-x"], "needs operator"),
    ):
        refused = subprocess.run([*base, *command], capture_output=True, text=True, env=env)
        assert refused.returncode != 0
        output = (refused.stdout + refused.stderr).strip()
        assert words in output and len(output.splitlines()) == 1, output


def test_secrets_never_reach_the_logs_or_the_token_list(
    secured: tuple[LocalCluster, dict],
) -> None:
    cluster, tokens = secured
    with Client(cluster.address, token=tokens["admin"]) as admin:
        listed = admin.list_tokens()
    logs = "\n".join(path.read_text(errors="replace") for path in cluster.logs_dir.glob("*.log"))
    for secret in tokens.values():
        assert secret not in logs
        assert all(secret not in repr(token) for token in listed)
    assert "mtk_" not in logs
