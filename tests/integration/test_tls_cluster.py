"""TLS on the gRPC port, with mutual TLS for agents and clients: certificates from
`matrec-ctl certs init`, a real coordinator, agent and client over them; plaintext and
certificate-less clients refused; an agent certificate binds the agent's name."""

from __future__ import annotations

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
        root / "certs", ["localhost"], agents=["agent-0"], clients=["admin"]
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


def test_plaintext_is_refused_off_loopback_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert parse_settings(["--host", "0.0.0.0", "--insecure"]).insecure
    assert not parse_settings(["--host", "127.0.0.1"]).tls
