"""TLS on the gRPC port, with mutual TLS for agents and clients: certificates from
`matrec-ctl certs init`, a real coordinator, agent and client over them; plaintext and
certificate-less clients refused; an agent certificate binds the agent's name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from matrec.common.tls import init_cluster_certificates
from matrec.coordinator.settings import parse_settings
from matrec.sdk import Client, CoordinatorUnavailableError
from matrec.sdk.local_cluster import LocalCluster
from matrec.v1 import agents_pb2, agents_pb2_grpc, jobs_pb2, jobs_pb2_grpc


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict]]:
    root = tmp_path_factory.mktemp("tls")
    certs = init_cluster_certificates(
        root / "certs", ["localhost"], agents=["agent-0", "agent-1"], clients=["admin"]
    )
    server, agent, admin = certs["coordinator"], certs["agents/agent-0"], certs["clients/admin"]
    coordinator_args = [
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(server.ca),
    ]  # fmt: skip
    agent_args = [
        "--tls-ca", str(agent.ca), "--tls-cert", str(agent.cert), "--tls-key", str(agent.key)
    ]  # fmt: skip
    patch = pytest.MonkeyPatch()
    patch.setenv("MATREC_TLS_CA", str(admin.ca))
    patch.setenv("MATREC_TLS_CERT", str(admin.cert))
    patch.setenv("MATREC_TLS_KEY", str(admin.key))
    try:
        with LocalCluster(
            root / "cluster", agents=1, coordinator_args=coordinator_args, agent_args=agent_args
        ) as cluster:
            yield cluster, certs
    finally:
        patch.undo()


def test_a_job_runs_over_mutual_tls(secured: tuple[LocalCluster, dict]) -> None:
    cluster, _ = secured
    with cluster.client() as client:
        spec = {"kind": "diagnostic", "config": {"duration_seconds": 0.2}}
        job = client.wait(client.submit_job(spec).id, 60)
        agents = client.list_agents()
    assert job.state == "succeeded", job.error
    assert [(a.name, a.state) for a in agents] == [("agent-0", "connected")]
    # Without tokens, the client certificate's subject says who submitted it.
    assert job.owner == "cert:admin"


def test_plaintext_and_certificateless_clients_are_refused(
    secured: tuple[LocalCluster, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, certs = secured
    monkeypatch.delenv("MATREC_TLS_CERT")
    monkeypatch.delenv("MATREC_TLS_KEY")
    with grpc.insecure_channel(cluster.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            jobs_pb2_grpc.JobServiceStub(channel).ListJobs(jobs_pb2.ListJobsRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    # TLS, trusting the CA, but no client certificate: the handshake fails.
    with (
        Client(cluster.address, tls_ca=certs["ca"].cert, timeout=5) as client,
        pytest.raises(CoordinatorUnavailableError),
    ):
        client.list_jobs()


def test_an_agent_certificate_binds_the_agent_name(secured: tuple[LocalCluster, dict]) -> None:
    from matrec.common.tls import channel_credentials

    cluster, certs = secured
    agent = certs["agents/agent-0"]
    credentials = channel_credentials(agent.ca, agent.cert, agent.key)
    with grpc.secure_channel(cluster.address, credentials) as channel:
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterAgent(agents_pb2.RegisterAgentRequest(name="impostor"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "agent-0" in raised.value.details()  # type: ignore[attr-defined]

    # agent-1 registers with its own certificate; agent-0's cannot open agent-1's stream.
    other = certs["agents/agent-1"]
    other_credentials = channel_credentials(other.ca, other.cert, other.key)
    with grpc.secure_channel(cluster.address, other_credentials) as channel:
        registered = agents_pb2_grpc.AgentServiceStub(channel).RegisterAgent(
            agents_pb2.RegisterAgentRequest(name="agent-1", hostname="h"), timeout=5
        )
    hello = agents_pb2.AgentMessage(hello=agents_pb2.Hello(agent_id=registered.agent_id))
    with grpc.secure_channel(cluster.address, credentials) as channel:
        stream = agents_pb2_grpc.AgentServiceStub(channel).Connect(iter([hello]), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            next(stream, None)  # an open stream, or one ended without an error, is a failure
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "agent-0" in raised.value.details()  # type: ignore[attr-defined]


def test_plaintext_is_refused_off_loopback_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert parse_settings(["--host", "0.0.0.0", "--insecure"]).insecure
    assert not parse_settings(["--host", "127.0.0.1"]).tls


@pytest.fixture(scope="module")
def plaintext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("plain") / "cluster", agents=0) as cluster:
        yield cluster


def _refusal(address: str, **tls: Path) -> str:
    with (
        Client(address, timeout=5, **tls) as client,
        pytest.raises(CoordinatorUnavailableError) as raised,
    ):
        client.list_jobs()
    return str(raised.value)


def test_a_tls_mismatch_says_what_is_wrong_and_which_option_fixes_it(
    secured: tuple[LocalCluster, dict],
    plaintext: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, certs = secured
    for variable in ("MATREC_TLS_CA", "MATREC_TLS_CERT", "MATREC_TLS_KEY"):
        monkeypatch.delenv(variable)
    admin = certs["clients/admin"]
    stranger = init_cluster_certificates(tmp_path / "other", ["localhost"], [], ["x"])["ca"]

    plain_to_tls = _refusal(cluster.address)
    assert "it talks TLS, this client plaintext" in plain_to_tls and "--tls-ca" in plain_to_tls
    no_certificate = _refusal(cluster.address, tls_ca=admin.ca)
    assert "requires a client certificate" in no_certificate and "--tls-cert" in no_certificate
    wrong_ca = _refusal(cluster.address, tls_ca=stranger.cert)
    assert "not signed by the CA this client trusts" in wrong_ca and "--tls-ca" in wrong_ca
    tls_to_plain = _refusal(plaintext.address, tls_ca=admin.ca)
    assert "this client talks TLS, the coordinator answers in plaintext" in tls_to_plain
    assert "leave --tls-ca" in tls_to_plain
    for message in (plain_to_tls, no_certificate, wrong_ca, tls_to_plain):
        assert "matrec-ctl server" not in message, message

    # matrec-ctl prints the same, as one error line.
    ctl = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()"]
    result = subprocess.run(
        [*ctl, "-c", cluster.address, "jobs"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MATREC_TLS_")},
    )
    assert result.returncode != 0
    assert "it talks TLS, this client plaintext" in result.stderr, result.stderr


def test_an_agent_without_tls_at_a_tls_coordinator_logs_what_to_set(
    secured: tuple[LocalCluster, dict], tmp_path: Path
) -> None:
    cluster, _ = secured
    log = tmp_path / "agent.log"
    command = ["--coordinator", cluster.address, "--name", "agent-0", "--data-dir", str(tmp_path)]
    with log.open("wb") as output:
        agent = subprocess.Popen(
            [sys.executable, "-m", "matrec.agent.main", *command],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("MATREC_")},
        )
    try:
        deadline = time.monotonic() + 60
        while "it talks TLS, this client plaintext" not in log.read_text():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        agent.terminate()
        agent.wait(30)
    assert "give --tls-ca / MATREC_TLS_CA the coordinator's CA" in log.read_text()
