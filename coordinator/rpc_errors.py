"""INVALID_ARGUMENT answers that name the offending field, the one way every service gives them."""

from __future__ import annotations

from typing import NoReturn

import grpc
from matrec.common.metadata import FIELD_METADATA_KEY
from matrec.common.specs import SpecError


def metadata_safe(text: str) -> str:
    """Metadata values must be printable ASCII; a field name from user input may not be."""
    return "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)[:512]


async def abort_invalid(context: grpc.aio.ServicerContext, error: SpecError) -> NoReturn:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        str(error),
        trailing_metadata=((FIELD_METADATA_KEY, metadata_safe(error.field)),),
    )
    raise AssertionError("unreachable")
