"""TLS for the coordinator's gRPC port: a small private CA, certificates and gRPC credentials.

A cluster has one CA (``init_cluster_certificates`` makes it). The coordinator presents a
server certificate whose SubjectAltNames are the names and addresses clients dial; agents (and,
optionally, `matrec-ctl` users) present client certificates for mutual TLS, with the agent's
name as the certificate's common name so the coordinator can bind an agent to its certificate
(``peer_common_name``).

Layout written by ``init_cluster_certificates(DIR, ...)``::

    DIR/ca/ca.pem, ca.key                   the CA (keep ca.key off the cluster's machines)
    DIR/coordinator/ca.pem, cert.pem, key.pem
    DIR/agents/<name>/ca.pem, cert.pem, key.pem
    DIR/clients/<name>/ca.pem, cert.pem, key.pem

Every directory holds a copy of the CA certificate, so each machine needs only its own folder.
Keys are EC P-256, PKCS#8 PEM, unencrypted, and are created with mode 0600 (never readable by
others, not even for a moment: they are written to a new 0600 file that then replaces the
target). Only ``server_credentials`` and ``channel_credentials`` import grpc.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    import grpc

__all__ = [
    "AGENTS_DIR",
    "CA_DIR",
    "CA_FILE",
    "CERT_FILE",
    "CLIENTS_DIR",
    "COORDINATOR_DIR",
    "KEY_FILE",
    "LOCAL_HOSTS",
    "ROLE_AGENT",
    "ROLE_CLIENT",
    "ROLE_COORDINATOR",
    "CertificatePaths",
    "PrivateKey",
    "TlsError",
    "channel_credentials",
    "create_ca",
    "init_cluster_certificates",
    "issue_certificate",
    "load_certificates",
    "load_private_key",
    "peer_common_name",
    "peer_role",
    "server_credentials",
]

#: File names inside each certificate directory.
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

#: Sub-directories of a cluster's certificate directory.
CA_DIR = "ca"
COORDINATOR_DIR = "coordinator"
AGENTS_DIR = "agents"
CLIENTS_DIR = "clients"

#: Organizational units that say what a certificate of the cluster is for (see ``peer_role``).
ROLE_COORDINATOR = "coordinator"
ROLE_AGENT = "agent"
ROLE_CLIENT = "client"

#: The names every coordinator certificate is valid for, besides the ones asked for.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")

ORGANIZATION = "matrec"
DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 825

# Certificates start a few minutes in the past, so a peer whose clock is slightly behind
# does not reject a certificate made moments ago.
_CLOCK_SKEW = dt.timedelta(minutes=5)
# Agent and client names become directory names: one safe path component.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# X.509's upper bound for a common name.
_MAX_COMMON_NAME = 64
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# A DNS name, optionally a wildcard one ("*.example.com"), optionally with the root's dot.
_DNS_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")

#: The private keys TLS (and so gRPC) can use.
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_PRIVATE_KEY_TYPES = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)

# auth_context() keys that gRPC fills from the peer's verified certificate.
_AUTH_COMMON_NAME = "x509_common_name"
_AUTH_PEM_CERT = "x509_pem_cert"


class TlsError(ValueError):
    """A certificate or key is missing, unreadable, invalid or does not fit; the message names
    the file (or the bad input) in one line."""


@dataclass(frozen=True)
class CertificatePaths:
    """PEM files of one party: the CA certificate to trust, its own certificate and its key.

    For the CA itself (``create_ca``), ``cert`` is the CA certificate too and ``key`` is the
    CA's signing key.
    """

    ca: Path
    cert: Path
    key: Path


# -- loading and checking ---------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsError(f"{what} {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def load_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """The PEM certificates in `path`, first one first (a certificate followed by its chain, or
    a CA bundle). Raises TlsError naming the file when it is missing or holds no certificate."""
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        hint = " (it holds a private key)" if b"PRIVATE KEY-----" in data else ""
        raise TlsError(f"{what} {path} is not a PEM certificate{hint}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{what} {path} is not a valid PEM certificate: {exc}") from None


def load_private_key(path: Path) -> PrivateKey:
    """The unencrypted PEM private key in `path`; TlsError naming the file otherwise."""
    data = _read(path, "private key")
    if b"PRIVATE KEY-----" not in data:
        hint = " (it holds a certificate)" if b"-----BEGIN CERTIFICATE-----" in data else ""
        raise TlsError(f"private key {path} is not a PEM private key{hint}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(
            f"private key {path} is encrypted; matrec needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"private key {path} is not a valid PEM private key: {exc}") from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise TlsError(f"private key {path} is a {type(key).__name__}, which TLS cannot use")
    return key


def _public_der(key: PrivateKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_pair(cert_path: Path, key_path: Path) -> tuple[list[x509.Certificate], PrivateKey]:
    """The chain in `cert_path` and the key in `key_path`, checked to belong together and to be
    valid now."""
    chain = load_certificates(cert_path)
    key = load_private_key(key_path)
    if _public_der(chain[0]) != _public_der(key):
        raise TlsError(f"private key {key_path} does not match certificate {cert_path}")
    now = dt.datetime.now(dt.UTC)
    leaf = chain[0]
    if now > leaf.not_valid_after_utc:
        raise TlsError(
            f"certificate {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now < leaf.not_valid_before_utc:
        raise TlsError(
            f"certificate {cert_path} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this machine's clock)"
        )
    return chain, key


# -- writing ----------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a new file created with `mode`, then rename it over
    `path`: the content is never visible with wider permissions, nor half-written."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            if mode == 0o600:
                os.fchmod(fd, 0o600)  # exactly owner read/write, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


# -- input checks -----------------------------------------------------------------------------


def _check_common_name(name: str) -> str:
    if not name or not name.strip():
        raise TlsError("a certificate's common name cannot be empty")
    if len(name) > _MAX_COMMON_NAME:
        raise TlsError(f"common name {name!r} is longer than {_MAX_COMMON_NAME} characters")
    return name


def _check_days(days: int) -> int:
    if days < 1:
        raise TlsError(f"days must be at least 1, not {days}")
    return days


def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SubjectAltName entries for `hosts`: IP addresses (v4 or v6, brackets allowed) and DNS
    names, duplicates dropped, order kept."""
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in hosts:
        host = raw.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise TlsError("a host name cannot be empty")
        entry: x509.GeneralName
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if not _DNS_RE.fullmatch(host):
                if ":" in host:
                    raise TlsError(
                        f"host {raw!r} is not a DNS name or IP address (give hosts without a port)"
                    ) from None
                raise TlsError(f"host {raw!r} is not a DNS name or IP address") from None
            host = host.rstrip(".").lower()
            entry = x509.DNSName(host)
        else:
            host = str(address)
            entry = x509.IPAddress(address)
        if host not in seen:
            seen.add(host)
            entries.append(entry)
    return entries


