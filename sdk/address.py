"""Where the coordinator is, unless a caller says otherwise (kept free of grpc imports)."""

from __future__ import annotations

import os

from matrec.sdk.config import configured

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "MATREC_COORDINATOR"


def configured_address() -> str | None:
    """$MATREC_COORDINATOR, else `coordinator` in the config file; None means neither (the
    one-call SDK functions then start an embedded cluster)."""
    return configured("coordinator")


def default_address() -> str:
    """The configured coordinator, else 127.0.0.1:50051."""
    return configured_address() or DEFAULT_ADDRESS


TOKEN_ENV = "MATREC_TOKEN"


def default_token() -> str | None:
    """$MATREC_TOKEN, else `token` in the config file: the API token sent with every call."""
    return configured("token")


TLS_ENV = ("MATREC_TLS_CA", "MATREC_TLS_CERT", "MATREC_TLS_KEY")


def default_tls() -> tuple[str | None, str | None, str | None]:
    """$MATREC_TLS_CA, $MATREC_TLS_CERT, $MATREC_TLS_KEY (None where unset)."""
    ca, cert, key = (os.environ.get(name) or None for name in TLS_ENV)
    return ca, cert, key
