"""gRPC status codes to SDK errors; local validation before any RPC."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest
from matrec.sdk import (
    Client,
    CoordinatorUnavailableError,
    InvalidSpecError,
    JobNotFoundError,
    JobStateError,
    MatrecError,
)
from matrec.sdk.errors import from_rpc_error


class _FailedCall(grpc.RpcError):
    """What a failed call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: Any = ()) -> None:
        self._code, self._details, self._metadata = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._metadata


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_invalid_argument_names_the_field_from_trailing_metadata() -> None:
    call = _FailedCall(
        grpc.StatusCode.INVALID_ARGUMENT,
        "config.dataset_path: '/nope' is not a directory",
        (("matrec-field", "config.dataset_path"),),
    )
    error = from_rpc_error(call, address="h:1")
    assert isinstance(error, InvalidSpecError)
    assert issubclass(InvalidSpecError, ValueError)
    assert error.field == "config.dataset_path"
    assert error.message == "'/nope' is not a directory"
    assert str(error) == "config.dataset_path: '/nope' is not a directory"


def test_invalid_argument_without_field() -> None:
    error = from_rpc_error(_FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "bad"), address="h:1")
    assert isinstance(error, InvalidSpecError)
    assert error.field == "" and str(error) == "bad"


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, JobNotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, JobStateError),
        (grpc.StatusCode.UNAVAILABLE, CoordinatorUnavailableError),
        (grpc.StatusCode.INTERNAL, MatrecError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, MatrecError),
    ],
)
def test_status_codes(code: grpc.StatusCode, error_type: type[MatrecError]) -> None:
    error = from_rpc_error(_FailedCall(code, "details"), address="h:1")
    assert type(error) is error_type
    assert error.code == code.name


def test_unavailable_tells_how_to_start_a_coordinator() -> None:
    call = _FailedCall(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:h:1: Connection refused",
    )
    error = from_rpc_error(call, address="h:1")
    assert str(error).startswith("cannot reach the coordinator at h:1 (Connection refused)")
    assert "matrec-ctl server" in str(error)


def test_unreachable_coordinator_raises_unavailable() -> None:
    with (
        Client(f"127.0.0.1:{_free_port()}", timeout=5) as client,
        pytest.raises(CoordinatorUnavailableError) as caught,
    ):
        client.list_jobs()
    assert "matrec-ctl server" in str(caught.value)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"dataset_path": "/d", "model": "vgg99"}, "config.model"),
        ({"dataset_path": "/d", "epochs": -1}, "config.epochs"),
        ({"dataset_path": "/d", "colour": "red"}, "config.colour"),
        ({}, "config.dataset_path"),
    ],
)
def test_invalid_spec_fails_before_any_rpc(config: dict[str, Any], field: str) -> None:
    # Nothing listens on this port: an RPC would raise CoordinatorUnavailableError instead.
    with (
        Client(f"127.0.0.1:{_free_port()}", timeout=5) as client,
        pytest.raises(InvalidSpecError) as caught,
    ):
        client.submit_job({"config": config})
    assert caught.value.field == field


def test_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATREC_COORDINATOR", "10.1.2.3:7000")
    with Client() as client:
        assert client.address == "10.1.2.3:7000"
    monkeypatch.delenv("MATREC_COORDINATOR")
    with Client() as client:
        assert client.address == "127.0.0.1:50051"
