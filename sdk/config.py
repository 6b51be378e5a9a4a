"""The effective configuration of the SDK's unified training API (and `matrec-ctl config show`).

Every setting has one value, taken from the first of these sources that sets it:

1. an **explicit argument** (`load_config(num_workers=2)`, `EnhancedTrainingAPI(num_workers=2)`,
   a command-line flag); None means "not given";
2. the **environment**: matrec's own name (``MATREC_NUM_WORKERS``), else the seed's name
   (``NUM_WORKERS``), so where both are set the ``MATREC_`` one wins; an empty variable counts
   as unset;
3. the **config file**, TOML: the file named by the `config_file` argument, else
   ``$MATREC_CONFIG``, else ``~/.matrec/config.toml`` (which may be absent; a file named
   explicitly must exist). Its top-level keys are the setting names below;
4. the **default**.

==================================== ============================================ ==============
setting                              environment (first wins)                     default
==================================== ============================================ ==============
coordinator                          MATREC_COORDINATOR                           unset: embedded
token                                MATREC_TOKEN                                 unset
supabase_url                         MATREC_SUPABASE_URL, SUPABASE_URL            unset
supabase_key                         MATREC_SUPABASE_KEY, SUPABASE_KEY            unset
database_url                         MATREC_DATABASE_URL, SUPABASE_DB_URL         unset: SQLite
base_dir                             MATREC_BASE_DIR                              ~/.matrec/training
num_workers                          MATREC_NUM_WORKERS, NUM_WORKERS              4
visualization_level                  MATREC_VISUALIZATION_LEVEL,                  standard
                                     VISUALIZATION_LEVEL
enable_transfer_learning             MATREC_ENABLE_TRANSFER_LEARNING,             true
                                     ENABLE_TRANSFER_LEARNING
enable_hyperparameter_optimization   MATREC_ENABLE_HYPERPARAMETER_OPT,            false
                                     ENABLE_HYPERPARAMETER_OPT
enable_active_learning               MATREC_ENABLE_ACTIVE_LEARNING,               true
                                     ENABLE_ACTIVE_LEARNING
use_distributed                      MATREC_USE_DISTRIBUTED                       false
device                               MATREC_DEVICE                                auto
pretrained_path                      MATREC_PRETRAINED_PATH                       unset
==================================== ============================================ ==============

Paths are made absolute when read: a relative path in the config file against the file's folder,
one from an argument or the environment against the working directory.

Booleans accept true/false, 1/0, yes/no, on/off (any case; TOML booleans in the file). A bad
value raises ConfigError naming the variable or file key and the accepted values.
`MatrecConfig.describe()` lists every setting with its value and source, secrets masked
(`token`, `supabase_key`, and the password inside `database_url`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from matrec.common.paths import absolute_path

CONFIG_ENV = "MATREC_CONFIG"
DEFAULT_CONFIG_FILE = "~/.matrec/config.toml"
DEFAULT_BASE_DIR = "~/.matrec/training"
MASK = "********"

VISUALIZATION_LEVELS: tuple[str, ...] = ("minimal", "standard", "detailed")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
MAX_NUM_WORKERS = 64
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

SettingKind = Literal["text", "path", "count", "flag", "choice"]


class ConfigError(ValueError):
    """A configuration value is invalid. `where` names its source, e.g. ``NUM_WORKERS`` or
    ``config file /home/me/.matrec/config.toml, key num_workers``."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Setting:
    """One configuration setting: its name (also its config-file key), how its value is read,
    its default and the environment variables that set it, the first set one winning."""

    name: str
    kind: SettingKind
    default: Any
    env: tuple[str, ...]
    help: str
    choices: tuple[str, ...] = ()
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "coordinator",
        "text",
        None,
        ("MATREC_COORDINATOR",),
        "HOST:PORT of the coordinator; unset: an embedded one with local agents under base_dir",
    ),
    Setting("token", "text", None, ("MATREC_TOKEN",), "API token for the coordinator", secret=True),
    Setting(
        "supabase_url",
        "text",
        None,
        ("MATREC_SUPABASE_URL", "SUPABASE_URL"),
        "the Supabase project's URL (recorded; storage goes through database_url)",
    ),
    Setting(
        "supabase_key",
        "text",
        None,
        ("MATREC_SUPABASE_KEY", "SUPABASE_KEY"),
        "the Supabase project's API key",
        secret=True,
    ),
    Setting(
        "database_url",
        "text",
        None,
        ("MATREC_DATABASE_URL", "SUPABASE_DB_URL"),
        "the embedded coordinator's database, e.g. Supabase's Postgres connection string; "
        "unset: SQLite under base_dir",
    ),
    Setting(
        "base_dir",
        "path",
        DEFAULT_BASE_DIR,
        ("MATREC_BASE_DIR",),
        "the embedded cluster, reports and the active-learning project live here",
    ),
    Setting(
        "num_workers",
        "count",
        4,
        ("MATREC_NUM_WORKERS", "NUM_WORKERS"),
        "worker processes: ranks of a distributed fine-tune, parallel HPO trials",
    ),
    Setting(
        "visualization_level",
        "choice",
        "standard",
        ("MATREC_VISUALIZATION_LEVEL", "VISUALIZATION_LEVEL"),
        "what training reports and its reports show",
        choices=VISUALIZATION_LEVELS,
    ),
    Setting(
        "enable_transfer_learning",
        "flag",
        True,
        ("MATREC_ENABLE_TRANSFER_LEARNING", "ENABLE_TRANSFER_LEARNING"),
        "start from pretrained_path when one is given",
    ),
    Setting(
        "enable_hyperparameter_optimization",
        "flag",
        False,
        ("MATREC_ENABLE_HYPERPARAMETER_OPT", "ENABLE_HYPERPARAMETER_OPT"),
        "search hyperparameters before the final training",
    ),
    Setting(
        "enable_active_learning",
        "flag",
        True,
        ("MATREC_ENABLE_ACTIVE_LEARNING", "ENABLE_ACTIVE_LEARNING"),
        "allow selecting samples for labelling and retraining from feedback",
    ),
    Setting(
        "use_distributed",
        "flag",
        False,
        ("MATREC_USE_DISTRIBUTED",),
        "train with num_workers ranks (Horovod, else torch.distributed)",
    ),
    Setting(
        "device",
        "choice",
        "auto",
        ("MATREC_DEVICE",),
        "auto (a GPU where the agents have one), cpu or cuda",
        choices=DEVICES,
    ),
    Setting(
        "pretrained_path",
        "path",
        None,
        ("MATREC_PRETRAINED_PATH",),
        "local weights transfer learning starts from (a matrec model or a state_dict)",
    ),
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class MatrecConfig:
    """The effective configuration; build it with `load_config`. `sources` maps each setting to
    where its value came from ("argument", "env NAME", "file PATH" or "default");
    `config_file` is the file that was read (None: none)."""

    coordinator: str | None = None
    token: str | None = None
    supabase_url: str | None = None
    supabase_key: str | None = None
    database_url: str | None = None
    base_dir: Path = field(default_factory=lambda: absolute_path(DEFAULT_BASE_DIR))
    num_workers: int = 4
    visualization_level: str = "standard"
    enable_transfer_learning: bool = True
    enable_hyperparameter_optimization: bool = False
    enable_active_learning: bool = True
    use_distributed: bool = False
    device: str = "auto"
    pretrained_path: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    config_file: Path | None = field(default=None, compare=False)

    def shown(self, name: str) -> str:
        """A setting's value as `describe` shows it: secrets masked, unset as ""."""
        value = getattr(self, name)
        if value is None:
            return ""
        if SETTINGS_BY_NAME[name].secret:
            return MASK
        if name == "database_url":
            return mask_url_password(str(value))
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value, source) for every setting, secrets masked, then a last row
        ("config_file", the file read or "", its source) — what `matrec-ctl config show`
        prints."""
        rows = [(s.name, self.shown(s.name), self.sources.get(s.name, "default")) for s in SETTINGS]
        rows.append(
            (
                "config_file",
                "" if self.config_file is None else str(self.config_file),
                self.sources.get("config_file", "default"),
            )
        )
        return rows

    def __repr__(self) -> str:
        # The generated repr would print the secrets.
        shown = ", ".join(
            f"{s.name}={self.shown(s.name)!r}"
            if s.secret or s.name == "database_url"
            else f"{s.name}={getattr(self, s.name)!r}"
            for s in SETTINGS
        )
        return f"MatrecConfig({shown})"


def load_config(
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> MatrecConfig:
    """The effective configuration: `overrides` (setting names; None = not given) over the
    environment (`environ`, default os.environ) over the config file over the defaults.
    Raises ConfigError naming the bad source and the accepted values, and ValueError for an
    unknown setting name."""
    env = os.environ if environ is None else environ
    unknown = sorted(set(overrides) - set(SETTINGS_BY_NAME))
    if unknown:
        raise ValueError(
            f"unknown setting {', '.join(unknown)}; known: {', '.join(SETTINGS_BY_NAME)}"
        )
    path, path_source = _config_file_path(config_file, env)
    file_values = _read_config_file(path, required=path_source != "default")
    if path is not None and not path.is_file():
        path = None

    values: dict[str, Any] = {}
    sources: dict[str, str] = {"config_file": path_source}
    for setting in SETTINGS:
        values[setting.name], sources[setting.name] = _resolve(
            setting, overrides.get(setting.name), env, file_values, path
        )
    return MatrecConfig(**values, sources=sources, config_file=path)


def configured(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting as the precedence gives it when no argument sets it: its environment
    variables, else the config file, else its default. For callers that need only the
    coordinator's address or the token, so that a bad value of another setting cannot stop
    them."""
    env = os.environ if environ is None else environ
    path, path_source = _config_file_path(None, env)
    file_values = _read_config_file(path, required=path_source != "default")
    return _resolve(SETTINGS_BY_NAME[name], None, env, file_values, path)[0]


