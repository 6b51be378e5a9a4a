"""Hyperparameter studies: the typed, validated shape of a search space and of a study.

A study runs one job per trial. Its `trial` template is an ordinary job spec; each trial's job
is that spec with the sampled values written into its config. The SDK validates a study before
sending it and the coordinator validates it again (INVALID_ARGUMENT naming the field), both with
these models. Importable without torch, numpy or hyperopt.

The search space uses the seed's format::

    {"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": true},
     "dense_units": {"type": "int", "min": 64, "max": 512, "step": 64},
     "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}}
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from matrec.common.specs import (
    JOB_KINDS,
    OBJECTIVES,
    JobSpecModel,
    SpecError,
    parse_job_spec,
    spec_error,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ALGORITHMS = ("mtpe", "tpe", "random", "grid", "anneal")
PRUNERS = ("none", "asha", "median")
MAX_GRID_POINTS = 100_000

Scalar = str | int | float | bool


class FloatParam(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["float"] = "float"
    min: float
    max: float
    log: bool = False
    step: float | None = Field(default=None, gt=0.0, description="Values are min + k * step.")

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.log and self.min <= 0:
            raise ValueError(f"a log-scaled range needs min > 0 (got {self.min:g})")
        return self


class IntParam(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int"] = "int"
    min: int
    max: int
    step: int = Field(default=1, ge=1, description="Values are min + k * step.")
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.log and self.min <= 0:
            raise ValueError(f"a log-scaled range needs min > 0 (got {self.min})")
        return self

    @property
    def values(self) -> range:
        return range(self.min, self.max + 1, self.step)


class CategoricalParam(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["categorical"] = "categorical"
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError("choices must be distinct")
        return self


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES: dict[str, type[BaseModel]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


class PrunerSpec(BaseModel):
    """Early stopping of unpromising trials. The resource is the number of times a trial has
    reported the objective (epochs, for finetune jobs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "asha", "median"] = "none"
    min_resource: int = Field(
        default=1, ge=1, description="asha: the first rung; median: reports before any pruning."
    )
    reduction_factor: int = Field(
        default=3, ge=2, description="asha: rungs at min_resource * rf**k; 1/rf go on."
    )
    min_trials: int = Field(
        default=3, ge=1, description="median: trials to compare against before pruning."
    )


class StudySpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", max_length=200)
    trial: JobSpecModel
    search_space: dict[str, Param]
    algorithm: Literal["mtpe", "tpe", "random", "grid", "anneal"] = "mtpe"
    objective: str = ""
    direction: Literal["maximize", "minimize"] | None = None
    max_trials: int = Field(default=10, ge=1, le=10_000)
    max_parallel: int = Field(default=2, ge=1, le=1_000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    grid_points: int = Field(default=5, ge=2, le=1_000, description="grid: points per float.")
    n_startup_trials: int | None = Field(
        default=None, ge=0, description="mtpe/tpe/anneal: random trials before the model is used."
    )
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    tpe_gamma: float = Field(
        default=1.0,
        gt=0.0,
        le=10.0,
        description="tpe: the model of good configurations is fitted to the best "
        "ceil(tpe_gamma * sqrt(n)) of n trials. hyperopt's default is 0.25 (2 of 60 trials); "
        "1.0 (8 of 60) reached better optima in benchmarks/hpo_compare.py.",
    )

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def startup_trials(self) -> int:
        if self.n_startup_trials is not None:
            return self.n_startup_trials
        return min(10, max(2, self.max_trials // 4))


def grid_size(space: dict[str, Param], grid_points: int) -> int:
    size = 1
    for param in space.values():
        if isinstance(param, FloatParam):
            size *= len(float_grid(param, grid_points))
        elif isinstance(param, IntParam):
            size *= len(param.values)
        else:
            size *= len(param.choices)
    return size


def float_step_count(param: FloatParam) -> int:
    """How many values min + k * step a stepped float has within [min, max]."""
    assert param.step is not None
    return math.floor((param.max - param.min) / param.step + 1e-9) + 1


def float_grid(param: FloatParam, points: int) -> list[float]:
    """The grid values of a float: every step when it has one, else `points` spaced values."""
    if param.min == param.max:
        return [param.min]
    if param.step is not None:
        return [param.min + k * param.step for k in range(float_step_count(param))]
    if param.log:
        lo, hi = math.log(param.min), math.log(param.max)
        return [math.exp(lo + (hi - lo) * k / (points - 1)) for k in range(points)]
    return [param.min + (param.max - param.min) * k / (points - 1) for k in range(points)]


def parse_search_space(raw: Any) -> dict[str, Param]:
    """Validate a search space; SpecError names the parameter (``search_space.NAME.FIELD``)."""
    if not isinstance(raw, dict) or not raw:
        raise SpecError(
            "search_space",
            "empty; give at least one parameter, e.g. "
            '{"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": true}}',
        )
    space: dict[str, Param] = {}
    for name, definition in raw.items():
        field = f"search_space.{name}"
        if not isinstance(definition, dict):
            raise SpecError(field, "must be an object with a type (float, int or categorical)")
        kind = definition.get("type")
        model = PARAM_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise SpecError(
                f"{field}.type", f"unknown type {kind!r}; use one of: {', '.join(PARAM_TYPES)}"
            )
        try:
            space[name] = model.model_validate(definition)  # type: ignore[assignment]
        except ValidationError as exc:
            raise spec_error(exc, field) from None
    return space


def parse_study_spec(raw: dict[str, Any]) -> StudySpecModel:
    """Validate a whole study: its fields, its search space against the trial's job kind, and
    its objective. Raises SpecError naming the field. Returns the spec with the objective and
    direction filled in."""
    if not isinstance(raw, dict):
        raise SpecError("study", "must be an object")
    raw = dict(raw)
    space = parse_search_space(raw.get("search_space"))
    trial_raw = raw.get("trial")
    if not isinstance(trial_raw, dict):
        raise SpecError("trial", "required: the job spec every trial runs (kind, config, ...)")
    try:
        trial_spec, _ = parse_job_spec(trial_raw)
    except SpecError as bad:
        raise SpecError(f"trial.{bad.field}", bad.message) from None
    try:
        spec = StudySpecModel.model_validate({**raw, "search_space": space})
    except ValidationError as exc:
        raise spec_error(exc) from None
    _check_space_fits_kind(trial_spec, space)
    objective, direction = _objective(trial_spec.kind, spec.objective, spec.direction)
    if spec.algorithm == "grid":
        size = grid_size(space, spec.grid_points)
        if size > MAX_GRID_POINTS:
            raise SpecError(
                "search_space",
                f"the grid has {size:,} points (more than {MAX_GRID_POINTS:,}); give ints a "
                "larger step, lower grid_points, or use random or tpe",
            )
    return spec.model_copy(update={"objective": objective, "direction": direction})


def _objective(kind: str, objective: str, direction: str | None) -> tuple[str, str]:
    known = OBJECTIVES.get(kind, {})
    if not objective:
        if not known:
            raise SpecError("objective", f"required for {kind} trials: the metric to optimise")
        objective = next(iter(known))
    elif known and objective not in known:
        raise SpecError(
            "objective",
            f"{kind} trials do not report {objective!r}; choose one of: {', '.join(known)}",
        )
    if direction is None:
        direction = "maximize" if known.get(objective, True) else "minimize"
    return objective, direction


def _check_space_fits_kind(trial: JobSpecModel, space: dict[str, Param]) -> None:
    """Every parameter must be a setting of the trial's kind, and every value the space can
    produce must be valid for it (checked at the bounds and at every choice)."""
    config_model = JOB_KINDS[trial.kind]
    settings = config_model.model_fields
    for name, param in space.items():
        if name not in settings:
            raise SpecError(
                f"search_space.{name}",
                f"not a setting of {trial.kind} jobs; settings: {', '.join(sorted(settings))}",
            )
        if name in trial.config:
            raise SpecError(
                f"search_space.{name}",
                f"also fixed in trial.config ({trial.config[name]!r}); remove one of the two",
            )
        if isinstance(param, CategoricalParam):
            probes: list[Scalar] = list(param.choices)
        else:
            probes = [param.min, param.max]
        for value in probes:
            try:
                config_model.model_validate({**trial.config, name: value})
            except ValidationError as exc:
                for error in exc.errors():
                    if error["loc"][:1] == (name,):
                        message = error["msg"].removeprefix("Value error, ")
                        raise SpecError(
                            f"search_space.{name}",
                            f"value {value!r} is not a valid {name}: {message}",
                        ) from None


#: The config setting that is a trial's total resource (its last report), per job kind.
FINAL_RESOURCE_SETTINGS = {"finetune": "epochs", "diagnostic": "steps"}


def final_resource(kind: str, config: dict[str, Any]) -> int | None:
    """How many times a trial with this config reports its objective, when known."""
    setting = FINAL_RESOURCE_SETTINGS.get(kind)
    model = JOB_KINDS.get(kind)
    if setting is None or model is None:
        return None
    value = config.get(setting, model.model_fields[setting].default)
    return int(value) if isinstance(value, int | float) else None


def trial_job_spec(spec: StudySpecModel, params: dict[str, Any]) -> dict[str, Any]:
    """The job spec of one trial: the template with the sampled values in its config."""
    job = spec.trial.model_dump()
    job["config"] = {**job["config"], **params}
    return job
