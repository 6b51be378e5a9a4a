"""Where the coordinator is, unless a caller says otherwise (kept free of grpc imports)."""

from __future__ import annotations

import os

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "MATREC_COORDINATOR"


def default_address() -> str:
    """$MATREC_COORDINATOR, else 127.0.0.1:50051."""
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


TOKEN_ENV = "MATREC_TOKEN"


def default_token() -> str | None:
    """$MATREC_TOKEN, when set: the API token sent with every call."""
    return os.environ.get(TOKEN_ENV) or None


TLS_ENV = ("MATREC_TLS_CA", "MATREC_TLS_CERT", "MATREC_TLS_KEY")


def default_tls() -> tuple[str | None, str | None, str | None]:
    """$MATREC_TLS_CA, $MATREC_TLS_CERT, $MATREC_TLS_KEY (None where unset)."""
    ca, cert, key = (os.environ.get(name) or None for name in TLS_ENV)
    return ca, cert, key
