"""`matrec-ctl` without a coordinator: input errors, exit codes, help and start-up cost."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matrec.sdk.ctl.app import app
from typer.testing import CliRunner

runner = CliRunner()


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _single_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--model", "vgg99"], "config.model"),
        (["--epochs", "-1"], "config.epochs"),
        (["--set", "colour=red"], "config.colour"),
        (["--set", "colour"], "--set"),
        (["--max-attempts", "0"], "max_attempts"),
        (["--gpus", "-1"], "resources.gpus"),
        (["--model-type", "transformer"], "config.model_type"),
        (["--strategy", "everything"], "config.strategy"),
        (["--augmentation", ","], "--augmentation"),
        (["--optimizer", "lbfgs"], "config.optimizer"),
        (["--schedule", "linear"], "config.schedule"),
        (["--label-smoothing", "-0.5"], "config.label_smoothing"),
    ],
)
def test_invalid_submit_is_one_line_and_exit_2(args: list[str], field: str) -> None:
    # The address has no coordinator: these must fail locally, before any RPC.
    result = runner.invoke(app, ["-c", _unused_address(), "submit", "--dataset", "/data", *args])
    assert result.exit_code == 2, result.output
    assert _single_error_line(result.stderr).startswith(f"error: {field}: ")
    assert result.stdout == ""


def test_unknown_augmentation_is_reported_locally() -> None:
    args = ["submit", "--dataset", "/data", "--augmentation", "hflip,sparkle"]
    result = runner.invoke(app, ["-c", _unused_address(), *args])
    assert result.exit_code == 2, result.output
    # The field path may carry pydantic's union branch after "config.augmentation".
    assert _single_error_line(result.stderr).startswith("error: config.augmentation")


def test_missing_dataset_is_reported_locally() -> None:
    result = runner.invoke(app, ["-c", _unused_address(), "submit", "--epochs", "2"])
    assert result.exit_code == 2
    assert _single_error_line(result.stderr).startswith("error: config.dataset_path: ")


def test_unreadable_spec_file(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text('{"config": ')
    result = runner.invoke(app, ["submit", "--file", str(spec)])
    assert result.exit_code == 2
    assert _single_error_line(result.stderr).startswith("error: --file: ")


def test_spec_file_errors_name_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": {"dataset_path": "d"}, "priority": 3}))
    result = runner.invoke(app, ["-c", _unused_address(), "submit", "--file", str(spec)])
    assert result.exit_code == 2
    assert _single_error_line(result.stderr).startswith("error: priority: unknown field")


def test_unknown_state_filter() -> None:
    result = runner.invoke(app, ["-c", _unused_address(), "jobs", "--state", "done"])
    assert result.exit_code == 2
    assert "unknown job state 'done'" in _single_error_line(result.stderr)


@pytest.mark.parametrize(
    "args",
    [["jobs"], ["agents"], ["show", "j1"], ["cancel", "j1"], ["watch", "j1"]],
)
def test_unreachable_coordinator_is_exit_1(args: list[str]) -> None:
    address = _unused_address()
    result = runner.invoke(app, ["-c", address, *args])
    assert result.exit_code == 1
    line = _single_error_line(result.stderr)
    assert line.startswith(f"error: cannot reach the coordinator at {address}")
    assert "matrec-ctl server" in line


def test_coordinator_address_from_environment() -> None:
    address = _unused_address()
    result = runner.invoke(app, ["jobs"], env={"MATREC_COORDINATOR": address})
    assert address in result.stderr


def test_every_command_has_help() -> None:
    for args in (
        [],
        ["submit"],
        ["jobs"],
        ["show"],
        ["cancel"],
        ["watch"],
        ["agents"],
        ["demo"],
        ["dataset"],
        ["dataset", "demo"],
    ):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("matrec-ctl ")


def test_help_is_fast_and_loads_no_sdk_machinery() -> None:
    command = [sys.executable, "-c", "from matrec.sdk.ctl.app import main; main()", "--help"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "submit" in result.stdout
    assert elapsed < 2.0, f"matrec-ctl --help took {elapsed:.2f} s"

    probe = (
        "import sys; import matrec.sdk.ctl.app; "
        "print(sorted(m for m in ('torch', 'grpc', 'pydantic', 'google.protobuf') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]"
