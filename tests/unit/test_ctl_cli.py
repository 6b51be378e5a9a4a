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
        ["train"],
        ["distributed"],
        ["config"],
        ["config", "show"],
        ["active-learning"],
        ["monitor"],
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


# -- the seed's commands: train, config show, distributed, active-learning --operation ---------


@pytest.fixture
def clean_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No MATREC_/seed settings from this machine; an empty config file."""
    from matrec.sdk.config import SETTINGS

    for setting in SETTINGS:
        for name in setting.env:
            monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "config.toml"
    empty.write_text("")
    monkeypatch.setenv("MATREC_CONFIG", str(empty))
    return empty


def test_train_choices_match_the_training_api() -> None:
    from matrec.sdk.config import DEVICES, VISUALIZATION_LEVELS
    from matrec.sdk.ctl.train import Device, ModelType, VisualizationLevel
    from matrec.sdk.training_api import DEFAULT_MAX_TRIALS, build_parser

    actions = {action.dest: action for action in build_parser()._actions}
    assert tuple(ModelType) == tuple(actions["model_type"].choices or ())
    assert tuple(VisualizationLevel) == VISUALIZATION_LEVELS
    assert tuple(Device) == DEVICES
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout
    max_trials = next(line for line in help_text.splitlines() if "--max-trials" in line)
    assert f"[default: {DEFAULT_MAX_TRIALS}]" in max_trials


def test_train_bad_settings_fail_before_anything_starts(clean_config: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    args = ["train", "--dataset", str(tmp_path), "--base-dir", str(base)]
    result = runner.invoke(app, [*args, "--set", "colour"])
    assert result.exit_code == 2
    assert _single_error_line(result.stderr) == "error: --set 'colour': expected KEY=VALUE"

    result = runner.invoke(app, args, env={"NUM_WORKERS": "abc"})
    assert result.exit_code == 2, result.output
    line = _single_error_line(result.stderr)
    assert "NUM_WORKERS" in line and "whole number from 1 to 64" in line
    assert not (base / "cluster").exists()


def test_the_api_reports_progress_through_its_callback(
    clean_config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fallback goes to `progress` once (not to the log); without a callback, to the log.
    epochs=0 stops train_model at validation, before it calls the (absent) coordinator."""
    from matrec.sdk.errors import InvalidSpecError
    from matrec.sdk.training_api import EnhancedTrainingAPI
    from matrec.sdk.training_progress import TrainingUpdate

    updates: list[TrainingUpdate] = []
    closed_port = "127.0.0.1:9"
    with (
        EnhancedTrainingAPI(
            base_dir=tmp_path, coordinator=closed_port, progress=updates.append
        ) as api,
        caplog.at_level("INFO", logger="matrec.sdk.training_api"),
    ):
        for _ in range(2):
            with pytest.raises(InvalidSpecError, match="epochs"):
                api.train_model(tmp_path, epochs=0)
    assert [u.kind for u in updates] == ["fallback"]
    assert updates[0].text.startswith("transfer learning: no local pretrained model")
    assert not caplog.records

    with (
        EnhancedTrainingAPI(base_dir=tmp_path, coordinator=closed_port) as api,
        caplog.at_level("INFO", logger="matrec.sdk.training_api"),
        pytest.raises(InvalidSpecError),
    ):
        api.train_model(tmp_path, epochs=0)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", updates[0].text)]


def test_train_shows_phases_and_fallbacks_on_stderr() -> None:
    """`matrec-ctl train` renders the API's progress: in a pipe, one line per phase and one
    warning line per fallback."""
    import io

    from matrec.sdk.ctl.train import phase_display
    from matrec.sdk.training_progress import TrainingUpdate
    from rich.console import Console

    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=False, width=200)
    with phase_display(out) as show:
        show(TrainingUpdate("phase", "training job job-1 submitted (2 ranks)"))
        show(TrainingUpdate("fallback", "device: no agent has a GPU: training on CPU"))
    assert buffer.getvalue().splitlines() == [
        "training job job-1 submitted (2 ranks)",
        "warning: device: no agent has a GPU: training on CPU",
    ]


def test_config_show_names_sources_and_masks_secrets(clean_config: Path) -> None:
    env = {
        "NUM_WORKERS": "3",
        "MATREC_NUM_WORKERS": "",  # empty counts as unset: the seed's name applies
        "SUPABASE_KEY": "sb-secret-key",
        "MATREC_DATABASE_URL": "postgresql://user:db-password@db.example:5432/postgres",
        "ENABLE_ACTIVE_LEARNING": "off",
    }
    result = runner.invoke(app, ["config", "show"], env=env)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["num_workers"] == ["3", "env", "NUM_WORKERS"]
    assert rows["enable_active_learning"] == ["false", "env", "ENABLE_ACTIVE_LEARNING"]
    assert rows["supabase_key"] == ["********", "env", "SUPABASE_KEY"]
    assert rows["database_url"][0] == "postgresql://user:********@db.example:5432/postgres"
    assert rows["visualization_level"] == ["standard", "default"]
    assert rows["config_file"] == [str(clean_config), "env", "MATREC_CONFIG"]
    assert "sb-secret-key" not in result.output and "db-password" not in result.output

    as_json = runner.invoke(app, ["-c", "10.0.0.5:50051", "config", "show", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["coordinator"] == {"value": "10.0.0.5:50051", "source": "argument"}
    assert document["supabase_key"]["value"] == "********"
    assert document["num_workers"] == {"value": "3", "source": "env NUM_WORKERS"}
    assert "sb-secret-key" not in as_json.stdout

    bad = runner.invoke(app, ["config", "show"], env={"VISUALIZATION_LEVEL": "loud"})
    assert bad.exit_code == 2
    assert _single_error_line(bad.stderr).startswith("error: VISUALIZATION_LEVEL: 'loud'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--operation", "select"], "error: --operation select needs --count"),
        (
            ["--operation", "feedback", "--batch-id", "alb-1"],
            "error: --operation feedback needs --sample-id, --material-id",
        ),
        (["--operation", "select", "select", "alp-1", "--count", "2"], "use one of them"),
        (["--json"], "error: pass --operation (select, feedback, status"),
    ],
)
def test_active_learning_operation_checks_its_options_first(
    clean_config: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["-c", _unused_address(), "active-learning", *args])
    assert result.exit_code == 2, result.output
    assert message in _single_error_line(result.stderr)


def test_active_learning_operation_without_a_project_starts_nothing(
    clean_config: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "al"
    args = ["active-learning", "--operation", "check-triggers", "--storage-dir", str(storage)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    line = _single_error_line(result.stderr)
    assert f"none is remembered in {storage}" in line and "--project" in line
    assert not (storage / "cluster").exists()


def test_active_learning_operation_on_an_unreachable_coordinator(clean_config: Path) -> None:
    address = _unused_address()
    args = ["active-learning", "--operation", "status", "--project", "alp-1"]
    result = runner.invoke(app, ["-c", address, *args])
    assert result.exit_code == 1
    assert _single_error_line(result.stderr).startswith(
        f"error: cannot reach the coordinator at {address}"
    )


def test_distributed_status_without_a_coordinator(clean_config: Path, tmp_path: Path) -> None:
    args = ["distributed", "--operation", "status", "--base-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    line = _single_error_line(result.stderr)
    assert "no coordinator configured" in line and str(tmp_path / "workers") in line
