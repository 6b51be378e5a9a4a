"""Score an unlabelled pool with a trained model: the `score` job kind.

Per image: the class probabilities (softmax in eval mode), the embedding the head sees (for a
cnn the pooled backbone features, for the hybrid model the concatenation of those and the
standardised descriptors) and, with MC dropout, the probabilities of each stochastic pass.

MC dropout puts only the Dropout modules in train mode (BatchNorm keeps its running
statistics) and draws the masks from torch's RNG seeded with `seed` (forked, so the caller's
RNG is untouched): on CPU the same inputs, batch size and seed give the same passes. When every
Dropout of the model is inside its head (the matrec heads, the hybrid model) a pass reruns only
the head on the embedding already computed, which gives the same distribution as a whole
forward pass at a fraction of its cost.

Imported lazily, by worker processes only: it imports torch at module level.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matrec.agent.path_policy import PathPolicy
from matrec.agent.training.augmentation import eval_transform
from matrec.agent.training.descriptors import describe_image
from matrec.agent.training.models import head_name, model_from_file
from matrec.agent.training.reporting import Reporter
from matrec.agent.worker_protocol import InvalidTaskInput, TaskStopped
from matrec.common.active_learning.pool_scores import SCORES_FILE, PoolScores, list_pool
from matrec.common.specs import ScoreConfig
from numpy.typing import NDArray
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: Unreadable images named one by one in the task log; beyond that, only counted.
_SKIPPED_NAMED = 20
_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


class ScoringError(InvalidTaskInput):
    """The model or the pool cannot be scored as they are; retrying will not help."""


class ScoringStopped(TaskStopped):
    """Scoring stopped on request between batches. Nothing is saved: a new attempt scores the
    whole pool again."""


@dataclass(frozen=True)
class ScoringResult:
    samples: int
    skipped_images: int
    classes: list[str]
    scores_path: str
    embedding_dim: int
    mc_dropout_passes: int
    # The model that was run: an input, so not named model_path (that key records an artifact).
    scored_model_path: str
    pool_path: str
    mean_entropy: float  # nats, over the scored samples
    mean_max_probability: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_scoring_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """models.model_from_file, with a ScoringError that says what to give instead."""
    if not path.is_file():
        raise ScoringError(
            f"model_path {str(path)!r} is not a file; give a finetune job's model.pt "
            "(`matrec-ctl artifacts JOB` lists it)"
        )
    try:
        return model_from_file(path)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise ScoringError(
            f"model_path {str(path)!r} is not a matrec model ({type(exc).__name__}: {message}); "
            "give a finetune job's model.pt"
        ) from None


def run_scoring(
    config: ScoreConfig,
    artifact_dir: Path,
    reporter: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Score config.pool_path with config.model_path; write artifact_dir/SCORES_FILE and return
    ScoringResult as a dict. Reports `score/done` and `score/total` after every batch (the step
    is the batch number) and the pool's mean entropy and mean top probability at the end.

    Raises ScoringError for a missing or unreadable model, an empty pool, a pool with no readable
    image and MC passes asked of a model without dropout; ScoringStopped once `should_stop()`.
    """
    started = time.monotonic()
    artifact_dir = Path(artifact_dir)
    model_path = Path(config.model_path).expanduser()
    model, description = load_scoring_model(model_path)
    try:
        pool = list_pool(Path(config.pool_path))
    except ValueError as exc:
        raise ScoringError(str(exc)) from None
    # A manifest can name files anywhere: each must be under the agent's allowed roots too.
    PathPolicy.from_env().check_files([path for _, path in pool], "pool image")
    if config.max_samples is not None:
        pool = pool[: config.max_samples]
    device = _pick_device(config.device)
    reporter.log(
        f"scoring {len(pool)} images of {config.pool_path} with {model_path} "
        f"({description['model']}, {description.get('model_type', 'cnn')}, "
        f"{len(description['classes'])} classes), device {device}, batch size "
        f"{config.batch_size}, {config.mc_dropout_passes} MC dropout passes"
    )
    total = len(pool)

    def progress(batch: int, done: int) -> None:
        reporter.metrics(batch, {"score/done": float(done), "score/total": float(total)})

    scores = score_files(
        model,
        description,
        [path for _, path in pool],
        batch_size=config.batch_size,
        mc_dropout_passes=config.mc_dropout_passes,
        seed=config.seed,
        device=device,
        num_workers=config.num_workers,
        sample_ids=[sample_id for sample_id, _ in pool],
        progress=progress,
        should_stop=should_stop,
    )
    _log_skipped(reporter, scores.skipped)
    scores_path = artifact_dir / SCORES_FILE
    scores.save(scores_path)
    mean_entropy = float(entropy(scores.probabilities).mean())
    mean_max = float(scores.probabilities.max(axis=1).mean())
    batches = -(-total // config.batch_size)
    reporter.metrics(
        batches, {"score/mean_entropy": mean_entropy, "score/mean_max_probability": mean_max}
    )
    result = ScoringResult(
        samples=len(scores.sample_ids),
        skipped_images=len(scores.skipped),
        classes=list(scores.classes),
        scores_path=str(scores_path),
        embedding_dim=int(scores.embeddings.shape[1]),
        mc_dropout_passes=config.mc_dropout_passes,
        scored_model_path=str(model_path),
        pool_path=config.pool_path,
        mean_entropy=mean_entropy,
        mean_max_probability=mean_max,
        seconds=time.monotonic() - started,
    )
    reporter.log(
        f"done: {result.samples} images scored, {result.skipped_images} skipped; mean entropy "
        f"{mean_entropy:.4f} nats, mean top probability {mean_max:.4f}; {scores_path}"
    )
    return result.to_dict()


def score_files(
    model: nn.Module,
    description: dict[str, Any],
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    mc_dropout_passes: int = 0,
    seed: int = 0,
    device: torch.device | None = None,
    num_workers: int = 0,
    sample_ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> PoolScores:
    """Score the images `paths` (ids `sample_ids`, by default the paths) with `model`, as
    models.model_from_file returns it with its `description`.

    Unreadable images are skipped and listed in the result's `skipped`. `progress(batch, done)`
    is called after each batch (batch numbers from 1, `done` images so far, skipped included).
    Raises ScoringError (a ValueError) for an empty list, no readable image, or MC passes asked
    of a model without dropout; ScoringStopped when `should_stop()` turns true between batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if mc_dropout_passes < 0:
        raise ValueError(f"mc_dropout_passes must be 0 or more, got {mc_dropout_passes}")
    files = [Path(p) for p in paths]
    ids = [str(s) for s in sample_ids] if sample_ids is not None else [str(p) for p in files]
    if len(ids) != len(files):
        raise ValueError(f"sample_ids: {len(ids)} ids for {len(files)} paths")
    if not files:
        raise ScoringError("the pool is empty: there are no images to score")
    dropouts = [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]
    if mc_dropout_passes > 0 and not dropouts:
        raise ScoringError(
            f"mc_dropout_passes is {mc_dropout_passes} but the model has no dropout; train it "
            "with dropout_rate > 0 (finetune config) or set mc_dropout_passes to 0"
        )
    device = device or torch.device("cpu")
    head = model.get_submodule(head_name(model))
    head_holds_all_dropout = all(
        any(m is d for m in head.modules()) for d in dropouts
    )  # then a pass reruns the head only
    descriptors = list(description.get("descriptors") or [])
    hybrid = description.get("model_type", "cnn") == "hybrid"

    dataset = _PoolImages(files, eval_transform(int(description["image_size"])), descriptors)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=_collate,
    )
    head_inputs: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: head_inputs.append(inputs[0]))
    model.to(device).eval()
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    probabilities: list[NDArray[np.float32]] = []
    embeddings: list[NDArray[np.float32]] = []
    mc_passes: list[NDArray[np.float32]] = []  # each [T, batch, C]
    done = 0
    try:
        # A private RNG stream for the dropout masks, seeded once; the caller's is restored.
        with (
            torch.random.fork_rng(devices=_cuda_indices(device)),
            torch.inference_mode(),
        ):
            torch.manual_seed(seed)
            for batch, (images, extra, indices, problems) in enumerate(loader, start=1):
                if should_stop():
                    raise ScoringStopped(
                        f"stopped after {done} of {len(files)} images; nothing was saved"
                    )
                done += len(indices)
                good = [i for i, problem in enumerate(problems) if not problem]
                skipped += [
                    (str(files[index]), problem)
                    for index, problem in zip(indices, problems, strict=True)
                    if problem
                ]
                if good:
                    rows = torch.tensor(good)
                    inputs = (images[rows], extra[rows]) if hybrid else (images[rows],)
                    head_inputs.clear()
                    logits = _forward(model, inputs, device)
                    embedding = head_inputs[-1]
                    probabilities.append(_softmax(logits))
                    embeddings.append(embedding.float().cpu().numpy())
                    kept += [indices[i] for i in good]
                    if mc_dropout_passes:
                        mc_passes.append(
                            _mc_passes(
                                model,
                                head if head_holds_all_dropout else None,
                                inputs,
                                embedding,
                                dropouts,
                                mc_dropout_passes,
                                device,
                            )
                        )
                if progress is not None:
                    progress(batch, done)
    finally:
        hook.remove()
        model.eval()
    if not kept:
        raise ScoringError(
            f"none of the {len(files)} images could be read (e.g. {skipped[0][0]}: {skipped[0][1]})"
        )
    return PoolScores(
        sample_ids=[ids[i] for i in kept],
        paths=[str(files[i]) for i in kept],
        classes=list(description["classes"]),
        probabilities=np.concatenate(probabilities),
        embeddings=np.concatenate(embeddings),
        mc_probabilities=np.concatenate(mc_passes, axis=1) if mc_dropout_passes else None,
        skipped=skipped,
    )


def entropy(probabilities: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Each row's Shannon entropy in nats (0 log 0 = 0)."""
    p = np.asarray(probabilities, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    result: NDArray[np.float64] = -(p * logs).sum(axis=1)
    return result


def _forward(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device
) -> torch.Tensor:
    use_cuda = device.type == "cuda"
    moved = [tensor.to(device, non_blocking=True) for tensor in inputs]
    if use_cuda:
        moved[0] = moved[0].contiguous(memory_format=torch.channels_last)
    # The same numerics as the engine's evaluation: bf16 autocast on CUDA, float32 on CPU.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
        logits: torch.Tensor = model(*moved)
    return logits.float()


def _mc_passes(
    model: nn.Module,
    head: nn.Module | None,
    inputs: tuple[torch.Tensor, ...],
    embedding: torch.Tensor,
    dropouts: Sequence[nn.Module],
    passes: int,
    device: torch.device,
) -> NDArray[np.float32]:
    """[passes, batch, classes] probabilities with dropout on; by the head alone when `head`."""
    for module in dropouts:
        module.train()
    try:
        results = []
        for _ in range(passes):
            if head is not None:
                with torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
                ):
                    logits = head(embedding).float()
            else:
                logits = _forward(model, inputs, device)
            results.append(_softmax(logits))
        return np.stack(results)
    finally:
        for module in dropouts:
            module.eval()


def _cuda_indices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _softmax(logits: torch.Tensor) -> NDArray[np.float32]:
    probabilities: NDArray[np.float32] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return probabilities


class _PoolImages(Dataset[tuple[torch.Tensor, torch.Tensor, int, str]]):
    """(image, descriptors or an empty tensor, index, problem): a file that cannot be decoded
    gives a zero image and the reason, so that one bad file costs a skip, not the batch."""

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[[Image.Image], torch.Tensor],
        descriptors: Sequence[str],
    ) -> None:
        self.files = list(files)
        self.transform = transform
        self.descriptors = list(descriptors)
        self._blank = transform(Image.new("RGB", (8, 8)))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        try:
            with Image.open(self.files[index]) as image:
                rgb = image.convert("RGB")
            # describe_image is what descriptors.describe_files computes per file at training.
            described = (
                torch.from_numpy(describe_image(rgb, self.descriptors))
                if self.descriptors
                else torch.zeros(0)
            )
            return self.transform(rgb), described, index, ""
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            return torch.zeros_like(self._blank), torch.zeros(0), index, reason


def _collate(
    items: list[tuple[torch.Tensor, torch.Tensor, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]:
    images = torch.stack([item[0] for item in items])
    widths = {item[1].numel() for item in items if not item[3]}
    width = widths.pop() if widths else 0
    descriptors = torch.stack([item[1] if not item[3] else torch.zeros(width) for item in items])
    return images, descriptors, [item[2] for item in items], [item[3] for item in items]


def _log_skipped(reporter: Reporter, skipped: Sequence[tuple[str, str]]) -> None:
    if not skipped:
        return
    for path, reason in skipped[:_SKIPPED_NAMED]:
        reporter.log(f"warning: skipping unreadable image {path}: {reason}")
    more = len(skipped) - _SKIPPED_NAMED
    reporter.log(
        f"warning: skipped {len(skipped)} unreadable images"
        + (f" ({more} not named above)" if more > 0 else "")
    )


def _pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ScoringError("device is 'cuda' but CUDA is not available on this host; use 'auto'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
