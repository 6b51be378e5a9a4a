"""TLS: the cluster's CA and certificates, gRPC credentials over a real TLS port, and
`matrec-ctl certs init`."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from grpc_health.v1 import health_pb2, health_pb2_grpc
from matrec.common.tls import (
    ROLE_AGENT,
    ROLE_CLIENT,
    CertificatePaths,
    TlsError,
    channel_credentials,
    create_ca,
    init_cluster_certificates,
    issue_certificate,
    load_certificates,
    load_private_key,
    peer_common_name,
    peer_role,
    server_credentials,
)
from matrec.sdk.ctl.certs import certs_app
from typer.testing import CliRunner

COORDINATOR_HOSTS = ["coord.example.org", "10.1.2.3"]
RPC_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificatePaths]:
    root = tmp_path_factory.mktemp("certs")
    return init_cluster_certificates(root, COORDINATOR_HOSTS, ["gpu-1"], ["admin"])


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA directory with a client certificate in ``client/``."""
    ca_dir = tmp_path_factory.mktemp("other") / "ca"
    create_ca(ca_dir, name="someone else's CA")
    issue_certificate(
        ca_dir, ca_dir.parent / "client", "gpu-1", hosts=[], server=False, client=True
    )
    issue_certificate(
        ca_dir,
        ca_dir.parent / "server",
        "localhost",
        hosts=["localhost"],
        server=True,
        client=False,
    )
    return ca_dir


def _cert(path: Path) -> x509.Certificate:
    return load_certificates(path)[0]


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- certificates -----------------------------------------------------------------------------


