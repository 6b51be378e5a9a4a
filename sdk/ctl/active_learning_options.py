"""`matrec-ctl active-learning`: the options both of its forms share (strategies, ids, --json)
and the assembly of a project spec from a spec file and the `create` flags.

Kept free of the SDK's grpc and protobuf, like every module `matrec-ctl --help` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

#: Paths of a project spec that become absolute (against the cwd, or the spec file's folder).
PATH_KEYS = ("dataset_path", "pool_path")


class Strategy(StrEnum):
    """The strategies of `matrec.common.active_learning.selection.STRATEGIES` (a test keeps
    them equal; importing that module here would load numpy for every `--help`)."""

    random = "random"
    least_confidence = "least_confidence"
    margin = "margin"
    entropy = "entropy"
    bald = "bald"
    coreset = "coreset"
    cluster_margin = "cluster_margin"
    hybrid = "hybrid"


class FileFormat(StrEnum):
    csv = "csv"
    json = "json"


ProjectArgument = Annotated[
    str, typer.Argument(metavar="PROJECT", help="Project id (alp-…), as `create` prints it.")
]
BatchArgument = Annotated[
    str, typer.Argument(metavar="BATCH", help="Batch id (alb-…), as `select` prints it.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@dataclass(frozen=True)
class ProjectFlags:
    """The `create` options; None means "not given" (the spec file's value or the default)."""

    name: str | None = None
    dataset: Path | None = None
    pool: Path | None = None
    model_job: str | None = None
    strategy: str | None = None
    mc_dropout_passes: int | None = None
    feedback_threshold: int | None = None
    max_age: float | None = None
    uncertainty_threshold: float | None = None
    drift: bool | None = None
    drift_alpha: float | None = None
    auto_retrain: bool | None = None
    retrain_epochs: int | None = None


def load_project_file(path: Path) -> dict[str, Any]:
    """A project spec file (JSON, or YAML); its paths are resolved against the file's folder."""
    from matrec.sdk.ctl.spec_input import read_spec_file, resolve_paths

    data = read_spec_file(path, "--spec")
    resolve_paths(data, PATH_KEYS, path.parent)
    return data


def _section(spec: dict[str, Any], key: str) -> dict[str, Any]:
    from matrec.sdk.errors import InvalidSpecError

    section = spec.setdefault(key, {})
    if not isinstance(section, dict):
        raise InvalidSpecError(key, "must be a JSON object")
    return section


def build_project_spec(spec_file: Path | None, flags: ProjectFlags) -> dict[str, Any]:
    """The spec from `spec_file` (if any), overridden by the flags that were given. The three
    things every project needs are checked here, naming the option that gives them."""
    from matrec.sdk.ctl.spec_input import absolute
    from matrec.sdk.errors import InvalidSpecError

    spec = load_project_file(spec_file) if spec_file is not None else {}
    cwd = Path.cwd()
    top: dict[str, Any] = {
        "name": flags.name,
        "dataset_path": None if flags.dataset is None else absolute(flags.dataset, cwd),
        "pool_path": None if flags.pool is None else absolute(flags.pool, cwd),
        "model_job_id": flags.model_job,
        "strategy": flags.strategy,
        "mc_dropout_passes": flags.mc_dropout_passes,
    }
    spec.update({key: value for key, value in top.items() if value is not None})
    triggers = {
        "feedback_threshold": flags.feedback_threshold,
        "max_age_seconds": flags.max_age,
        "uncertainty_threshold": flags.uncertainty_threshold,
        "drift": flags.drift,
        "drift_alpha": flags.drift_alpha,
        "auto_retrain": flags.auto_retrain,
    }
    given = {key: value for key, value in triggers.items() if value is not None}
    if given:
        _section(spec, "triggers").update(given)
    if flags.retrain_epochs is not None:
        _section(spec, "retrain")["epochs"] = flags.retrain_epochs
    for key, option in (
        ("dataset_path", "--dataset"),
        ("pool_path", "--pool"),
        ("model_job_id", "--model-job"),
    ):
        if not spec.get(key):
            raise InvalidSpecError(key, f"required: pass {option} (or set {key} in --spec)")
    return spec
