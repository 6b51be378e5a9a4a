"""The score task, for real: a tiny model trained on the demo textures scores a pool of images."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from matrec.agent.training.augmentation import eval_transform
from matrec.agent.training.descriptors import describe_files
from matrec.agent.training.finetune import run_finetune
from matrec.agent.training.models import HybridModel, build_model, model_from_file
from matrec.agent.training.reporting import NullReporter
from matrec.agent.training.scoring import (
    ScoringError,
    ScoringStopped,
    load_scoring_model,
    run_scoring,
    score_files,
)
from matrec.agent.worker_protocol import InvalidTaskInput, TaskStopped
from matrec.common.active_learning.pool_scores import SCORES_FILE, PoolScores, list_pool
from matrec.common.specs import FinetuneConfig, ScoreConfig
from matrec.sdk.demo_dataset import DemoDatasetInfo, make_demo_dataset
from PIL import Image
from torch import nn

CLASSES = ["brick", "fur", "grass", "gravel", "metal", "wood"]
VAL_PER_CLASS = 3


@dataclass
class RecordingReporter:
    metrics_calls: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.metrics_calls.append((step, dict(values)))

    def checkpoint(self, path: Path, epoch: int, step: int) -> None:
        raise AssertionError("scoring writes no checkpoints")

    def log(self, text: str) -> None:
        self.logs.append(text)


@dataclass(frozen=True)
class Trained:
    dataset: DemoDatasetInfo
    model_path: Path  # a cnn with a ClassifierHead (hidden layer and dropout)
    hybrid_path: Path

    @property
    def pool(self) -> Path:
        return self.dataset.path / "val"


def _train(dataset: DemoDatasetInfo, artifact_dir: Path, model_type: str) -> Path:
    config = FinetuneConfig(
        dataset_path=str(dataset.path),
        model="resnet18",
        model_type=model_type,
        image_size=32,
        epochs=1,
        batch_size=16,
        dropout_rate=0.3,
        dense_units=16,
    )
    return Path(run_finetune(config, artifact_dir, NullReporter()).model_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("scoring")
    dataset = make_demo_dataset(
        root / "data", seed=0, patch_size=32, train_per_class=8, val_per_class=VAL_PER_CLASS
    )
    return Trained(
        dataset=dataset,
        model_path=_train(dataset, root / "cnn", "cnn"),
        hybrid_path=_train(dataset, root / "hybrid", "hybrid"),
    )


def _score(
    trained: Trained,
    artifact_dir: Path,
    reporter: RecordingReporter | None = None,
    **config: object,
) -> dict[str, object]:
    values: dict[str, object] = {
        "model_path": str(trained.model_path),
        "pool_path": str(trained.pool),
        "batch_size": 8,
    }
    values.update(config)
    return run_scoring(
        ScoreConfig.model_validate(values), artifact_dir, reporter or RecordingReporter()
    )


def _own_forward(model: nn.Module, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The resnet's eval-mode softmax and pooled features, computed here layer by layer."""
    transform = eval_transform(32)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    backbone = nn.Sequential(*list(model.children())[:-1])  # everything up to the pooling
    with torch.no_grad():
        features = backbone(images).flatten(1)
        return torch.softmax(model(images), dim=1), features


