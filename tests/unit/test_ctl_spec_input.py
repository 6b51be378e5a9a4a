"""`matrec-ctl submit` flags and spec files become a raw job spec."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from matrec.common.specs import parse_job_spec
from matrec.sdk.ctl.spec_input import (
    SubmitFlags,
    build_spec,
    parse_assignment,
    parse_augmentation,
)
from matrec.sdk.errors import InvalidSpecError


def test_flags_make_a_valid_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flags = SubmitFlags(
        dataset=Path("data"),
        model="resnet50",
        epochs=3,
        batch_size=16,
        learning_rate=0.01,
        image_size=96,
        pretrained=Path("~/weights.pt"),
        model_type="hybrid",
        strategy="last_n",
        trainable_blocks=2,
        augmentation="hflip, rotation,blur",
        optimizer="sgd",
        schedule="step",
        warmup_epochs=0.5,
        label_smoothing=0.1,
        early_stopping=3,
        grad_clip=1.0,
        name="wood",
        max_attempts=5,
        cpus=2.0,
        gpus=1,
        assignments=["lr_decay=0.3", "weight_decay=0"],
    )
    spec = build_spec(None, flags)
    assert spec == {
        "kind": "finetune",
        "name": "wood",
        "max_attempts": 5,
        "resources": {"cpus": 2.0, "gpus": 1},
        "config": {
            "dataset_path": str(tmp_path / "data"),
            "model": "resnet50",
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 0.01,
            "image_size": 96,
            "pretrained_path": os.path.expanduser("~/weights.pt"),
            "model_type": "hybrid",
            "strategy": "last_n",
            "trainable_blocks": 2,
            "augmentation": ["hflip", "rotation", "blur"],
            "optimizer": "sgd",
            "schedule": "step",
            "warmup_epochs": 0.5,
            "label_smoothing": 0.1,
            "early_stopping_patience": 3,
            "grad_clip_norm": 1.0,
            "lr_decay": 0.3,
            "weight_decay": 0,
        },
    }
    parse_job_spec(spec)  # valid as a whole


def test_only_given_flags_appear() -> None:
    spec = build_spec(None, SubmitFlags(dataset=Path("/data")))
    assert spec == {"kind": "finetune", "config": {"dataset_path": "/data"}}


def test_file_then_flags_then_set(tmp_path: Path) -> None:
    spec_file = tmp_path / "specs" / "job.json"
    spec_file.parent.mkdir()
    spec_file.write_text(
        json.dumps(
            {
                "name": "from-file",
                "config": {"dataset_path": "../data", "epochs": 10, "model": "resnet34"},
                "resources": {"gpus": 2},
            }
        )
    )
    flags = SubmitFlags(epochs=4, cpus=3.0, assignments=["model=resnet18"])
    spec = build_spec(spec_file, flags)
    # A relative path in a file is relative to that file.
    assert spec["config"]["dataset_path"] == str(tmp_path / "data")
    assert spec["config"]["epochs"] == 4
    assert spec["config"]["model"] == "resnet18"
    assert spec["resources"] == {"gpus": 2, "cpus": 3.0}
    assert spec["name"] == "from-file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs=3", ("epochs", 3)),
        ("learning_rate=1e-3", ("learning_rate", 0.001)),
        ("grad_clip_norm=null", ("grad_clip_norm", None)),
        ('augmentation=["hflip"]', ("augmentation", ["hflip"])),
        ("model=resnet18", ("model", "resnet18")),
        ("device=", ("device", "")),
        ("name=a=b", ("name", "a=b")),
        (' model = "x"', ("model", "x")),
    ],
)
def test_parse_assignment(text: str, expected: tuple[str, object]) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["epochs", "=3", ""])
def test_parse_assignment_rejects(text: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_assignment(text)
    assert caught.value.field == "--set"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("strong", "strong"),
        (" none ", "none"),
        ("hflip", ["hflip"]),
        ("random_resized_crop,color_jitter", ["random_resized_crop", "color_jitter"]),
        ("hflip, ,vflip,", ["hflip", "vflip"]),
    ],
)
def test_parse_augmentation(text: str, expected: object) -> None:
    assert parse_augmentation(text) == expected


@pytest.mark.parametrize("text", ["", " , "])
def test_parse_augmentation_rejects_empty(text: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_augmentation(text)
    assert caught.value.field == "--augmentation"


def test_preset_augmentation_flag_stays_a_string() -> None:
    spec = build_spec(None, SubmitFlags(dataset=Path("/data"), augmentation="light"))
    assert spec["config"]["augmentation"] == "light"


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="cannot read"):
        build_spec(tmp_path / "missing.json", SubmitFlags())
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidSpecError, match="invalid JSON"):
        build_spec(broken, SubmitFlags())
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(InvalidSpecError, match="mapping"):
        build_spec(listing, SubmitFlags())


def test_yaml_file(tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("config:\n  dataset_path: data\n  epochs: 2\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidSpecError, match="PyYAML"):
            build_spec(spec_file, SubmitFlags())
    else:
        spec = build_spec(spec_file, SubmitFlags())
        assert spec["config"] == {"dataset_path": str(tmp_path / "data"), "epochs": 2}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("project.json", '{"dataset_path": "data", "pool_path": "../pool", "strategy": "bald"}'),
        ("project.yaml", "dataset_path: data\npool_path: ../pool\nstrategy: bald\n"),
    ],
)
def test_project_files_are_read_like_job_files(tmp_path: Path, name: str, text: str) -> None:
    """`active-learning create --spec` reads JSON and YAML with the job files' reader: paths
    relative to the file's folder, flags over the file, the required parts named by option."""
    from matrec.sdk.ctl.active_learning import ProjectFlags, build_project_spec

    folder = tmp_path / "specs"
    folder.mkdir()
    spec_file = folder / name
    spec_file.write_text(text)
    if spec_file.suffix == ".yaml" and importlib.util.find_spec("yaml") is None:
        with pytest.raises(InvalidSpecError, match="PyYAML") as missing:
            build_project_spec(spec_file, ProjectFlags())
        assert missing.value.field == "--spec"
        return
    with pytest.raises(InvalidSpecError, match="--model-job"):
        build_project_spec(spec_file, ProjectFlags())
    spec = build_project_spec(spec_file, ProjectFlags(model_job="job-1", strategy="margin"))
    assert spec == {
        "dataset_path": str(folder / "data"),
        "pool_path": str(tmp_path / "pool"),
        "strategy": "margin",
        "model_job_id": "job-1",
    }
    listing = folder / f"list{spec_file.suffix}"
    listing.write_text("[1, 2]")
    with pytest.raises(InvalidSpecError, match="mapping") as raised:
        build_project_spec(listing, ProjectFlags())
    assert raised.value.field == "--spec"