def test_the_ca_is_a_self_signed_ca(cluster: dict[str, CertificatePaths]) -> None:
    ca = _cert(cluster["ca"].cert)
    assert cluster["ca"].ca == cluster["ca"].cert
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_the_coordinator_certificate_verifies_for_its_hosts_and_localhost(
    cluster: dict[str, CertificatePaths],
) -> None:
    ca = _cert(cluster["ca"].cert)
    leaf = _cert(cluster["coordinator"].cert)
    assert _cert(cluster["coordinator"].ca) == ca
    verifier = PolicyBuilder().store(Store([ca]))
    for name in ["coord.example.org", "localhost"]:
        chain = verifier.build_server_verifier(x509.DNSName(name)).verify(leaf, [])
        assert chain[-1] == ca
    for address in ["10.1.2.3", "127.0.0.1"]:
        verifier.build_server_verifier(x509.IPAddress(ip_address(address))).verify(leaf, [])

    dns, ips = _sans(leaf)
    assert {"coord.example.org", "localhost"} <= set(dns)
    assert {"10.1.2.3", "127.0.0.1"} <= set(ips)
    assert _usages(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_agent_and_client_certificates_are_client_certificates_signed_by_the_ca(
    cluster: dict[str, CertificatePaths],
) -> None:
    ca = _cert(cluster["ca"].cert)
    for key, name, role in [
        ("agents/gpu-1", "gpu-1", ROLE_AGENT),
        ("clients/admin", "admin", ROLE_CLIENT),
    ]:
        leaf = _cert(cluster[key].cert)
        leaf.verify_directly_issued_by(ca)
        assert leaf.issuer == ca.subject
        assert _usages(leaf) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        unit = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        assert unit == role
        assert leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_keys_are_owner_only_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        written = init_cluster_certificates(tmp_path, ["coord"], ["gpu-1"], ["admin"])
    finally:
        os.umask(old)
    assert len(written) == 4
    for paths in written.values():
        assert _mode(paths.key) == 0o600, paths.key
        load_private_key(paths.key)
    assert _mode(written["coordinator"].cert) == 0o644
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_existing_ca_is_not_overwritten_unless_forced(tmp_path: Path) -> None:
    first = init_cluster_certificates(tmp_path, [], [], ["admin"])
    before = first["ca"].cert.read_bytes()
    with pytest.raises(TlsError, match=str(first["ca"].cert)):
        init_cluster_certificates(tmp_path, [], ["gpu-1"], ["admin"])
    assert first["ca"].cert.read_bytes() == before
    assert not (tmp_path / "agents").exists()

    second = init_cluster_certificates(tmp_path, [], ["gpu-1"], ["admin"], force=True)
    assert second["ca"].cert.read_bytes() != before
    _cert(second["agents/gpu-1"].cert).verify_directly_issued_by(_cert(second["ca"].cert))


@pytest.mark.parametrize(
    ("hosts", "agents", "message"),
    [
        (["coord:50051"], [], "without a port"),
        (["bad host"], [], "not a DNS name"),
        ([], ["../escape"], "agent name"),
        ([], ["gpu-1", "gpu-1"], "twice"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, hosts: list[str], agents: list[str], message: str
) -> None:
    with pytest.raises(TlsError, match=message):
        init_cluster_certificates(tmp_path / "certs", hosts, agents, [])
    assert not (tmp_path / "certs").exists()


def test_unreadable_or_wrong_files_raise_tls_error_naming_them(
    cluster: dict[str, CertificatePaths], tmp_path: Path
) -> None:
    coordinator, agent = cluster["coordinator"], cluster["agents/gpu-1"]
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")

    cases: list[tuple[Callable[[], object], Path, str]] = [
        (lambda: server_credentials(missing, coordinator.key), missing, "does not exist"),
        (
            lambda: server_credentials(coordinator.key, coordinator.key),
            coordinator.key,
            "not a PEM certificate",
        ),
        (
            lambda: server_credentials(coordinator.cert, coordinator.cert),
            coordinator.cert,
            "not a PEM private key",
        ),
        (lambda: server_credentials(garbage, coordinator.key), garbage, "not a valid PEM"),
        (lambda: server_credentials(coordinator.cert, agent.key), agent.key, "does not match"),
        (
            lambda: server_credentials(coordinator.cert, coordinator.key, missing),
            missing,
            "does not exist",
        ),
        (lambda: channel_credentials(tmp_path), tmp_path, "directory"),
        (lambda: channel_credentials(agent.ca, agent.cert), agent.cert, "give both"),
        (
            lambda: channel_credentials(agent.ca, agent.cert, coordinator.key),
            coordinator.key,
            "does not match",
        ),
    ]
    for call, path, message in cases:
        with pytest.raises(TlsError, match=message) as caught:
            call()
        assert isinstance(caught.value, ValueError)
        if "give both" not in message:
            assert str(path) in str(caught.value)


def test_peer_common_name_reads_the_auth_context() -> None:
    assert peer_common_name({}) is None
    assert peer_common_name({"x509_common_name": [b"gpu-1"]}) == "gpu-1"
    assert peer_role({}) is None


# -- a real gRPC server over TLS --------------------------------------------------------------


class RecordingHealth(health_pb2_grpc.HealthServicer):
    """The standard health service (always SERVING), noting each caller's certificate name and
    role."""

    def __init__(self) -> None:
        self.peers: list[tuple[str | None, str | None]] = []

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        auth = context.auth_context()
        self.peers.append((peer_common_name(auth), peer_role(auth)))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _check(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    """The health status a client gets, or raises grpc.aio.AioRpcError."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(target, credentials)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
        return reply.status


def _with_server(
    credentials: grpc.ServerCredentials,
    scenario: Callable[[int, RecordingHealth], Awaitable[None]],
) -> None:
    async def run() -> None:
        server = grpc.aio.server()
        servicer = RecordingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        try:
            await scenario(port, servicer)
        finally:
            await server.stop(None)

    asyncio.run(run())


async def _fails(target: str, credentials: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(target, credentials)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_server_serves_clients_that_trust_its_ca_only(
    cluster: dict[str, CertificatePaths], other_ca: Path
) -> None:
    coordinator, admin = cluster["coordinator"], cluster["clients/admin"]

    async def scenario(port: int, servicer: RecordingHealth) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await _check(f"localhost:{port}", channel_credentials(admin.ca)) == serving
        assert await _check(f"127.0.0.1:{port}", channel_credentials(admin.ca)) == serving
        assert servicer.peers == [(None, None), (None, None)]
        await _fails(f"127.0.0.1:{port}", None)
        await _fails(f"localhost:{port}", channel_credentials(other_ca / "ca.pem"))

    _with_server(server_credentials(coordinator.cert, coordinator.key), scenario)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    cluster: dict[str, CertificatePaths], other_ca: Path
) -> None:
    coordinator, agent = cluster["coordinator"], cluster["agents/gpu-1"]
    stranger = other_ca.parent / "client"

    async def scenario(port: int, servicer: RecordingHealth) -> None:
        target = f"localhost:{port}"
        await _fails(target, channel_credentials(agent.ca))
        await _fails(
            target,
            channel_credentials(agent.ca, stranger / "cert.pem", stranger / "key.pem"),
        )
        await _fails(target, None)
        assert servicer.peers == []

        with_cert = channel_credentials(agent.ca, agent.cert, agent.key)
        assert await _check(target, with_cert) == health_pb2.HealthCheckResponse.SERVING
        assert servicer.peers == [("gpu-1", ROLE_AGENT)]

    _with_server(
        server_credentials(coordinator.cert, coordinator.key, client_ca=coordinator.ca), scenario
    )


# -- matrec-ctl certs init --------------------------------------------------------------------


def test_certs_init_writes_the_files_and_prints_the_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "certs"
    args = ["init", str(out), "--coordinator-host", "coord.lan", "--agent", "gpu-1"]
    args += ["--agent", "gpu-2"]
    result = runner.invoke(certs_app, args)
    assert result.exit_code == 0, result.output
    for folder in ["coordinator", "agents/gpu-1", "agents/gpu-2", "clients/admin"]:
        for name in ["ca.pem", "cert.pem", "key.pem"]:
            assert (out / folder / name).is_file(), folder + "/" + name
    assert _mode(out / "ca" / "ca.key") == 0o600
    assert "--tls-client-ca" in result.output
    assert "--tls-cert" in result.output
    dns, _ = _sans(_cert(out / "coordinator" / "cert.pem"))
    assert dns[0] == "coord.lan"

    again = runner.invoke(certs_app, ["init", str(out)])
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert "Traceback" not in again.output

    forced = runner.invoke(certs_app, ["init", str(out), "--force", "--client", "ci"])
    assert forced.exit_code == 0, forced.output
    assert (out / "clients" / "ci" / "cert.pem").is_file()