def _check_dir_name(kind: str, name: str) -> str:
    if not _NAME_RE.fullmatch(name) or len(name) > _MAX_COMMON_NAME:
        raise TlsError(
            f"{kind} name {name!r} must be 1-{_MAX_COMMON_NAME} letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return name


def _check_unique(kind: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        _check_dir_name(kind, name)
        if name in seen:
            raise TlsError(f"{kind} name {name!r} is given twice")
        seen.add(name)


# -- making certificates ----------------------------------------------------------------------


def _subject(common_name: str, role: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if role:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, _check_common_name(common_name)))
    return x509.Name(attributes)


def create_ca(
    directory: Path, name: str = "matrec CA", days: int = DEFAULT_CA_DAYS
) -> CertificatePaths:
    """Create a CA: a self-signed certificate ``directory/ca.pem`` and its EC P-256 key
    ``directory/ca.key`` (mode 0600). Overwrites existing files (``init_cluster_certificates``
    is the careful entry point). Returns ``CertificatePaths(ca=ca.pem, cert=ca.pem, key=ca.key)``.
    """
    _check_days(days)
    subject = _subject(name, None)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = CertificatePaths(
        ca=directory / CA_FILE, cert=directory / CA_FILE, key=directory / CA_KEY_FILE
    )
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return paths


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = Path(ca_dir) / CA_FILE, Path(ca_dir) / CA_KEY_FILE
    chain, key = _check_pair(cert_path, key_path)
    ca = chain[0]
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise TlsError(f"certificate {cert_path} is not a CA certificate")
    return ca, key


def issue_certificate(
    ca_dir: Path,
    out_dir: Path,
    common_name: str,
    *,
    hosts: Sequence[str],
    server: bool,
    client: bool,
    days: int = DEFAULT_CERT_DAYS,
    role: str | None = None,
) -> CertificatePaths:
    """Issue a certificate signed by the CA in `ca_dir` (``ca.pem`` + ``ca.key``).

    Writes ``out_dir/cert.pem``, ``out_dir/key.pem`` (new EC P-256 key, mode 0600) and a copy
    of the CA certificate as ``out_dir/ca.pem``, replacing existing files. `hosts` are the
    SubjectAltNames: DNS names and IP addresses (required for a server certificate, optional
    for a client one). `server` and `client` choose the extended key usages serverAuth and
    clientAuth (at least one). `role`, if given, goes into the subject as its organizational
    unit (see ``peer_role``). The certificate never outlives the CA.
    """
    if not (server or client):
        raise TlsError(f"certificate {common_name!r} must be for a server, a client or both")
    _check_days(days)
    subject = _subject(common_name, role)
    san = _san_entries(hosts)
    if server and not san:
        raise TlsError(f"server certificate {common_name!r} needs at least one host name")
    ca_cert, ca_key = _load_ca(ca_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(aki, critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    # Ed25519 signs without a separate hash; an imported CA might use it.
    digest = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(ca_key, digest)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = CertificatePaths(ca=out_dir / CA_FILE, cert=out_dir / CERT_FILE, key=out_dir / KEY_FILE)
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    _write_cert(paths.ca, ca_cert)
    return paths


def init_cluster_certificates(
    directory: Path,
    coordinator_hosts: Sequence[str],
    agents: Sequence[str],
    clients: Sequence[str],
    *,
    force: bool = False,
    days: int = DEFAULT_CERT_DAYS,
) -> dict[str, CertificatePaths]:
    """Make a CA and the certificates of a small cluster under `directory`.

    - ``ca/``: the CA (``ca.pem``, ``ca.key``);
    - ``coordinator/``: a server certificate whose SubjectAltNames are `coordinator_hosts` plus
      localhost, 127.0.0.1 and ::1;
    - ``agents/<name>/``: a client certificate per agent, common name = the agent's name;
    - ``clients/<name>/``: a client certificate per `matrec-ctl` user.

    Refuses (TlsError naming the path) when a CA already exists there, unless `force`, which
    makes a new CA and replaces the certificates named here (others stay, signed by the old CA).
    Every input is checked before anything is written. Returns the paths by key: ``"ca"``,
    ``"coordinator"``, ``"agents/<name>"`` and ``"clients/<name>"``.
    """
    directory = Path(directory)
    _check_days(days)
    _check_unique("agent", agents)
    _check_unique("client", clients)
    hosts = [*coordinator_hosts, *LOCAL_HOSTS]
    _san_entries(hosts)  # fail on a bad host before writing anything
    coordinator_cn = coordinator_hosts[0].strip().strip("[]") if coordinator_hosts else "localhost"
    _check_common_name(coordinator_cn)

    ca_dir = directory / CA_DIR
    if not force:
        for existing in (ca_dir / CA_FILE, ca_dir / CA_KEY_FILE):
            if existing.exists():
                raise TlsError(
                    f"a CA already exists at {existing}; replace it with --force (force=True), "
                    "and every certificate it signed stops being trusted"
                )

    result: dict[str, CertificatePaths] = {"ca": create_ca(ca_dir)}
    result[COORDINATOR_DIR] = issue_certificate(
        ca_dir,
        directory / COORDINATOR_DIR,
        coordinator_cn,
        hosts=hosts,
        server=True,
        client=False,
        days=days,
        role=ROLE_COORDINATOR,
    )
    for name in agents:
        result[f"{AGENTS_DIR}/{name}"] = issue_certificate(
            ca_dir,
            directory / AGENTS_DIR / name,
            name,
            hosts=[],
            server=False,
            client=True,
            days=days,
            role=ROLE_AGENT,
        )
    for name in clients:
        result[f"{CLIENTS_DIR}/{name}"] = issue_certificate(
            ca_dir,
            directory / CLIENTS_DIR / name,
            name,
            hosts=[],
            server=False,
            client=True,
            days=days,
            role=ROLE_CLIENT,
        )
    return result


# -- gRPC -------------------------------------------------------------------------------------


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``: the server's certificate (chain) and key,
    checked to match. With `client_ca`, clients must present a certificate signed by it
    (mutual TLS); without, any client that trusts the server may connect."""
    import grpc

    _check_pair(cert, key)
    root = None
    if client_ca is not None:
        load_certificates(client_ca, "client CA certificate")
        root = _read(client_ca, "client CA certificate")
    return grpc.ssl_server_credentials(
        [(_read(key, "private key"), _read(cert, "certificate"))],
        root_certificates=root,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Credentials for ``grpc.aio.secure_channel``: trust the CA certificate(s) in `ca` and,
    for mutual TLS, present `cert` with `key` (give both or neither)."""
    import grpc

    load_certificates(ca, "CA certificate")
    if (cert is None) != (key is None):
        given, missing = ("certificate", "key") if key is None else ("key", "certificate")
        raise TlsError(f"a client {given} needs its {missing} too (give both or neither)")
    chain = private = None
    if cert is not None and key is not None:
        _check_pair(cert, key)
        chain, private = _read(cert, "certificate"), _read(key, "private key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate"),
        private_key=private,
        certificate_chain=chain,
    )


def _first(auth_context: Mapping[str, Iterable[bytes]], key: str) -> bytes | None:
    for value in auth_context.get(key, ()):
        return value
    return None


def peer_common_name(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The common name of the peer's client certificate, from a servicer context's
    ``auth_context()``; None without one (plain TCP, or TLS without a client certificate).

    Only a server made with ``server_credentials(..., client_ca=...)`` has verified the
    certificate, so only then does the name prove who the peer is.
    """
    value = _first(auth_context, _AUTH_COMMON_NAME)
    return None if value is None else value.decode("utf-8", "replace")


def peer_role(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The organizational unit of the peer's client certificate (``ROLE_AGENT`` or
    ``ROLE_CLIENT`` for certificates made by ``init_cluster_certificates``), or None.

    Agents and users share the CA, so a coordinator that binds agents to their certificates
    should also check that the role is ``ROLE_AGENT``: otherwise a user's certificate named
    "admin" could register an agent called "admin".
    """
    pem = _first(auth_context, _AUTH_PEM_CERT)
    if pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not units:
        return None
    value = units[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
