"""`optimize_hyperparameters`: the seed's one-call hyperparameter search.

>>> from matrec.sdk import optimize_hyperparameters
>>> result = optimize_hyperparameters(
...     "/data/materials", model_type="hybrid", max_trials=20, max_parallel=4,
...     hp_space={"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True}},
...     pruner="asha", epochs=9)
>>> result.best_params, result.best_value

Each trial is a `finetune` job; the coordinator runs the study (asks the search algorithm,
schedules trials on free agents, prunes, and survives its own restarts). With a coordinator
(`coordinator`, else $MATREC_COORDINATOR) the study runs on that cluster; without one, a local
cluster (a coordinator and `max_parallel` agents as processes of this machine) is started for
the call and stopped after it, its files kept under `workdir`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrec.common.specs import SpecError
from matrec.common.studies import parse_study_spec
from matrec.sdk.errors import InvalidSpecError, MatrecError
from matrec.sdk.session import open_session

if TYPE_CHECKING:
    from matrec.sdk.client import Client
    from matrec.sdk.types import Study, Trial

#: The seed's example space (dropout_rate and dense_units shape the classification head).
DEFAULT_HP_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
    "dropout_rate": {"type": "float", "min": 0.1, "max": 0.5},
    "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64},
}

StudyCallback = Callable[["Study"], None]


class StudyFailedError(MatrecError):
    """The study ended without a completed trial (or was cancelled)."""

    def __init__(self, study_id: str, state: str, error: str) -> None:
        super().__init__(f"study {study_id} {state}: {error.strip() or 'no error text'}")
        self.study_id = study_id
        self.state = state


@dataclass(frozen=True)
class HPOResult:
    """A finished study: the best trial's values and every trial (with its curve)."""

    study_id: str
    objective: str
    direction: str
    best_params: dict[str, Any]
    best_value: float
    best_job_id: str
    trials: list[Trial]
    study: Study

    @property
    def counts(self) -> dict[str, int]:
        """Trials by state ("completed", "pruned", "failed", ...)."""
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts


def optimize_hyperparameters(
    dataset_path: str | Path,
    model_type: str = "cnn",
    hp_space: Mapping[str, Mapping[str, Any]] | None = None,
    max_trials: int = 10,
    *,
    algorithm: str = "mtpe",
    max_parallel: int = 2,
    objective: str = "val/accuracy",
    direction: str | None = None,
    pruner: str | Mapping[str, Any] | None = None,
    epochs: int = 5,
    seed: int = 0,
    n_startup_trials: int | None = None,
    name: str = "hpo",
    resources: Mapping[str, Any] | None = None,
    coordinator: str | None = None,
    workdir: str | Path | None = None,
    timeout: float | None = None,
    progress: StudyCallback | None = None,
    **config: Any,
) -> HPOResult:
    """Search `hp_space` (the seed's format; default DEFAULT_HP_SPACE) for the finetune settings
    that optimise `objective` on the ImageFolder dataset at `dataset_path`.

    `algorithm`: "mtpe" (Optuna's multivariate Tree-structured Parzen Estimator, the
    default), "tpe" (hyperopt's TPE), "random", "grid" or "anneal"; mtpe, tpe and anneal
    sample at random for their first `n_startup_trials` trials
    (default: a quarter of max_trials, 2 to 10). `pruner`: None, "asha", "median", or a dict such as
    ``{"kind": "asha", "min_resource": 1, "reduction_factor": 3}`` (resources are epochs).
    Every other finetune setting (model, strategy, batch_size, image_size, ...) goes in
    `config` under its spec name and is the same for every trial.

    `progress(study)` is called with the study each time it changes. `timeout` (seconds) raises
    TimeoutError; the study keeps running on a cluster. Raises InvalidSpecError (naming the
    field, e.g. ``search_space.learning_rate.min``) before anything runs, and StudyFailedError
    when no trial completed.
    """
    raw_config = {
        "dataset_path": str(Path(dataset_path).expanduser().resolve()),
        "model_type": model_type,
        "epochs": epochs,
        **config,
    }
    trial: dict[str, Any] = {"name": name, "kind": "finetune", "config": raw_config}
    if resources is not None:
        trial["resources"] = dict(resources)
    spec: dict[str, Any] = {
        "name": name,
        "trial": trial,
        "search_space": {k: dict(v) for k, v in (hp_space or DEFAULT_HP_SPACE).items()},
        "algorithm": algorithm,
        "objective": objective,
        "direction": direction,
        "max_trials": max_trials,
        "max_parallel": max_parallel,
        "seed": seed,
        "n_startup_trials": n_startup_trials,
    }
    if pruner is not None:
        spec["pruner"] = {"kind": pruner} if isinstance(pruner, str) else dict(pruner)
    try:
        parse_study_spec(spec)
    except SpecError as exc:
        raise InvalidSpecError(exc.field, exc.message) from None

    with open_session(
        coordinator, workdir, agents=max_parallel, temp_prefix="matrec-hpo-"
    ) as session:
        return run_study(session.client, spec, progress, timeout)


def run_study(
    client: Client,
    spec: dict[str, Any],
    progress: StudyCallback | None = None,
    timeout: float | None = None,
) -> HPOResult:
    """Create the study of `spec` and wait for its end (`progress` gets each change); its
    result, or StudyFailedError when no trial completed. Integer parameters of the search
    space come back as ints (a protobuf Struct sends every number as a float)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    study = client.create_study(spec)
    if progress is not None:
        for update in client.watch_study(study.id, timeout=timeout):
            progress(update)
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    study = client.wait_study(study.id, timeout=remaining)
    best = study.best
    if best is None or best.objective_value is None:
        raise StudyFailedError(study.id, study.state, study.error)
    return HPOResult(
        study_id=study.id,
        objective=study.objective,
        direction=str(study.spec.get("direction")),
        best_params=_typed_params(best.params, spec.get("search_space") or {}),
        best_value=best.objective_value,
        best_job_id=best.job_id,
        trials=study.trials,
        study=study,
    )


def _typed_params(
    params: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for key, value in params.items():
        if space.get(key, {}).get("type") == "int" and isinstance(value, float):
            typed[key] = round(value)
        else:
            typed[key] = value
    return typed
