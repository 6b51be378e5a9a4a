"""Fine-tune a torchvision classifier (or the hybrid model) on an ImageFolder dataset: the
`finetune` job kind's training loop.

Resumable at any optimizer step: the shuffle order of epoch e is a function of (seed, e), what
trains in an epoch is a function of the epoch (strategies.py), and the torch RNG state is
checkpointed, so with num_workers=0 a resumed run reproduces the uninterrupted one step for
step. (With worker processes the augmentations of a resumed epoch may differ.)

Distributed (collective.py): each of N ranks trains on its slice of every global batch of
`batch_size` images and the ranks average their gradients each step, so N ranks take the same
steps as one process with the same global batch (up to float rounding, and to BatchNorm layers
that train, which see the rank's slice). Every rank evaluates the whole validation set, so all
take the same early-stopping decisions; rank 0 alone reports, checkpoints and saves the model.

A step or evaluation pass that runs out of memory is repeated as micro-batches (memory.py).

Imported lazily, by worker processes only: it imports torch at module level.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from matrec.agent.training.augmentation import eval_transform, train_transform
from matrec.agent.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MODEL_FORMAT,
    atomic_torch_save,
    atomic_write_text,
    cpu_state,
    load_checkpoint,
)
from matrec.agent.training.collective import LOCAL_RANK_ENV, Collective, collective_from_env
from matrec.agent.training.data import Data, epoch_batches, load_data
from matrec.agent.training.descriptors import describe_files, descriptor_dim
from matrec.agent.training.evaluation import Forward, evaluation_report, predict
from matrec.agent.training.loading import plan_loading
from matrec.agent.training.memory import (
    AUTO_BATCH_MAX,
    AUTO_BATCH_MIN_STEPS,
    MicroBatching,
    check_simulated_limit,
    probe_batch_size,
    probe_sizes,
    simulated_limit,
)
from matrec.agent.training.models import (
    build_hybrid,
    build_model,
    load_named_weights,
    load_pretrained,
)
from matrec.agent.training.optim import (
    build_optimizer,
    build_scheduler,
    optimizer_step,
    training_loss,
)
from matrec.agent.training.reporting import NullReporter, Reporter
from matrec.agent.training.sample_trace import SampleTrace
from matrec.agent.training.strategies import apply_strategy, describe_plan, param_groups
from matrec.agent.worker_protocol import TaskStopped
from matrec.common.specs import BATCH_SIZE_METRIC, FinetuneConfig
from torch import nn
from torch.utils.data import DataLoader

#: Unreadable images named one by one in the task log; beyond that, only counted.
_SKIPPED_NAMED = 20


class TrainingPreempted(TaskStopped):
    """Training stopped on request after writing a resumable checkpoint."""

    def __init__(self, checkpoint_path: Path, epoch: int, step: int) -> None:
        super().__init__(f"preempted at step {step} (epoch {epoch}); checkpoint {checkpoint_path}")
        self.checkpoint_path = checkpoint_path
        self.epoch = epoch
        self.step = step


@dataclass(frozen=True)
class FinetuneResult:
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    epochs: int
    steps: int
    classes: list[str]
    model_path: str
    checkpoint_path: str
    seconds: float  # training time summed over the attempts that led to this result
    evaluation: dict[str, Any] = field(default_factory=dict)  # evaluation.evaluation_report
    stopped_early: bool = False
    skipped_images: int = 0
    model_type: str = "cnn"
    strategy: str = "full"
    # Images per forward pass at the end (memory.py); the per-rank batch when it never split.
    micro_batch: int = 0
    batch_size: int = 0  # images per step, all ranks: config's, or what batch_size auto chose
    memory_adaptations: list[str] = field(default_factory=list)  # this attempt's changes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Progress:
    """Where training stands; everything a resumed run needs besides the tensors' states."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches done in the epoch in progress
    step: int = 0  # optimizer steps done in total
    run_loss_sum: float = 0.0  # since the last train/loss report
    run_steps: int = 0
    epoch_loss_sum: float = 0.0  # sample-weighted, over the epoch in progress
    epoch_correct: int = 0
    epoch_seen: int = 0
    seconds: float = 0.0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)  # epoch-end metrics
    micro_batch: int = 0  # the micro-batch memory allowed (memory.py); 0: the whole batch
    batch_size: int = 0  # images per step; 0 in checkpoints written before batch_size auto