def test_scores_cover_the_pool_and_are_probabilities(trained: Trained, tmp_path: Path) -> None:
    reporter = RecordingReporter()
    result = _score(trained, tmp_path, reporter, mc_dropout_passes=3)
    scores = PoolScores.load(Path(str(result["scores_path"])))
    count = len(CLASSES) * VAL_PER_CLASS

    assert result["scores_path"] == str(tmp_path / SCORES_FILE)
    assert result["samples"] == count and result["skipped_images"] == 0
    assert result["classes"] == CLASSES == scores.classes
    assert result["embedding_dim"] == 512  # resnet18's pooled features: the head's input
    assert result["mc_dropout_passes"] == 3
    assert result["scored_model_path"] == str(trained.model_path)
    assert scores.probabilities.shape == (count, len(CLASSES))
    assert scores.embeddings.shape == (count, 512)
    assert scores.mc_probabilities is not None
    assert scores.mc_probabilities.shape == (3, count, len(CLASSES))
    np.testing.assert_allclose(scores.probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scores.mc_probabilities.sum(axis=2), 1.0, atol=1e-5)
    assert scores.sample_ids == sorted(scores.sample_ids)
    assert scores.sample_ids[0] == "brick/" + Path(scores.paths[0]).name
    assert all(Path(p).is_file() for p in scores.paths)

    p = scores.probabilities.astype(np.float64)
    entropy = -(p * np.log(p)).sum(axis=1).mean()
    assert result["mean_entropy"] == pytest.approx(entropy, rel=1e-5)
    assert result["mean_max_probability"] == pytest.approx(p.max(axis=1).mean(), rel=1e-5)

    points = {
        (step, key): value
        for step, values in reporter.metrics_calls
        for key, value in values.items()
    }
    done = [value for (_, key), value in sorted(points.items()) if key == "score/done"]
    assert done == [8.0, 16.0, float(count)]  # batch size 8
    assert points[(3, "score/mean_entropy")] == pytest.approx(result["mean_entropy"])
    assert any(f"{count} images scored" in line for line in reporter.logs)


def test_probabilities_and_embeddings_match_the_models_own_forward(trained: Trained) -> None:
    model, description = model_from_file(trained.model_path)
    pool = list_pool(trained.pool)
    paths = [path for _, path in pool][::4]
    scores = score_files(model, description, paths, batch_size=3)
    expected, features = _own_forward(model_from_file(trained.model_path)[0], paths)
    np.testing.assert_allclose(scores.probabilities, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.embeddings, features.numpy(), rtol=1e-4, atol=1e-5)
    assert scores.sample_ids == [str(p) for p in paths]  # the default ids are the paths


def test_hybrid_scores_match_its_forward_with_the_images_descriptors(trained: Trained) -> None:
    model, description = model_from_file(trained.hybrid_path)
    assert isinstance(model, HybridModel)
    paths = [path for _, path in list_pool(trained.pool)][:5]
    scores = score_files(model, description, paths)

    transform = eval_transform(32)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    descriptors = torch.from_numpy(describe_files(paths, description["descriptors"]))
    with torch.no_grad():
        expected = torch.softmax(model(images, descriptors), dim=1)
        features = model.backbone(images).flatten(1)
    standardised = (descriptors - model.desc_mean) / model.desc_std
    np.testing.assert_allclose(scores.probabilities, expected.numpy(), atol=1e-5)
    # The head sees the backbone's features followed by the standardised descriptors.
    np.testing.assert_allclose(
        scores.embeddings, torch.cat([features, standardised], 1).numpy(), rtol=1e-4, atol=1e-4
    )


def test_mc_dropout_is_seeded_and_leaves_the_rest_alone(trained: Trained) -> None:
    model, description = model_from_file(trained.model_path)
    paths = [path for _, path in list_pool(trained.pool)]
    plain = score_files(model, description, paths, batch_size=8)
    rng_before = torch.get_rng_state()
    first = score_files(model, description, paths, batch_size=8, mc_dropout_passes=4, seed=7)
    again = score_files(model, description, paths, batch_size=8, mc_dropout_passes=4, seed=7)
    other = score_files(model, description, paths, batch_size=8, mc_dropout_passes=4, seed=8)
    assert torch.equal(torch.get_rng_state(), rng_before), "the caller's RNG was disturbed"
    assert not any(module.training for module in model.modules()), "left in train mode"

    assert plain.mc_probabilities is None
    assert first.mc_probabilities is not None and again.mc_probabilities is not None
    assert other.mc_probabilities is not None
    np.testing.assert_array_equal(first.mc_probabilities, again.mc_probabilities)
    assert not np.allclose(first.mc_probabilities, other.mc_probabilities)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(first.mc_probabilities[a], first.mc_probabilities[b])
    # The eval-mode outputs are the same with and without MC passes.
    np.testing.assert_array_equal(first.probabilities, plain.probabilities)
    np.testing.assert_array_equal(first.embeddings, plain.embeddings)


