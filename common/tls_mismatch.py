"""What grpc's UNAVAILABLE text means when client and coordinator disagree about TLS.

grpc reports a mismatch only as a closed socket or a failed handshake; `diagnose` turns its text
into what is wrong and which option fixes it. Used by the SDK's errors (matrec-ctl, Client) and
by the agent's reconnect log; both read the options named here (--tls-ca, --tls-cert, --tls-key
and their MATREC_TLS_* variables). No grpc import: the text is enough.
"""

from __future__ import annotations

from dataclasses import dataclass

CA_OPTION = "--tls-ca / MATREC_TLS_CA"
CERT_OPTIONS = "--tls-cert and --tls-key / MATREC_TLS_CERT and MATREC_TLS_KEY"


@dataclass(frozen=True)
class Diagnosis:
    problem: str
    fix: str


def diagnose(details: str, client_tls: bool, ca_option: str = CA_OPTION) -> Diagnosis | None:
    """The TLS mismatch grpc's `details` show for a client that talks TLS (`client_tls`) or
    plaintext; None where they show none. `ca_option` names how this client is given a CA."""
    if "WRONG_VERSION_NUMBER" in details:
        return Diagnosis(
            "this client talks TLS, the coordinator answers in plaintext",
            f"leave {ca_option} unset for this coordinator, or start it with --tls-cert and "
            "--tls-key (`matrec-ctl certs init` makes them)",
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return Diagnosis(
            "its TLS certificate is not signed by the CA this client trusts",
            f"give {ca_option} the CA that signed the coordinator's certificate "
            "(ca/ca.pem of `matrec-ctl certs init`)",
        )
    if not details.endswith("Socket closed"):
        return None
    if not client_tls:
        return Diagnosis(
            "it closed the connection: it talks TLS, this client plaintext",
            f"give {ca_option} the coordinator's CA, and {CERT_OPTIONS} too where it requires "
            "client certificates (--tls-client-ca)",
        )
    return Diagnosis(
        "it refused the TLS handshake: it requires a client certificate signed by its CA",
        f"give {CERT_OPTIONS} (`matrec-ctl certs init --client NAME` or `--agent NAME` makes them)",
    )