def run_finetune(
    config: FinetuneConfig,
    artifact_dir: Path,
    reporter: Reporter,
    *,
    resume_from: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> FinetuneResult:
    """Train, evaluate and save the model under `artifact_dir`; see the module docstring.

    Resumes from `resume_from`, else from artifact_dir/checkpoints/last.pt when it exists.
    Raises TrainingPreempted (after checkpointing) once `should_stop()` returns True, and
    data.DatasetError, before training, when the dataset cannot be trained on.
    """
    started = time.monotonic()
    artifact_dir = Path(artifact_dir)
    (artifact_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    device = _pick_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get(LOCAL_RANK_ENV, "0")))
        torch.cuda.set_device(device)
    collective = collective_from_env(device)
    try:
        return _train(
            config, artifact_dir, reporter, collective, device, resume_from, should_stop, started
        )
    finally:
        collective.close()


def _train(
    config: FinetuneConfig,
    artifact_dir: Path,
    main_reporter: Reporter,
    collective: Collective,
    device: torch.device,
    resume_from: Path | None,
    should_stop: Callable[[], bool],
    started: float,
) -> FinetuneResult:
    is_main = collective.rank == 0
    reporter: Reporter = main_reporter if is_main else NullReporter()
    checkpoint_path = artifact_dir / "checkpoints" / "last.pt"
    torch.manual_seed(config.seed)

    data = load_data(
        config.dataset_path,
        val_fraction=config.val_fraction,
        seed=config.seed,
        train_transform=train_transform(config.image_size, config.augmentation),
        eval_transform=eval_transform(config.image_size),
    )
    _log_skipped(reporter, data)
    model, descriptors = _build_model(config, data, artifact_dir, reporter)
    use_cuda = device.type == "cuda"
    model = model.to(device)
    if use_cuda:
        # channels_last + bf16 autocast is the fast path for convolutions on recent GPUs.
        model = model.to(memory_format=torch.channels_last)
    if descriptors is not None:
        descriptors = descriptors.to(device)
    progress = _Progress()
    source = resume_from if resume_from is not None else checkpoint_path
    checkpoint: dict[str, Any] | None = None
    if resume_from is not None or checkpoint_path.exists():
        checkpoint = load_checkpoint(Path(source), config, data.classes, data.train_size)
        progress = _Progress(**checkpoint["progress"])
    forward = _forward_fn(model, descriptors, device)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return training_loss(logits, labels, config.label_smoothing)

    if progress.batch_size:  # a checkpoint's, which may have been chosen by batch_size auto
        batch_size = progress.batch_size
    elif isinstance(config.batch_size, int):
        batch_size = config.batch_size
    else:
        batch_size = _probe_batch_size(
            config, data, model, forward, loss_fn, collective, device, reporter
        )
        reporter.metrics(0, {BATCH_SIZE_METRIC: float(batch_size)})
    if batch_size % collective.size:
        raise ValueError(
            f"{source}: the batch size it was trained with, {batch_size} (batch_size auto), "
            f"does not split over {collective.size} ranks; run with a number of ranks that "
            "divides it, or start over in a new artifact directory"
        )
    progress.batch_size = batch_size
    steps_per_epoch = max(1, data.train_size // batch_size)
    optimizer = build_optimizer(param_groups(model, config), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        scheduler.load_state_dict(checkpoint["scheduler_state"])
        if not is_main:  # rank 0's checkpoint holds the partial sums of all ranks
            progress.run_loss_sum = progress.epoch_loss_sum = 0.0
            progress.epoch_correct = progress.epoch_seen = 0
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if use_cuda and checkpoint["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        reporter.log(
            f"resuming from {source} at step {progress.step} "
            f"(epoch {progress.epoch + 1}, batch {progress.batch_in_epoch})"
        )
    elif config.pretrained_path is not None:
        path = Path(config.pretrained_path).expanduser()
        reporter.log(load_pretrained(model, path, data.classes))
    elif config.pretrained_weights is not None:
        reporter.log(load_named_weights(model, config.model, config.pretrained_weights))
    collective.broadcast_model(model)
    earlier_seconds = progress.seconds
    reporter.log(
        f"fine-tuning {config.model} ({config.model_type}, strategy {config.strategy}) on "
        f"{data.train_size} train / {data.val_size} val images, {len(data.classes)} classes, "
        f"device {device}, {steps_per_epoch} steps per epoch, {config.epochs} epochs"
        + (
            f", {collective.size} ranks ({collective.backend}), "
            f"{batch_size // collective.size} images per rank and step"
            if collective.size > 1
            else ""
        )
    )
    per_rank = batch_size // collective.size
    fixed = config.micro_batch if isinstance(config.micro_batch, int) else 0
    micro = MicroBatching(
        per_rank,
        config.image_size,
        device,
        reporter,
        progress.micro_batch or fixed,
        grow=not fixed,
    )
    evaluate = micro.evaluating(forward)

    # With batch_size auto the probe has already found a batch that fits in one pass.
    if config.micro_batch == "auto" and progress.micro_batch == 0 and config.batch_size != "auto":
        # Keeps the RNG as it was, so that a probed run trains as an unprobed one would.
        rng = torch.get_rng_state()
        images, labels, indices = _first_images(data, min(per_rank, data.train_size))
        apply_strategy(model, config, progress.epoch)
        micro.probe(model, forward, loss_fn, images, labels.to(device), indices)
        torch.set_rng_state(rng)

    def save_checkpoint() -> None:
        if not is_main:
            return
        progress.seconds = earlier_seconds + (time.monotonic() - started)
        progress.micro_batch = micro.size
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                **_model_description(config, data),
                "config": config.model_dump(mode="json"),
                "train_size": data.train_size,
                "complete": progress.epoch >= config.epochs or progress.stopped_early,
                "model_state": cpu_state(model),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "progress": asdict(progress),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if use_cuda else [],
                },
            },
            checkpoint_path,
        )
        reporter.checkpoint(checkpoint_path, progress.epoch, progress.step)

    loading = plan_loading(
        config.num_workers,
        config.prefetch_factor,
        cpus=len(os.sched_getaffinity(0)),
        available_bytes=psutil.virtual_memory().available,
        ranks_on_host=config.workers_per_host,
        batch_size=per_rank,
        image_size=config.image_size,
    )
    reporter.log(f"data loading: {loading.why}")
    val_loader = DataLoader(
        data.val,
        batch_size=batch_size,
        shuffle=False,
        num_workers=loading.workers,
        prefetch_factor=loading.prefetch,
        pin_memory=use_cuda,
    )
    planned: int | None = None
    trace = SampleTrace(collective.rank, collective.size)
    while progress.epoch < config.epochs and not progress.stopped_early:
        epoch = progress.epoch
        trainable = apply_strategy(model, config, epoch)
        if trainable != planned:
            reporter.log(describe_plan(model, config, epoch))
            planned = trainable
        batches = epoch_batches(data.train_size, batch_size, config.seed + epoch)
        # This rank's slice of every global batch.
        shards = [batch[collective.rank :: collective.size] for batch in batches]
        loader = DataLoader(
            data.train,
            batch_sampler=shards[progress.batch_in_epoch :],
            num_workers=loading.workers,
            prefetch_factor=loading.prefetch,
            pin_memory=use_cuda,
            # Only seeds the loader's worker processes; keeps the global RNG untouched.
            generator=torch.Generator().manual_seed(config.seed + epoch),
        )
        for images, labels, indices in loader:
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits, loss_value = micro.train_step(
                model, forward, loss_fn, images, labels, indices, progress.step + 1
            )
            stop = optimizer_step(
                model,
                optimizer,
                scheduler,
                config.grad_clip_norm,
                sync=lambda params: collective.average_gradients(params, should_stop()),
            )

            progress.step += 1
            progress.batch_in_epoch += 1
            trace.record(progress.step, indices.tolist())
            progress.run_loss_sum += loss_value
            progress.run_steps += 1
            progress.epoch_loss_sum += loss_value * len(labels)
            progress.epoch_correct += int((logits.argmax(dim=1) == labels).sum().item())
            progress.epoch_seen += len(labels)
            if progress.step % config.log_every_steps == 0:
                (run_loss_sum,) = collective.sum([progress.run_loss_sum])
                step_metrics = {"train/loss": run_loss_sum / collective.size / progress.run_steps}
                if config.visualization_level == "detailed":
                    step_metrics["lr"] = float(optimizer.param_groups[0]["lr"])
                if config.visualization_level != "minimal":
                    reporter.metrics(progress.step, step_metrics)
                progress.run_loss_sum, progress.run_steps = 0.0, 0
            if stop:
                # The epoch so far, over all ranks, goes into rank 0's checkpoint; on resume
                # the other ranks start these sums from zero (see below).
                totals = collective.sum(
                    [
                        progress.run_loss_sum,
                        progress.epoch_loss_sum,
                        progress.epoch_correct,
                        progress.epoch_seen,
                    ]
                )
                progress.run_loss_sum, progress.epoch_loss_sum = totals[0], totals[1]
                progress.epoch_correct, progress.epoch_seen = int(totals[2]), int(totals[3])
                save_checkpoint()
                raise TrainingPreempted(checkpoint_path, progress.epoch, progress.step)

        model.eval()
        val = predict(evaluate, val_loader)
        report = evaluation_report(val, data.classes, config.top_k)
        loss_sum, correct, seen = collective.sum(
            [progress.epoch_loss_sum, progress.epoch_correct, progress.epoch_seen]
        )
        epoch_metrics = {
            "train/loss_epoch": loss_sum / max(1, seen),
            "train/accuracy": correct / max(1, seen),
            "val/loss": val.loss,
            "val/accuracy": val.accuracy,
            "val/macro_f1": report["macro_f1"],
            "lr": float(optimizer.param_groups[0]["lr"]),
            "epoch": float(epoch + 1),
        }
        if config.visualization_level == "detailed":
            for name, scores in report["per_class"].items():
                epoch_metrics[f"val/f1/{name}"] = scores["f1"]
        # Metrics first, then the checkpoint. A crash in between makes the next attempt redo
        # this epoch from the previous checkpoint and report the same steps with the same
        # values (the order and RNG are restored), which the coordinator deduplicates; the
        # other order could lose this epoch's metrics for good.
        reporter.metrics(progress.step, epoch_metrics)
        progress.history.append(epoch_metrics)
        progress.epoch += 1
        progress.batch_in_epoch = 0
        progress.epoch_loss_sum, progress.epoch_correct, progress.epoch_seen = 0.0, 0, 0
        _update_early_stopping(progress, val.loss, config, reporter)
        save_checkpoint()

    if not progress.history:
        raise RuntimeError(f"{source} says training is complete but holds no epoch metrics")

    # Re-evaluated rather than read from the history, so that a finished run asked to run
    # again checks the saved model against the dataset as it is now.
    model.eval()
    final = predict(evaluate, val_loader)
    model_path = artifact_dir / "model.pt"
    if is_main:
        atomic_torch_save(
            {
                "format": MODEL_FORMAT,
                "model_state": cpu_state(model),
                **_model_description(config, data),
                "config": config.model_dump(mode="json"),
            },
            model_path,
        )
    result = FinetuneResult(
        val_accuracy=final.accuracy,
        val_loss=final.loss,
        train_accuracy=progress.history[-1]["train/accuracy"],
        epochs=progress.epoch,
        steps=progress.step,
        classes=list(data.classes),
        model_path=str(model_path),
        checkpoint_path=str(checkpoint_path),
        seconds=earlier_seconds + (time.monotonic() - started),
        evaluation=evaluation_report(final, data.classes, config.top_k),
        stopped_early=progress.stopped_early,
        skipped_images=len(data.skipped),
        model_type=config.model_type,
        strategy=config.strategy,
        micro_batch=micro.size,
        batch_size=batch_size,
        memory_adaptations=list(micro.changes),
    )
    if is_main:
        atomic_write_text(
            artifact_dir / "result.json", json.dumps(result.to_dict(), indent=2) + "\n"
        )
    reporter.log(
        f"done: val accuracy {result.val_accuracy:.3f}, macro-F1 "
        f"{result.evaluation['macro_f1']:.3f}, val loss {result.val_loss:.4f} after "
        f"{result.epochs} epochs / {result.steps} steps"
        + (" (stopped early)" if result.stopped_early else "")
    )
    return result


