"""Job and study specs between their wire form (matrec.v1 messages) and the dicts the validators
in specs.py and studies.py take. Shared by the SDK (sending) and the coordinator (receiving), so
the two read proto3's "zero means the default" the same way."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from matrec.common.specs import JobSpecModel, SpecError
from matrec.common.studies import StudySpecModel
from matrec.v1 import common_pb2, jobs_pb2, studies_pb2


def struct_to_dict(message: Any, field: str) -> dict[str, Any]:
    """A Struct as a dict. Raises SpecError for what JSON cannot hold (NaN, infinity)."""
    try:
        return dict(json_format.MessageToDict(message))
    except ValueError as exc:
        raise SpecError(field, f"cannot be read: {exc}; numbers must be finite") from None


def job_spec_to_dict(spec: jobs_pb2.JobSpec) -> dict[str, Any]:
    """The validators' input. Raises SpecError for a config JSON cannot hold."""
    raw: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind or "finetune",
        "config": struct_to_dict(spec.config, "config"),
        "labels": dict(spec.labels),
    }
    if spec.max_attempts:
        raw["max_attempts"] = spec.max_attempts
    if spec.HasField("resources"):
        raw["resources"] = {
            "gpus": spec.resources.gpus,
            "cpus": spec.resources.cpus,
            "memory_bytes": spec.resources.memory_bytes,
            "gpu_memory_bytes": spec.resources.gpu_memory_bytes,
        }
    return raw


def job_spec_to_proto(spec: JobSpecModel, config: dict[str, Any]) -> jobs_pb2.JobSpec:
    """The wire form of a validated spec; `config` is its validated, normalised config."""
    message = jobs_pb2.JobSpec(
        name=spec.name,
        kind=spec.kind,
        resources=common_pb2.Resources(**spec.resources.placement()),
        max_attempts=spec.max_attempts,
        labels=spec.labels,
    )
    message.config.update(config)
    return message


def study_spec_to_dict(spec: studies_pb2.StudySpec) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": spec.name,
        "trial": _trial_to_dict(spec.trial),
        "search_space": struct_to_dict(spec.search_space, "search_space"),
        "algorithm": spec.algorithm or "tpe",
        "objective": spec.objective,
        "seed": spec.seed,
    }
    for name in ("max_trials", "max_parallel", "grid_points"):
        if getattr(spec, name):
            raw[name] = getattr(spec, name)
    if spec.direction:
        raw["direction"] = spec.direction
    if spec.HasField("n_startup_trials"):
        raw["n_startup_trials"] = spec.n_startup_trials
    if spec.tpe_gamma:
        raw["tpe_gamma"] = spec.tpe_gamma
    pruner: dict[str, Any] = {"kind": spec.pruner.kind or "none"}
    for name in ("min_resource", "reduction_factor", "min_trials"):
        if getattr(spec.pruner, name):
            pruner[name] = getattr(spec.pruner, name)
    raw["pruner"] = pruner
    return raw


def _trial_to_dict(trial: jobs_pb2.JobSpec) -> dict[str, Any]:
    try:
        return job_spec_to_dict(trial)
    except SpecError as error:
        raise SpecError(f"trial.{error.field}", error.message) from None


def study_spec_to_proto(spec: StudySpecModel) -> studies_pb2.StudySpec:
    message = studies_pb2.StudySpec(
        name=spec.name,
        trial=job_spec_to_proto(spec.trial, spec.trial.config),
        algorithm=spec.algorithm,
        objective=spec.objective,
        direction=spec.direction or "",
        max_trials=spec.max_trials,
        max_parallel=spec.max_parallel,
        seed=spec.seed,
        grid_points=spec.grid_points,
        tpe_gamma=spec.tpe_gamma,
        pruner=studies_pb2.PrunerSpec(
            kind=spec.pruner.kind,
            min_resource=spec.pruner.min_resource,
            reduction_factor=spec.pruner.reduction_factor,
            min_trials=spec.pruner.min_trials,
        ),
    )
    if spec.n_startup_trials is not None:
        message.n_startup_trials = spec.n_startup_trials
    message.search_space.update({k: v.model_dump() for k, v in spec.search_space.items()})
    return message
