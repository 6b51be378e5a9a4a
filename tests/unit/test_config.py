"""The SDK's effective configuration: arguments > environment (MATREC_ names over the seed's) >
config file > defaults, typed values, clear errors naming the source, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from matrec.sdk.config import (
    MASK,
    SETTINGS,
    ConfigError,
    MatrecConfig,
    load_config,
    mask_url_password,
)

#: (matrec name, seed name, setting, value under the matrec name, value under the seed name)
SEED_PAIRS = [
    ("MATREC_SUPABASE_URL", "SUPABASE_URL", "supabase_url", "https://a.supabase.co", "https://b"),
    ("MATREC_SUPABASE_KEY", "SUPABASE_KEY", "supabase_key", "key-one", "key-two"),
    ("MATREC_NUM_WORKERS", "NUM_WORKERS", "num_workers", "7", "3"),
    (
        "MATREC_VISUALIZATION_LEVEL",
        "VISUALIZATION_LEVEL",
        "visualization_level",
        "detailed",
        "minimal",
    ),
    (
        "MATREC_ENABLE_TRANSFER_LEARNING",
        "ENABLE_TRANSFER_LEARNING",
        "enable_transfer_learning",
        "false",
        "true",
    ),
    (
        "MATREC_ENABLE_HYPERPARAMETER_OPT",
        "ENABLE_HYPERPARAMETER_OPT",
        "enable_hyperparameter_optimization",
        "true",
        "false",
    ),
    (
        "MATREC_ENABLE_ACTIVE_LEARNING",
        "ENABLE_ACTIVE_LEARNING",
        "enable_active_learning",
        "no",
        "yes",
    ),
    ("MATREC_DATABASE_URL", "SUPABASE_DB_URL", "database_url", "sqlite:///a.db", "sqlite:///b.db"),
]


def home(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing set and a home without a config file."""
    return {"HOME": str(tmp_path / "home")}


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    config = load_config(environ=home(tmp_path))
    assert config == MatrecConfig(base_dir=Path("~/.matrec/training").expanduser())
    assert config.coordinator is None and config.token is None
    assert config.num_workers == 4 and config.visualization_level == "standard"
    assert config.enable_transfer_learning and config.enable_active_learning
    assert not config.enable_hyperparameter_optimization and not config.use_distributed
    assert config.config_file is None
    assert {source for _, _, source in config.describe()} == {"default"}


def test_arguments_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    file = write_toml(
        tmp_path / "c.toml",
        'num_workers = 2\nvisualization_level = "detailed"\ndevice = "cpu"\n'
        'coordinator = "file-host:1"\n',
    )
    env = {**home(tmp_path), "MATREC_CONFIG": str(file), "NUM_WORKERS": "3"}
    env["VISUALIZATION_LEVEL"] = "minimal"
    config = load_config(environ=env, num_workers=6, device=None)

    assert config.num_workers == 6  # argument over NUM_WORKERS over the file
    assert config.visualization_level == "minimal"  # environment over the file
    assert config.device == "cpu"  # file over the default (None = no argument)
    assert config.coordinator == "file-host:1"
    assert config.enable_active_learning is True  # default
    sources = {name: source for name, _, source in config.describe()}
    assert sources["num_workers"] == "argument"
    assert sources["visualization_level"] == "env VISUALIZATION_LEVEL"
    assert sources["device"] == f"file {file}"
    assert sources["enable_active_learning"] == "default"
    assert sources["config_file"] == "env MATREC_CONFIG"
    assert config.config_file == file

    without_argument = load_config(environ=env)
    assert without_argument.num_workers == 3
    without_env = load_config(environ={**home(tmp_path), "MATREC_CONFIG": str(file)})
    assert without_env.num_workers == 2


@pytest.mark.parametrize(
    ("matrec_name", "seed_name", "setting", "matrec_value", "seed_value"), SEED_PAIRS
)
def test_seed_names_work_and_matrec_names_win(
    tmp_path: Path,
    matrec_name: str,
    seed_name: str,
    setting: str,
    matrec_value: str,
    seed_value: str,
) -> None:
    def parsed(value: str) -> object:
        return getattr(load_config(environ=home(tmp_path), **{setting: value}), setting)

    seed_only = load_config(environ={**home(tmp_path), seed_name: seed_value})
    both = load_config(environ={**home(tmp_path), seed_name: seed_value, matrec_name: matrec_value})
    assert getattr(seed_only, setting) == parsed(seed_value)
    assert getattr(both, setting) == parsed(matrec_value) != parsed(seed_value)
    assert both.sources[setting] == f"env {matrec_name}"
    assert seed_only.sources[setting] == f"env {seed_name}"


