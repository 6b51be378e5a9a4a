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


def test_a_valid_spec_gets_its_defaults() -> None:
    spec, config = parse_job_spec({"config": {"dataset_path": "/data", "epochs": 3.0}})
    assert spec.kind == "finetune" and spec.max_attempts == 3
    assert config.model_dump()["epochs"] == 3