def _first_images(data: Data, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `count` training images, labels and indices, as one batch."""
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = next(
        iter(DataLoader(data.train, batch_sampler=[list(range(count))]))
    )
    return batch


def _probe_batch_size(
    config: FinetuneConfig,
    data: Data,
    model: nn.Module,
    forward: Forward,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    collective: Collective,
    device: torch.device,
    reporter: Reporter,
) -> int:
    """batch_size auto: the largest batch every rank fits (memory.probe_batch_size), as a
    multiple of the ranks, at most AUTO_BATCH_MAX images and a quarter of the training set."""
    most = max(1, min(AUTO_BATCH_MAX, data.train_size // AUTO_BATCH_MIN_STEPS) // collective.size)
    # The probe's passes must not change what training does: the RNG (augmentations, dropout)
    # is put back after them, as the model's buffers and gradients are inside the probe.
    rng = torch.get_rng_state()
    apply_strategy(model, config, 0)
    fits = probe_batch_size(
        model,
        forward,
        loss_fn,
        lambda count: _first_images(data, count),
        most,
        config.image_size,
        device,
        reporter,
        host_share=config.workers_per_host if device.type == "cpu" else 1,
    )
    torch.set_rng_state(rng)
    # The largest size every rank fits: ranks fitting each size, summed.
    sizes = probe_sizes(most)
    counts = collective.sum([float(size <= fits) for size in sizes])
    per_rank = max(s for s, n in zip(sizes, counts, strict=True) if n == collective.size)
    return per_rank * collective.size


def _build_model(
    config: FinetuneConfig, data: Data, artifact_dir: Path, reporter: Reporter
) -> tuple[nn.Module, torch.Tensor | None]:
    """The model, and for a hybrid one the descriptor table (one row per image in data.paths)
    after setting the model's standardisation from the training split."""
    classes, dense, dropout = len(data.classes), config.dense_units, config.dropout_rate
    if config.model_type == "cnn":
        return build_model(config.model, classes, dense_units=dense, dropout_rate=dropout), None
    model = build_hybrid(
        config.model,
        classes,
        descriptor_dim(config.descriptors),
        dense_units=dense,
        dropout_rate=dropout,
    )
    began = time.monotonic()
    table = torch.from_numpy(
        describe_files(data.paths, config.descriptors, artifact_dir / "cache")
    ).clone()
    train_rows = table[data.train_indices]
    model.set_descriptor_stats(train_rows.mean(dim=0), train_rows.std(dim=0, unbiased=False))
    reporter.log(
        f"descriptors {', '.join(config.descriptors)}: {table.shape[1]} values per image for "
        f"{len(data.paths)} images ({time.monotonic() - began:.1f} s)"
    )
    return model, table


def _forward_fn(
    model: nn.Module, descriptors: torch.Tensor | None, device: torch.device
) -> Forward:
    use_cuda = device.type == "cuda"
    oom_limit = simulated_limit()

    def forward(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        check_simulated_limit(len(images), oom_limit)
        images = images.to(device, non_blocking=True)
        if use_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
            if descriptors is None:
                logits: torch.Tensor = model(images)
            else:
                logits = model(images, descriptors[indices.to(descriptors.device)])
        return logits.float()

    return forward


def _update_early_stopping(
    progress: _Progress, val_loss: float, config: FinetuneConfig, reporter: Reporter
) -> None:
    if val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        progress.epochs_without_improvement = 0
        return
    progress.epochs_without_improvement += 1
    patience = config.early_stopping_patience
    if patience is not None and progress.epochs_without_improvement >= patience:
        progress.stopped_early = progress.epoch < config.epochs
        if progress.stopped_early:
            reporter.log(
                f"early stopping after epoch {progress.epoch}: validation loss has not "
                f"improved on {progress.best_val_loss:.4f} for {patience} epochs"
            )


def _model_description(config: FinetuneConfig, data: Data) -> dict[str, Any]:
    """What models.model_from_file needs to rebuild the network."""
    return {
        "model": config.model,
        "model_type": config.model_type,
        "descriptors": list(config.descriptors) if config.model_type == "hybrid" else [],
        "image_size": config.image_size,
        "classes": list(data.classes),
    }


def _log_skipped(reporter: Reporter, data: Data) -> None:
    if not data.skipped:
        return
    for path, reason in data.skipped[:_SKIPPED_NAMED]:
        reporter.log(f"warning: skipping unreadable image {path}: {reason}")
    more = len(data.skipped) - _SKIPPED_NAMED
    reporter.log(
        f"warning: skipped {len(data.skipped)} unreadable images"
        + (f" ({more} not named above)" if more > 0 else "")
    )


def _pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config.device is 'cuda' but CUDA is not available on this host")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