def test_values_are_typed(tmp_path: Path) -> None:
    env = {
        **home(tmp_path),
        "NUM_WORKERS": " 12 ",
        "ENABLE_ACTIVE_LEARNING": "OFF",
        "ENABLE_HYPERPARAMETER_OPT": "1",
        "MATREC_USE_DISTRIBUTED": "Yes",
        "VISUALIZATION_LEVEL": "Detailed",
        "MATREC_BASE_DIR": "~/runs",
        "MATREC_PRETRAINED_PATH": "~/models/r18.pt",
    }
    config = load_config(environ=env)
    assert config.num_workers == 12
    assert config.enable_active_learning is False
    assert config.enable_hyperparameter_optimization is True
    assert config.use_distributed is True
    assert config.visualization_level == "detailed"
    assert config.base_dir == Path("~/runs").expanduser() and config.base_dir.is_absolute()
    assert config.pretrained_path == Path("~/models/r18.pt").expanduser()


def test_relative_paths_are_made_absolute_where_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config file's relative path is relative to the file; others to the working folder."""
    file = write_toml(tmp_path / "conf" / "matrec.toml", 'base_dir = "runs"\n')
    (tmp_path / "shell").mkdir()
    monkeypatch.chdir(tmp_path / "shell")
    config = load_config(config_file="../conf/matrec.toml", environ=home(tmp_path))
    assert config.base_dir == tmp_path / "conf" / "runs"
    assert config.config_file == file
    config = load_config(
        pretrained_path="../models/r18.pt",
        environ={**home(tmp_path), "MATREC_BASE_DIR": "./runs"},
    )
    assert config.base_dir == tmp_path / "shell" / "runs"
    assert config.pretrained_path == tmp_path / "models" / "r18.pt"


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    file = write_toml(tmp_path / "home" / ".matrec" / "config.toml", "num_workers = 9\n")
    config = load_config(environ={**home(tmp_path), "MATREC_NUM_WORKERS": "", "NUM_WORKERS": " "})
    assert config.num_workers == 9
    assert config.sources["num_workers"] == f"file {file}"


def test_the_default_file_is_read_from_home(tmp_path: Path) -> None:
    file = write_toml(
        tmp_path / "home" / ".matrec" / "config.toml",
        'use_distributed = true\nenable_active_learning = false\nbase_dir = "/srv/matrec"\n',
    )
    config = load_config(environ=home(tmp_path))
    assert config.use_distributed is True and config.enable_active_learning is False
    assert config.base_dir == Path("/srv/matrec")
    assert config.config_file == file
    assert ("config_file", str(file), "default") in config.describe()