def test_unreadable_images_are_skipped_and_counted(trained: Trained, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    good = [path for _, path in list_pool(trained.pool)][:3]
    for index, path in enumerate(good):
        (pool / "ok").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, pool / "ok" / f"{index}.png")
    (pool / "broken.png").write_bytes(b"this is not a png")
    (pool / "truncated.png").write_bytes(good[0].read_bytes()[:60])
    reporter = RecordingReporter()
    result = _score(trained, tmp_path / "out", reporter, pool_path=str(pool), batch_size=2)
    scores = PoolScores.load(tmp_path / "out" / SCORES_FILE)

    assert result["samples"] == 3 and result["skipped_images"] == 2
    assert scores.sample_ids == ["ok/0.png", "ok/1.png", "ok/2.png"]
    assert sorted(Path(path).name for path, _ in scores.skipped) == [
        "broken.png",
        "truncated.png",
    ]
    assert all(reason for _, reason in scores.skipped)
    assert any("skipped 2 unreadable images" in line for line in reporter.logs)
    assert any("broken.png" in line and "warning" in line for line in reporter.logs)
    # The readable images score as they do in a pool of their own.
    alone = score_files(*model_from_file(trained.model_path), good)
    np.testing.assert_allclose(scores.probabilities, alone.probabilities, atol=1e-6)


def test_manifests_name_the_same_samples_as_the_folder(trained: Trained, tmp_path: Path) -> None:
    folder = list_pool(trained.pool)
    relative = [f"val/{sample_id}" for sample_id, _ in folder]
    root = trained.dataset.path
    (root / "pool.txt").write_text("# the validation images\n\n" + "\n".join(relative) + "\n")
    (root / "pool.csv").write_text("path\n" + "\n".join(relative) + "\n")
    (root / "pool.json").write_text(json.dumps([{"path": p} for p in relative]))
    listed = {suffix: list_pool(root / f"pool.{suffix}") for suffix in ("txt", "csv", "json")}
    assert listed["txt"] == listed["csv"] == listed["json"]
    assert [path.resolve() for _, path in listed["txt"]] == [p.resolve() for _, p in folder]
    assert [sample_id for sample_id, _ in listed["txt"]] == sorted(relative)

    # Explicit ids, and absolute paths, in .csv and .json alike.
    rows = [(f"sample-{i:02d}", str(path)) for i, (_, path) in enumerate(folder)]
    with (tmp_path / "ids.csv").open("w") as file:
        file.write("id,path\n" + "".join(f"{i},{p}\n" for i, p in rows))
    (tmp_path / "ids.json").write_text(json.dumps([{"id": i, "path": p} for i, p in rows]))
    expected = [(i, Path(p)) for i, p in rows]
    assert list_pool(tmp_path / "ids.csv") == list_pool(tmp_path / "ids.json") == expected

    result = _score(trained, tmp_path / "out", pool_path=str(tmp_path / "ids.json"), max_samples=4)
    scores = PoolScores.load(tmp_path / "out" / SCORES_FILE)
    assert result["samples"] == 4
    assert scores.sample_ids == [f"sample-{i:02d}" for i in range(4)]


def test_bad_pools_are_clear_errors(trained: Trained, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "empty" / ".hidden.png").write_bytes(b"")
    with pytest.raises(ScoringError, match="holds no images"):
        _score(trained, tmp_path / "out", pool_path=str(tmp_path / "empty"))
    with pytest.raises(ScoringError, match="does not exist"):
        _score(trained, tmp_path / "out", pool_path=str(tmp_path / "nowhere"))
    assert not (tmp_path / "out" / SCORES_FILE).exists()

    (tmp_path / "no-path.csv").write_text("file,label\na.png,wood\n")
    (tmp_path / "dict.json").write_text('{"path": "a.png"}')
    (tmp_path / "twice.txt").write_text("a.png\na.png\n")
    (tmp_path / "pool.yaml").write_text("- a.png\n")
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    for name, message in [
        ("no-path.csv", "'path' column"),
        ("dict.json", "must be a list"),
        ("twice.txt", "'a.png' is repeated"),
        ("pool.yaml", "a manifest must be"),
        ("blank.txt", "holds no images"),
    ]:
        with pytest.raises(ValueError, match=message):
            list_pool(tmp_path / name)

    # A manifest of files that cannot be read: every one is skipped, and that is an error.
    (tmp_path / "missing.txt").write_text("gone-1.png\ngone-2.png\n")
    with pytest.raises(ScoringError, match="none of the 2 images could be read"):
        _score(trained, tmp_path / "out", pool_path=str(tmp_path / "missing.txt"))


