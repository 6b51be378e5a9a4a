"""Job spec validation: every error names the field a user wrote and says what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from matrec.common.specs import SpecError, parse_job_spec


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"config": {"epochs": -1}}, "config.epochs", "greater than or equal to 1"),
        ({"config": {"model": "resnet999"}}, "config.model", "choose one of: resnet18"),
        ({"config": {"learning_rat": 0.1}}, "config.learning_rat", "unknown field"),
        ({"config": {"augmentation": "wild"}}, "config.augmentation", "'light'"),
        ({"config": {"augmentation": ["hflip", "nope"]}}, "config.augmentation.1", "'nope'"),
        ({"kind": "distill"}, "kind", "known kinds: finetune, diagnostic"),
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"kind": "diagnostic", "config": {"steps": 0}}, "config.steps", "greater than"),
        ({"resources": {"memory_mb": -1}}, "resources.memory_mb", "greater than or equal to 0"),
        ({"resources": {"memory_mb": 1 << 30}}, "resources.memory_mb", "less than or equal"),
        (
            {"resources": {"gpus": 1, "gpu_memory_mb": 10**9}},
            "resources.gpu_memory_mb",
            "less than or equal to 1048576",
        ),
        ({"resources": {"gpu_memory_mb": 8192}}, "resources.gpu_memory_mb", "resources.gpus >= 1"),
        ({"config": {"micro_batch": 0}}, "config.micro_batch", "1 or more images, or 'auto'"),
        ({"config": {"micro_batch": "big"}}, "config.micro_batch", "or 'auto' (got 'big')"),
        ({"config": {"micro_batch": 2.5}}, "config.micro_batch", "or 'auto' (got 2.5)"),
        (
            {"config": {"batch_size": 16, "workers_per_host": 2, "micro_batch": 16}},
            "config.micro_batch",
            "more than the 8 images each rank trains on per step",
        ),
        ({"config": {"batch_size": "big"}}, "config.batch_size", "or 'auto' (got 'big')"),
        ({"config": {"batch_size": -8}}, "config.batch_size", "1 to 65536 images, or 'auto'"),
        ({"config": {"batch_size": 10**7}}, "config.batch_size", "1 to 65536 images"),
        (
            {"config": {"batch_size": "auto", "micro_batch": 4}},
            "config.micro_batch",
            "a fixed micro-batch (4) needs a fixed batch_size, and batch_size is 'auto'",
        ),
        ({"config": {"num_workers": -1}}, "config.num_workers", "0 to 64 worker processes"),
        ({"config": {"num_workers": "lots"}}, "config.num_workers", "or 'auto' (got 'lots')"),
        ({"config": {"prefetch_factor": 4}}, "config.prefetch_factor", "needs loader workers"),
        ({"resources": {"memory_bytes": -1}}, "resources.memory_bytes", "greater than or equal"),
        (
            {"resources": {"gpus": 1, "gpu_memory_mb": -5}},
            "resources.gpu_memory_mb",
            "greater than or equal to 0",
        ),
        (
            {"resources": {"memory_bytes": 1, "memory_mb": 1}},
            "resources.memory_mb",
            "not both",
        ),
    ],
)
def test_errors_name_the_field(raw: dict[str, Any], field: str, fragment: str) -> None:
    raw = {"kind": "finetune", **raw}
    if raw["kind"] == "finetune":
        raw["config"] = {"dataset_path": "/data", **raw.get("config", {})}
    with pytest.raises(SpecError) as caught:
        parse_job_spec(raw)
    assert caught.value.field == field
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


def test_batch_size_auto_is_accepted_with_any_ranks_and_numbers_stay_lax() -> None:
    _, config = parse_job_spec(
        {"config": {"dataset_path": "/d", "batch_size": "auto", "workers_per_host": 3}}
    )
    assert config.model_dump()["batch_size"] == "auto"
    for given in (24, 24.0, "24"):
        _, config = parse_job_spec({"config": {"dataset_path": "/d", "batch_size": given}})
        assert config.model_dump()["batch_size"] == 24


def test_a_valid_spec_gets_its_defaults() -> None:
    spec, config = parse_job_spec({"config": {"dataset_path": "/data", "epochs": 3.0}})
    assert spec.kind == "finetune" and spec.max_attempts == 3
    assert config.model_dump()["epochs"] == 3


@pytest.mark.parametrize("path", ["/" + "a" * 5000, "~no-such-user-here/data"])
def test_unusable_dataset_paths_are_spec_errors(path: str) -> None:
    """Found by benchmarks/fuzz_rpcs.py: the file system's own errors must not escape."""
    from matrec.common.specs import check_dataset_path

    _, config = parse_job_spec({"kind": "finetune", "config": {"dataset_path": path}})
    with pytest.raises(SpecError) as raised:
        check_dataset_path(config)
    assert raised.value.field == "config.dataset_path"
    assert len(str(raised.value)) < 400


def test_non_finite_numbers_on_the_wire_are_spec_errors() -> None:
    """Found by benchmarks/fuzz_rpcs.py: a Struct holding infinity cannot become JSON."""
    from matrec.common.wire import job_spec_to_dict, study_spec_to_dict
    from matrec.v1 import jobs_pb2, studies_pb2

    job = jobs_pb2.JobSpec(kind="finetune")
    job.config.update({"epochs": float("inf")})
    with pytest.raises(SpecError) as raised:
        job_spec_to_dict(job)
    assert raised.value.field == "config" and "finite" in raised.value.message
    study = studies_pb2.StudySpec(trial=job)
    with pytest.raises(SpecError) as raised:
        study_spec_to_dict(study)
    assert raised.value.field == "trial.config"
    study = studies_pb2.StudySpec()
    study.search_space.update({"lr": {"min": float("nan")}})
    with pytest.raises(SpecError) as raised:
        study_spec_to_dict(study)
    assert raised.value.field == "search_space"


def test_memory_requests_in_mib_are_placed_in_bytes() -> None:
    spec, _ = parse_job_spec(
        {
            "config": {"dataset_path": "/data"},
            "resources": {"gpus": 2, "memory_mb": 4096, "gpu_memory_mb": 10240},
        }
    )
    assert spec.resources.placement() == {
        "gpus": 2,
        "cpus": 1.0,
        "memory_bytes": 4096 * 1024 * 1024,
        "gpu_memory_bytes": 10240 * 1024 * 1024,
    }