def test_an_explicit_file_argument_beats_matrec_config(tmp_path: Path) -> None:
    named = write_toml(tmp_path / "named.toml", "num_workers = 5\n")
    other = write_toml(tmp_path / "other.toml", "num_workers = 8\n")
    config = load_config(config_file=named, environ={**home(tmp_path), "MATREC_CONFIG": str(other)})
    assert config.num_workers == 5 and config.sources["config_file"] == "argument"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"NUM_WORKERS": "abc"}, ["NUM_WORKERS", "whole number from 1 to 64"]),
        ({"MATREC_NUM_WORKERS": "0"}, ["MATREC_NUM_WORKERS", "out of range"]),
        ({"NUM_WORKERS": "-2"}, ["NUM_WORKERS", "whole number"]),
        ({"VISUALIZATION_LEVEL": "loud"}, ["VISUALIZATION_LEVEL", "minimal, standard, detailed"]),
        ({"ENABLE_ACTIVE_LEARNING": "maybe"}, ["ENABLE_ACTIVE_LEARNING", "true, 1, yes, on"]),
        ({"ENABLE_TRANSFER_LEARNING": "2"}, ["ENABLE_TRANSFER_LEARNING", "false, 0, no, off"]),
        ({"MATREC_DEVICE": "tpu"}, ["MATREC_DEVICE", "auto, cpu, cuda"]),
    ],
)
def test_bad_environment_values_name_the_variable_and_the_accepted_values(
    tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={**home(tmp_path), **env})
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('num_workers = "abc"\n', ["key num_workers", "whole number"]),
        ("num_workers = 1.5\n", ["key num_workers", "whole number"]),
        ('enable_active_learning = "maybe"\n', ["key enable_active_learning", "true"]),
        ("visualization_level = 3\n", ["key visualization_level", "a string"]),
        ('visualization_level = "loud"\n', ["key visualization_level", "minimal, standard"]),
        ('colour = "blue"\n', ["key colour", "unknown setting", "num_workers"]),
        ("num_workers = \n", ["not valid TOML"]),
    ],
)
def test_bad_file_values_name_the_file_and_key(tmp_path: Path, text: str, names: list[str]) -> None:
    file = write_toml(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(config_file=file, environ=home(tmp_path))
    assert str(file) in str(caught.value)
    for name in names:
        assert name in str(caught.value)


def test_a_named_file_must_exist_but_the_default_one_need_not(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="no such file"):
        load_config(environ={**home(tmp_path), "MATREC_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(config_file=missing, environ=home(tmp_path))
    assert load_config(environ=home(tmp_path)).config_file is None


def test_bad_arguments_and_unknown_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="argument num_workers"):
        load_config(environ=home(tmp_path), num_workers=0)
    with pytest.raises(ConfigError, match="argument use_distributed"):
        load_config(environ=home(tmp_path), use_distributed="sometimes")
    with pytest.raises(ValueError, match="unknown setting workers"):
        load_config(environ=home(tmp_path), workers=2)


def test_secrets_are_masked_in_describe_and_repr(tmp_path: Path) -> None:
    env = {
        **home(tmp_path),
        "SUPABASE_KEY": "sb-secret-key-123",
        "MATREC_TOKEN": "tok-secret-456",
        "MATREC_DATABASE_URL": "postgresql://matrec:pg-pass-789@db.example.com:5432/matrec",
        "SUPABASE_URL": "https://project.supabase.co",
    }
    config = load_config(environ=env)
    assert config.supabase_key == "sb-secret-key-123"  # the value itself is kept
    rows = {name: value for name, value, _ in config.describe()}
    assert rows["supabase_key"] == MASK and rows["token"] == MASK
    assert rows["database_url"] == f"postgresql://matrec:{MASK}@db.example.com:5432/matrec"
    assert rows["supabase_url"] == "https://project.supabase.co"
    shown = repr(config) + str(config.describe())
    for secret in ("sb-secret-key-123", "tok-secret-456", "pg-pass-789"):
        assert secret not in shown
    assert "db.example.com" in repr(config)
    # Unset secrets show as unset, not as a mask.
    assert dict((n, v) for n, v, _ in load_config(environ=home(tmp_path)).describe())["token"] == ""


def test_url_masking_keeps_everything_but_passwords() -> None:
    assert mask_url_password("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert mask_url_password("postgresql://u@h/db") == "postgresql://u@h/db"
    masked = mask_url_password("postgresql://h/db?user=u&password=hunter2&sslmode=require")
    assert "hunter2" not in masked and "sslmode=require" in masked and "user=u" in masked
    assert mask_url_password("postgresql://u:p%40ss@h:6543/db").startswith(
        f"postgresql://u:{MASK}@"
    )


def test_describe_lists_every_setting_once_then_the_file(tmp_path: Path) -> None:
    rows = load_config(environ=home(tmp_path)).describe()
    assert [name for name, _, _ in rows] == [s.name for s in SETTINGS] + ["config_file"]
    assert all(isinstance(value, str) for _, value, _ in rows)


def test_the_client_and_one_call_functions_read_coordinator_and_token_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matrec.sdk.address import configured_address, default_address, default_token
    from matrec.sdk.client import Client

    for name in ("MATREC_COORDINATOR", "MATREC_TOKEN", "MATREC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert configured_address() is None  # nothing set: the one-call functions go embedded
    assert default_address() == "127.0.0.1:50051" and default_token() is None

    write_toml(
        tmp_path / ".matrec" / "config.toml", 'coordinator = "gpu-head:50051"\ntoken = "t-1"\n'
    )
    assert configured_address() == "gpu-head:50051" and default_token() == "t-1"
    with Client() as client:
        assert client.address == "gpu-head:50051"

    monkeypatch.setenv("MATREC_COORDINATOR", "other:1")
    monkeypatch.setenv("MATREC_TOKEN", "t-2")
    assert default_address() == "other:1" and default_token() == "t-2"  # the environment wins
