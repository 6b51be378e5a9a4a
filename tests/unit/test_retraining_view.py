"""A retraining's dataset is a manifest of labelled pool samples in its config; the agent finds
each in its own copy of the pool and trains on a view of links in its work folder, never
touching the originals."""

from __future__ import annotations

from pathlib import Path

import pytest
from matrec.agent.path_policy import PathNotAllowed, PathPolicy
from matrec.agent.training.retraining_view import DatasetBuildError, training_view
from matrec.common.specs import FinetuneConfig, SpecError, parse_job_spec
from PIL import Image


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def retraining(data: Path, pool: Path, samples: list[tuple[str, str]]) -> FinetuneConfig:
    """The config as the coordinator stores it: through parse_job_spec."""
    _, config = parse_job_spec(
        {
            "kind": "finetune",
            "config": {
                "dataset_path": str(data),
                "feedback": {
                    "pool_path": str(pool),
                    "samples": [{"sample_id": s, "label": label} for s, label in samples],
                },
            },
        }
    )
    assert isinstance(config, FinetuneConfig)
    return config


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for split in ("train", "val"):
        for name in ("oak", "steel"):
            image(tmp_path / "data" / split / name / "0.png")
    return tmp_path / "data"


def test_the_view_links_the_data_and_the_labelled_pool_images(data: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    labelled = image(pool / "sub" / "x.png")
    image(pool / "unlabelled.png")
    config = retraining(data, pool, [("sub/x.png", "oak")])

    trained = training_view(config, tmp_path / "work" / "view", PathPolicy())
    built = Path(trained.dataset_path)
    assert built == tmp_path / "work" / "view" and trained.feedback is None
    assert trained.model_copy(update={"dataset_path": str(data)}) == config.model_copy(
        update={"feedback": None}
    )
    files = sorted(p.relative_to(built).as_posix() for p in built.rglob("*.png"))
    assert len(files) == 5 and "val/oak/0.png" in files
    feedback = [p for p in (built / "train" / "oak").iterdir() if p.name.startswith("feedback-")]
    assert len(feedback) == 1 and feedback[0].resolve() == labelled.resolve()
    assert all(p.is_symlink() for p in built.rglob("*.png"))
    # Built again (another attempt in the same folder): replaced, the same.
    training_view(config, tmp_path / "work" / "view", PathPolicy())
    assert sorted(p.relative_to(built).as_posix() for p in built.rglob("*.png")) == files

    # A new class has no validation images: no val split, the fine-tune holds some out.
    new_class = retraining(data, pool, [("sub/x.png", "oak"), ("unlabelled.png", "glass")])
    built = Path(training_view(new_class, tmp_path / "v3", PathPolicy()).dataset_path)
    assert not (built / "val").exists() and (built / "train" / "glass").is_dir()
    assert labelled.is_file() and not labelled.is_symlink()  # the originals are never touched


def test_a_sample_missing_from_this_hosts_pool_fails_clearly(data: Path, tmp_path: Path) -> None:
    image(tmp_path / "pool" / "here.png")
    config = retraining(data, tmp_path / "pool", [("gone.png", "oak")])
    with pytest.raises(DatasetBuildError, match=r"'gone\.png' is not in the pool .* on this host"):
        training_view(config, tmp_path / "v4", PathPolicy())
    assert not (tmp_path / "v4").exists() and not (tmp_path / "v4.partial").exists()
    # A pool outside the agent's allowed paths is refused before anything is read.
    with pytest.raises(PathNotAllowed, match=r"config\.feedback\.pool_path"):
        training_view(config, tmp_path / "v5", PathPolicy((data,)))


def test_no_feedback_trains_on_the_dataset_itself(data: Path, tmp_path: Path) -> None:
    _, config = parse_job_spec({"kind": "finetune", "config": {"dataset_path": str(data)}})
    assert isinstance(config, FinetuneConfig)
    assert training_view(config, tmp_path / "view", PathPolicy()) is config
    assert not (tmp_path / "view").exists()


@pytest.mark.parametrize("label", ["../escape", "a/b", "..", ""])
def test_a_label_that_is_no_folder_name_is_refused(label: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        retraining(tmp_path, tmp_path, [("x.png", label)])
    assert caught.value.field.startswith("config.feedback.samples"), caught.value
