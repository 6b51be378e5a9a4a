"""`StudyReport`: what a report says about one hyperparameter study, built from the SDK's `Study`.

A study report holds the study's identity, state, settings (algorithm, objective and direction,
pruner, search space) and times, the count of trials in each state, the best trial as the
coordinator chose it, and every trial best first (`Study.ranked`) with its parameters, objective,
pruning point and intermediate values (the objective per resource, epochs for fine-tunes). Every
number is the study's own; nothing is recomputed except the counts. `to_json_dict` gives the
``study_report`` document that ``report.schema.json`` describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from matrec.sdk.reports.model import SCHEMA_VERSION, _iso, _plain
from matrec.sdk.types import TRIAL_STATES, Study, Trial

PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
#: The settings each pruner uses (the stored spec holds every setting, used or not).
PRUNER_SETTINGS: dict[str, tuple[str, ...]] = {
    "asha": ("min_resource", "reduction_factor"),
    "median": ("min_resource", "min_trials"),
}


@dataclass(frozen=True)
class ParamInfo:
    """One hyperparameter as the search space defines it; a parameter that trials hold but the
    space does not name gets its type from the values ("categorical" unless all are numbers)."""

    name: str
    type: str
    log: bool
    low: float | None
    high: float | None
    choices: list[Any]

    @property
    def categorical(self) -> bool:
        return self.type == "categorical"


@dataclass(frozen=True)
class StudyTrial:
    number: int
    job_id: str
    state: str
    params: dict[str, Any]
    #: Completed: the final objective; pruned: the last value before it was stopped.
    objective_value: float | None
    pruned_rung: int | None
    pruned_resource: int | None
    error: str
    job_state: str
    created_at: datetime | None
    finished_at: datetime | None
    #: (resource, value) pairs ordered by resource.
    intermediate: list[tuple[int, float]]

    @property
    def state_label(self) -> str:
        """The state, with where a pruned trial was stopped ("pruned (rung 1, resource 2)")."""
        if self.state != "pruned":
            return self.state
        where = []
        if self.pruned_rung is not None:
            where.append(f"rung {self.pruned_rung}")
        if self.pruned_resource is not None:
            where.append(f"resource {self.pruned_resource}")
        return f"pruned ({', '.join(where)})" if where else "pruned"


@dataclass(frozen=True)
class StudyReport:
    study_id: str
    name: str
    state: str
    error: str
    created_at: datetime | None
    finished_at: datetime | None
    algorithm: str
    objective: str
    #: "maximize" or "minimize".
    direction: str
    #: The pruner's settings as stored ({"kind": "none"} without one).
    pruner: dict[str, Any]
    trial_kind: str
    max_trials: int | None
    max_parallel: int | None
    #: The validated study spec as stored.
    spec: dict[str, Any]
    #: One entry per parameter: the search space's order, then any other parameter by name.
    params: list[ParamInfo]
    #: Best first (`Study.ranked`).
    trials: list[StudyTrial]
    best_trial_number: int | None

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def best(self) -> StudyTrial | None:
        for trial in self.trials:
            if trial.number == self.best_trial_number:
                return trial
        return None

    @property
    def by_number(self) -> list[StudyTrial]:
        return sorted(self.trials, key=lambda trial: trial.number)

    @property
    def counts(self) -> dict[str, int]:
        """Trials per state: every state of TRIAL_STATES (zeros included), then any other."""
        counts = dict.fromkeys(TRIAL_STATES, 0)
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts

    @property
    def pruner_label(self) -> str:
        """ "none", or the kind with its settings ("asha (min_resource=1, reduction_factor=2)")."""
        kind = str(self.pruner.get("kind") or "none")
        relevant = PRUNER_SETTINGS.get(kind)
        settings = [
            f"{key}={value}"
            for key, value in self.pruner.items()
            if key != "kind" and (relevant is None or key in relevant)
        ]
        if kind == "none" or not settings:
            return kind
        return f"{kind} ({', '.join(settings)})"

    def to_json_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "schema_version": SCHEMA_VERSION,
            "type": "study_report",
            "study": {
                "id": self.study_id,
                "name": self.name,
                "state": self.state,
                "error": self.error,
                "created_at": _iso(self.created_at),
                "finished_at": _iso(self.finished_at),
                "algorithm": self.algorithm,
                "objective": self.objective,
                "direction": self.direction,
                "pruner": _plain(self.pruner),
                "trial_kind": self.trial_kind,
                "max_trials": self.max_trials,
                "max_parallel": self.max_parallel,
                "search_space": _plain(self.spec.get("search_space", {})),
                "spec": _plain(self.spec),
            },
            "trial_counts": self.counts,
            "best_trial": None
            if best is None
            else {
                "number": best.number,
                "objective_value": best.objective_value,
                "params": _plain(best.params),
                "job_id": best.job_id,
            },
            "trials": [_trial_json(trial) for trial in self.trials],
        }


def build_study_report(study: Study) -> StudyReport:
    """The report of `study` as the SDK returned it (`Client.get_study`)."""
    spec = dict(study.spec)
    pruner = spec.get("pruner")
    trial_spec = spec.get("trial")
    return StudyReport(
        study_id=study.id,
        name=study.name,
        state=study.state,
        error=study.error,
        created_at=study.created_at,
        finished_at=study.finished_at,
        algorithm=str(spec.get("algorithm") or "tpe"),
        objective=str(spec.get("objective") or ""),
        direction="maximize" if study.maximize else "minimize",
        pruner=dict(pruner) if isinstance(pruner, dict) else {"kind": "none"},
        trial_kind=str(trial_spec.get("kind", "")) if isinstance(trial_spec, dict) else "",
        max_trials=_int_or_none(spec.get("max_trials")),
        max_parallel=_int_or_none(spec.get("max_parallel")),
        spec=spec,
        params=param_infos(spec.get("search_space"), study.trials),
        trials=[_study_trial(trial) for trial in study.ranked()],
        best_trial_number=study.best_trial_number,
    )


def param_infos(space: Any, trials: list[Trial]) -> list[ParamInfo]:
    """The parameters of the search space `space` (in its order), then those only trials name."""
    infos: list[ParamInfo] = []
    if isinstance(space, dict):
        for name, definition in space.items():
            infos.append(_param_info(str(name), definition if isinstance(definition, dict) else {}))
    known = {info.name for info in infos}
    extra = sorted({name for trial in trials for name in trial.params} - known)
    for name in extra:
        values = [trial.params[name] for trial in trials if name in trial.params]
        numeric = all(_is_number(value) for value in values)
        infos.append(
            ParamInfo(
                name=name,
                type="float" if numeric else "categorical",
                log=False,
                low=None,
                high=None,
                choices=[] if numeric else _distinct(values),
            )
        )
    return infos


def _param_info(name: str, definition: dict[str, Any]) -> ParamInfo:
    kind = str(definition.get("type", "float"))
    if kind not in PARAM_TYPES:
        kind = "float"
    choices = definition.get("choices")
    return ParamInfo(
        name=name,
        type=kind,
        log=bool(definition.get("log", False)) and kind != "categorical",
        low=_float_or_none(definition.get("min")),
        high=_float_or_none(definition.get("max")),
        choices=list(choices) if kind == "categorical" and isinstance(choices, list) else [],
    )


def _study_trial(trial: Trial) -> StudyTrial:
    points: dict[int, float] = {}
    for value in sorted(trial.intermediate, key=lambda v: (v.resource, v.step)):
        points[value.resource] = float(value.value)  # a resource reported twice: the last wins
    return StudyTrial(
        number=trial.number,
        job_id=trial.job_id,
        state=trial.state,
        params=dict(trial.params),
        objective_value=trial.objective_value,
        pruned_rung=trial.pruned_rung,
        pruned_resource=trial.pruned_resource,
        error=trial.error,
        job_state=trial.job_state,
        created_at=trial.created_at,
        finished_at=trial.finished_at,
        intermediate=sorted(points.items()),
    )


def _trial_json(trial: StudyTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state,
        "params": _plain(trial.params),
        "objective_value": trial.objective_value,
        "pruned_rung": trial.pruned_rung,
        "pruned_resource": trial.pruned_resource,
        "error": trial.error,
        "job_id": trial.job_id,
        "job_state": trial.job_state,
        "created_at": _iso(trial.created_at),
        "finished_at": _iso(trial.finished_at),
        "intermediate": [[resource, value] for resource, value in trial.intermediate],
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float_or_none(value: Any) -> float | None:
    if _is_number(value) and math.isfinite(value):
        return float(value)
    return None


def _int_or_none(value: Any) -> int | None:
    return int(value) if _is_number(value) else None


def _distinct(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if not any(value == other and type(value) is type(other) for other in seen):
            seen.append(value)
    return seen