def _resolve(
    setting: Setting,
    explicit: Any,
    env: Mapping[str, str],
    file_values: Mapping[str, Any],
    path: Path | None,
) -> tuple[Any, str]:
    """A setting's typed value and where it came from: argument, environment, file, default."""
    env_name = next((name for name in setting.env if env.get(name, "").strip()), None)
    if explicit is not None:
        return _parse(setting, explicit, f"argument {setting.name}"), "argument"
    if env_name is not None:
        return _parse(setting, env[env_name], env_name), f"env {env_name}"
    if setting.name in file_values:
        where = f"config file {path}, key {setting.name}"
        base = path.parent if path is not None else None
        return _parse(setting, file_values[setting.name], where, base), f"file {path}"
    return _parse(setting, setting.default, "default"), "default"


def mask_url_password(url: str) -> str:
    """`url` with the password in its user part and any ``password=`` query value masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    masked = url
    if parts.password:
        user_part, _, host_part = parts.netloc.rpartition("@")
        user = user_part.split(":", 1)[0]
        masked = masked.replace(f"//{parts.netloc}", f"//{user}:{MASK}@{host_part}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            pairs = [(k, MASK if k.lower() == "password" else v) for k, v in pairs]
            masked = masked.replace(f"?{parts.query}", f"?{urlencode(pairs, safe='*')}", 1)
    return masked


def _config_file_path(
    config_file: str | Path | None, env: Mapping[str, str]
) -> tuple[Path | None, str]:
    if config_file is not None:
        return absolute_path(config_file), "argument"
    named = env.get(CONFIG_ENV, "").strip()
    if named:
        return absolute_path(named), f"env {CONFIG_ENV}"
    home = env.get("HOME", "").strip()
    root = Path(home) if home else Path.home()
    return root / ".matrec" / "config.toml", "default"


def _read_config_file(path: Path | None, *, required: bool) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        if required:
            raise ConfigError(
                f"config file {path}",
                f"no such file (named by {CONFIG_ENV} or the config_file argument); "
                "create it or unset the name",
            )
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}", f"not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}", f"cannot be read ({exc})") from None
    unknown = sorted(set(document) - set(SETTINGS_BY_NAME))
    if unknown:
        raise ConfigError(
            f"config file {path}, key {unknown[0]}",
            f"unknown setting; known keys: {', '.join(SETTINGS_BY_NAME)}",
        )
    return document


def _parse(setting: Setting, raw: Any, where: str, base: Path | None = None) -> Any:
    """The typed value of `raw` (a string from the environment, a TOML value, or an argument).
    A path is made absolute here, against `base` (a config file's folder) or else the working
    directory, so that no relative path reaches the embedded cluster's processes."""
    if raw is None:
        return None
    if setting.kind == "flag":
        return _flag(raw, where)
    if setting.kind == "count":
        return _count(raw, where)
    if not isinstance(raw, str | Path):
        raise ConfigError(where, f"expected a string, got {raw!r}")
    text = str(raw).strip()
    if setting.kind == "choice":
        lowered = text.lower()
        if lowered not in setting.choices:
            raise ConfigError(
                where, f"{text!r} is not one of the accepted values: {', '.join(setting.choices)}"
            )
        return lowered
    if not text:
        return None
    if setting.kind == "path":
        return absolute_path(text, base)
    return text


def _flag(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower() if isinstance(raw, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        where, f"{raw!r} is not a boolean; accepted values: {', '.join(_TRUE + _FALSE)}"
    )


def _count(raw: Any, where: str) -> int:
    accepted = f"a whole number from 1 to {MAX_NUM_WORKERS}"
    if isinstance(raw, bool):
        raise ConfigError(where, f"{raw!r} is not {accepted}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
    else:
        raise ConfigError(where, f"{raw!r} is not {accepted}")
    if not 1 <= value <= MAX_NUM_WORKERS:
        raise ConfigError(where, f"{value} is out of range; expected {accepted}")
    return value
