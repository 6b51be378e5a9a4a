"""Turn `matrec-ctl submit` input (a spec file and/or flags) into a raw job spec dict; and the
one reader of spec files (JSON or YAML) for jobs, studies (`hpo`) and projects
(`active-learning`).

The dict is validated afterwards by `Client.submit_job`, so these functions only assemble it.
Relative paths become absolute here, because the coordinator and agents resolve them elsewhere:
paths given as flags are relative to the current directory, paths in a spec file to that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrec.common.paths import absolute_path
from matrec.sdk.errors import InvalidSpecError

_PATH_KEYS = ("dataset_path", "pretrained_path")

#: `--augmentation` values that name a preset; anything else is a comma-separated list.
AUGMENTATION_PRESETS = ("none", "light", "strong")


@dataclass(frozen=True)
class SubmitFlags:
    """The `submit` options; None means "not given" (the file's value or the default stays)."""

    dataset: Path | None = None
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    image_size: int | None = None
    pretrained: Path | None = None
    pretrained_weights: str | None = None
    model_type: str | None = None
    strategy: str | None = None
    trainable_blocks: int | None = None
    augmentation: str | None = None
    optimizer: str | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    early_stopping: int | None = None
    grad_clip: float | None = None
    name: str | None = None
    max_attempts: int | None = None
    cpus: float | None = None
    gpus: int | None = None
    assignments: list[str] = field(default_factory=list)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"epochs=3"`` -> ("epochs", 3). The value is JSON if it parses as JSON, else a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InvalidSpecError("--set", f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_augmentation(text: str) -> str | list[str]:
    """``"strong"`` -> "strong"; ``"hflip, rotation"`` -> ["hflip", "rotation"]. The names are
    checked later, with the rest of the spec."""
    value = text.strip()
    if value in AUGMENTATION_PRESETS:
        return value
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise InvalidSpecError(
            "--augmentation",
            f"expected a preset ({', '.join(AUGMENTATION_PRESETS)}) or a comma-separated list "
            f"of transforms, got {text!r}",
        )
    return names


def read_spec_file(path: Path, option: str) -> dict[str, Any]:
    """A JSON (or, with PyYAML installed, YAML) file holding a mapping: a job, study or project
    spec, or a search space. Errors are InvalidSpecError naming `option` (the flag that gave
    the file)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpecError(option, f"cannot read {str(path)!r}: {exc.strerror}") from None
    data: Any
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InvalidSpecError(
                option, "reading YAML needs PyYAML (pip install pyyaml); or write it as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidSpecError(option, f"{path}: invalid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSpecError(option, f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidSpecError(
            option, f"{path}: expected a mapping (a JSON object) at the top level"
        )
    return data


def resolve_paths(section: Any, keys: tuple[str, ...], base: Path) -> None:
    """Make the relative paths under `keys` of `section` (when it is a mapping) absolute
    against `base`, the spec file's folder."""
    if isinstance(section, dict):
        for key in keys:
            if isinstance(section.get(key), str):
                section[key] = absolute(Path(section[key]), base)


def absolute(path: Path, base: Path) -> str:
    """`path` (with ~ expanded) made absolute against `base` when it is relative."""
    return str(absolute_path(path, base))


def load_spec_file(path: Path) -> dict[str, Any]:
    """A job spec file (`--file`); its config's paths are resolved against its folder."""
    data = read_spec_file(path, "--file")
    resolve_paths(data.get("config"), _PATH_KEYS, path.parent)
    return data


def build_spec(file: Path | None, flags: SubmitFlags) -> dict[str, Any]:
    """The spec from `file` (if any), overridden by the flags that were given, then by --set."""
    spec: dict[str, Any] = load_spec_file(file) if file is not None else {}
    spec.setdefault("kind", "finetune")
    config: dict[str, Any] = spec.setdefault("config", {})
    if not isinstance(config, dict):
        raise InvalidSpecError("config", "must be a mapping of settings")
    cwd = Path.cwd()
    config_flags = {
        "dataset_path": None if flags.dataset is None else absolute(flags.dataset, cwd),
        "model": flags.model,
        "epochs": flags.epochs,
        "batch_size": flags.batch_size,
        "learning_rate": flags.learning_rate,
        "image_size": flags.image_size,
        "pretrained_path": None if flags.pretrained is None else absolute(flags.pretrained, cwd),
        "pretrained_weights": flags.pretrained_weights,
        "model_type": flags.model_type,
        "strategy": flags.strategy,
        "trainable_blocks": flags.trainable_blocks,
        "augmentation": (
            None if flags.augmentation is None else parse_augmentation(flags.augmentation)
        ),
        "optimizer": flags.optimizer,
        "schedule": flags.schedule,
        "warmup_epochs": flags.warmup_epochs,
        "label_smoothing": flags.label_smoothing,
        "early_stopping_patience": flags.early_stopping,
        "grad_clip_norm": flags.grad_clip,
    }
    config.update({key: value for key, value in config_flags.items() if value is not None})
    config.update(parse_assignment(text) for text in flags.assignments)
    if flags.name is not None:
        spec["name"] = flags.name
    if flags.max_attempts is not None:
        spec["max_attempts"] = flags.max_attempts
    resources_flags = {"cpus": flags.cpus, "gpus": flags.gpus}
    if any(value is not None for value in resources_flags.values()):
        resources = spec.setdefault("resources", {})
        if not isinstance(resources, dict):
            raise InvalidSpecError("resources", "must be a mapping of gpus, cpus, memory_bytes")
        resources.update(
            {key: value for key, value in resources_flags.items() if value is not None}
        )
    return spec