def test_bad_models_are_clear_errors(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(ScoringError, match="is not a file"):
        _score(trained, tmp_path, model_path=str(tmp_path / "model.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    with pytest.raises(ScoringError, match="is not a matrec model"):
        load_scoring_model(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ScoringError, match="is not a matrec model"):
        _score(trained, tmp_path, model_path=str(tmp_path / "plain.pt"))
    # Invalid input: the worker fails the task at once instead of retrying it.
    assert issubclass(ScoringError, InvalidTaskInput)

    _, description = model_from_file(trained.model_path)
    no_dropout = build_model("resnet18", len(CLASSES)).eval()
    paths = [path for _, path in list_pool(trained.pool)][:2]
    with pytest.raises(ScoringError, match="dropout_rate > 0"):
        score_files(no_dropout, description, paths, mc_dropout_passes=2)
    assert score_files(no_dropout, description, paths).probabilities.shape == (2, 6)
    with pytest.raises(ScoringError, match="empty"):
        score_files(no_dropout, description, [])


def test_a_stop_request_ends_scoring_between_batches(trained: Trained, tmp_path: Path) -> None:
    polls: list[int] = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 2  # two batches, then stop

    config = ScoreConfig(
        model_path=str(trained.model_path), pool_path=str(trained.pool), batch_size=4
    )
    reporter = RecordingReporter()
    with pytest.raises(ScoringStopped, match="after 8 of 18 images") as stopped:
        run_scoring(config, tmp_path, reporter, should_stop)
    assert isinstance(stopped.value, TaskStopped)  # the worker hands the task back
    assert [values["score/done"] for _, values in reporter.metrics_calls] == [4.0, 8.0]
    assert not (tmp_path / SCORES_FILE).exists()


def test_scores_round_trip_through_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
    scores = PoolScores(
        sample_ids=["a", "b/c.png", "é", "d"],
        paths=["/p/a.png", "/p/b/c.png", "/p/é.png", "/p/d.png"],
        classes=["oak", "steel", "wool"],
        probabilities=probabilities,
        embeddings=rng.normal(size=(4, 5)),
        mc_probabilities=rng.dirichlet(np.ones(3), size=(2, 4)),
        skipped=[("/p/bad.png", "UnidentifiedImageError: cannot identify image file")],
    )
    scores.save(tmp_path / "out" / SCORES_FILE)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [SCORES_FILE]  # no temp file left
    loaded = PoolScores.load(tmp_path / "out" / SCORES_FILE)
    assert loaded.sample_ids == scores.sample_ids and loaded.paths == scores.paths
    assert loaded.classes == scores.classes and loaded.skipped == scores.skipped
    np.testing.assert_array_equal(loaded.probabilities, probabilities)
    np.testing.assert_array_equal(loaded.embeddings, scores.embeddings)
    assert loaded.embeddings.dtype == np.float32
    assert loaded.mc_probabilities is not None and scores.mc_probabilities is not None
    np.testing.assert_array_equal(loaded.mc_probabilities, scores.mc_probabilities)

    without = PoolScores(["a"], ["/a.png"], ["x", "y"], [[0.5, 0.5]], [[1.0]], None, [])
    without.save(tmp_path / "plain.npz")
    again = PoolScores.load(tmp_path / "plain.npz")
    assert again.mc_probabilities is None and again.skipped == []

    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a scores file"):
        PoolScores.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="lacks"):
        PoolScores.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="probabilities: expected shape"):
        PoolScores(["a"], ["/a.png"], ["x", "y"], [[1.0, 0.0, 0.0]], [[1.0]], None, [])
