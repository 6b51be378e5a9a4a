"""Errors raised by the SDK, and how gRPC status codes map onto them.

grpc is imported only inside `from_rpc_error`, so that `matrec-ctl` can catch these exceptions
without loading grpc before a command needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrec.common.metadata import FIELD_METADATA_KEY
from matrec.common.tls_mismatch import CA_OPTION, diagnose

if TYPE_CHECKING:
    import grpc

START_HINT = "start one with `matrec-ctl server` (or try everything at once with `matrec-ctl demo`)"


class MatrecError(Exception):
    """Base of every error the SDK raises. `code` is the gRPC status name, if one caused it."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidSpecError(MatrecError, ValueError):
    """A request (usually a job spec) is invalid. `field` is a dotted path like ``config.epochs``.

    Raised locally before any RPC when the spec fails validation, and for the coordinator's
    INVALID_ARGUMENT (for example a dataset path that does not exist on the coordinator's host).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message, code="INVALID_ARGUMENT")
        self.field = field
        self.message = message


class NotFoundError(MatrecError):
    """No job or study has the given id."""


class JobNotFoundError(NotFoundError):
    """No job has the given id."""


class StudyNotFoundError(NotFoundError):
    """No study has the given id."""


class ProjectNotFoundError(NotFoundError):
    """No active-learning project, batch, sample or trigger has the given id."""


class JobStateError(MatrecError):
    """The job is not in a state that allows the operation (e.g. cancelling a finished job)."""


class JobFailedError(MatrecError):
    """A job (or an in-process run, `job_id` None) ended without succeeding; the message holds
    its error text. `state` is "failed" or "cancelled"."""

    def __init__(self, job_id: str | None, state: str, error: str) -> None:
        what = f"job {job_id}" if job_id else "training"
        detail = error.strip() or "no error text"
        super().__init__(f"{what} {state}: {detail}")
        self.job_id = job_id
        self.state = state
        self.error = error


class CoordinatorUnavailableError(MatrecError, ConnectionError):
    """The coordinator cannot be reached; `hint` says what to do about it."""

    def __init__(self, address: str, detail: str = "", hint: str = START_HINT) -> None:
        message = f"cannot reach the coordinator at {address}"
        if detail:
            message += f" ({detail})"
        super().__init__(f"{message}; {hint}", code="UNAVAILABLE")
        self.address = address
        self.hint = hint


def _unavailable(address: str, details: str, tls: bool) -> CoordinatorUnavailableError:
    """What an UNAVAILABLE means, from grpc's text: above all a TLS mismatch between this client
    (`tls`: it talks TLS) and the coordinator."""
    mismatch = diagnose(details, tls, ca_option=f"{CA_OPTION} / Client(tls_ca=...)")
    if mismatch is not None:
        return CoordinatorUnavailableError(address, mismatch.problem, mismatch.fix)
    # grpc's text nests its causes ("failed to connect ...: ipv4:...: Connection refused");
    # the innermost one is what a person needs beside the address.
    return CoordinatorUnavailableError(address, details.rsplit(": ", 1)[-1])


def from_rpc_error(
    exc: grpc.RpcError,
    *,
    address: str,
    not_found: type[NotFoundError] = JobNotFoundError,
    tls: bool = False,
) -> MatrecError:
    """Translate a failed call into the matching SDK error; `tls`: the client talked TLS."""
    import grpc

    # Every RpcError raised by a call is also a grpc.Call, which carries code and details.
    call: grpc.Call = exc  # type: ignore[assignment]
    code = call.code()
    details = call.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = _trailing_field(call)
        message = details.removeprefix(f"{field}: ") if field else details
        return InvalidSpecError(field, message)
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(details or "not found", code=code.name)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return JobStateError(details or "failed precondition", code=code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return _unavailable(address, details, tls)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return MatrecError(f"the coordinator at {address} did not answer in time", code=code.name)
    return MatrecError(f"{details or 'request failed'} ({code.name})", code=code.name)


def _trailing_field(call: grpc.Call) -> str:
    for key, value in call.trailing_metadata() or ():
        if key == FIELD_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else value
    return ""
