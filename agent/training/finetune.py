"""Fine-tune a torchvision classifier on an ImageFolder dataset: the `finetune` job kind.

Resumable at any optimizer step: the shuffle order of epoch e is a function of (seed, e) and the
torch RNG state is checkpointed, so with num_workers=0 a resumed run reproduces the uninterrupted
one step for step. (With worker processes the augmentations of a resumed epoch may differ.)

Imported lazily, by worker processes only: it imports torch at module level.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from matrec.agent.training.reporting import Reporter
from matrec.common.specs import FinetuneConfig
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

CHECKPOINT_FORMAT = "matrec-checkpoint"
MODEL_FORMAT = "matrec-model"
CHECKPOINT_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Config fields that may change between attempts without invalidating a checkpoint.
_RESUME_TOLERANT_FIELDS = frozenset(
    {"dataset_path", "pretrained_path", "num_workers", "log_every_steps", "device"}
)


class TrainingPreempted(Exception):
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
    history: list[dict[str, float]] = field(default_factory=list)  # epoch-end metrics


@dataclass
class _Data:
    train: Dataset[tuple[torch.Tensor, int]]
    val: Dataset[tuple[torch.Tensor, int]]
    train_size: int
    val_size: int
    classes: list[str]


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
    Raises TrainingPreempted (after checkpointing) once `should_stop()` returns True.
    """
    started = time.monotonic()
    artifact_dir = Path(artifact_dir)
    checkpoint_path = artifact_dir / "checkpoints" / "last.pt"
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    device = _pick_device(config.device)
    torch.manual_seed(config.seed)

    data = _load_data(config)
    model = build_model(config.model, len(data.classes))
    head = head_name(model)
    if config.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head + ".")
    use_cuda = device.type == "cuda"
    model = model.to(device)
    if use_cuda:
        # channels_last + bf16 autocast is the fast path for convolutions on recent GPUs.
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, data.train_size // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    progress = _Progress()
    source = resume_from if resume_from is not None else checkpoint_path
    if resume_from is not None or checkpoint_path.exists():
        checkpoint = _load_checkpoint(Path(source), config, data)
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        scheduler.load_state_dict(checkpoint["scheduler_state"])
        progress = _Progress(**checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if use_cuda and checkpoint["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        reporter.log(
            f"resuming from {source} at step {progress.step} "
            f"(epoch {progress.epoch + 1}, batch {progress.batch_in_epoch})"
        )
    elif config.pretrained_path is not None:
        reporter.log(load_pretrained(model, Path(config.pretrained_path).expanduser()))
    earlier_seconds = progress.seconds
    reporter.log(
        f"fine-tuning {config.model} on {data.train_size} train / {data.val_size} val images, "
        f"{len(data.classes)} classes, device {device}, {steps_per_epoch} steps per epoch, "
        f"{config.epochs} epochs"
    )

    def save_checkpoint() -> None:
        progress.seconds = earlier_seconds + (time.monotonic() - started)
        _atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "model": config.model,
                "image_size": config.image_size,
                "classes": data.classes,
                "config": config.model_dump(mode="json"),
                "train_size": data.train_size,
                "complete": progress.epoch >= config.epochs,
                "model_state": _cpu_state(model),
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

    val_loader = DataLoader(
        data.val,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        pin_memory=use_cuda,
    )
    set_train_mode(model, head, freeze_backbone=config.freeze_backbone)
    while progress.epoch < config.epochs:
        epoch = progress.epoch
        batches = epoch_batches(data.train_size, config.batch_size, config.seed + epoch)
        loader = DataLoader(
            data.train,
            batch_sampler=batches[progress.batch_in_epoch :],
            num_workers=config.num_workers,
            pin_memory=use_cuda,
            # Only seeds the loader's worker processes; keeps the global RNG untouched.
            generator=torch.Generator().manual_seed(config.seed + epoch),
        )
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if use_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            loss_value = loss.item()
            progress.step += 1
            progress.batch_in_epoch += 1
            progress.run_loss_sum += loss_value
            progress.run_steps += 1
            progress.epoch_loss_sum += loss_value * len(labels)
            progress.epoch_correct += int((logits.argmax(dim=1) == labels).sum().item())
            progress.epoch_seen += len(labels)
            if progress.step % config.log_every_steps == 0:
                reporter.metrics(
                    progress.step, {"train/loss": progress.run_loss_sum / progress.run_steps}
                )
                progress.run_loss_sum, progress.run_steps = 0.0, 0
            if should_stop():
                save_checkpoint()
                raise TrainingPreempted(checkpoint_path, progress.epoch, progress.step)

        val_loss, val_accuracy = evaluate(model, val_loader, device)
        set_train_mode(model, head, freeze_backbone=config.freeze_backbone)
        epoch_metrics = {
            "train/loss_epoch": progress.epoch_loss_sum / max(1, progress.epoch_seen),
            "train/accuracy": progress.epoch_correct / max(1, progress.epoch_seen),
            "val/loss": val_loss,
            "val/accuracy": val_accuracy,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "epoch": float(epoch + 1),
        }
        # Metrics first, then the checkpoint. A crash in between makes the next attempt redo
        # this epoch from the previous checkpoint and report the same steps with the same
        # values (the order and RNG are restored), which the coordinator deduplicates; the
        # other order could lose this epoch's metrics for good.
        reporter.metrics(progress.step, epoch_metrics)
        progress.history.append(epoch_metrics)
        progress.epoch += 1
        progress.batch_in_epoch = 0
        progress.epoch_loss_sum, progress.epoch_correct, progress.epoch_seen = 0.0, 0, 0
        save_checkpoint()

    if not progress.history:
        raise RuntimeError(f"{source} says training is complete but holds no epoch metrics")
    # Re-evaluated rather than read from the history, so that a finished run asked to run
    # again checks the saved model against the dataset as it is now.
    val_loss, val_accuracy = evaluate(model, val_loader, device)
    model_path = artifact_dir / "model.pt"
    _atomic_torch_save(
        {
            "format": MODEL_FORMAT,
            "model_state": _cpu_state(model),
            "classes": data.classes,
            "model": config.model,
            "image_size": config.image_size,
            "config": config.model_dump(mode="json"),
        },
        model_path,
    )
    result = FinetuneResult(
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        train_accuracy=progress.history[-1]["train/accuracy"],
        epochs=progress.epoch,
        steps=progress.step,
        classes=list(data.classes),
        model_path=str(model_path),
        checkpoint_path=str(checkpoint_path),
        seconds=earlier_seconds + (time.monotonic() - started),
    )
    _atomic_write_text(artifact_dir / "result.json", json.dumps(result.to_dict(), indent=2) + "\n")
    reporter.log(
        f"done: val accuracy {val_accuracy:.3f}, val loss {val_loss:.4f} after "
        f"{result.epochs} epochs / {result.steps} steps"
    )
    return result


def build_model(name: str, num_classes: int) -> nn.Module:
    """A torchvision classifier with random weights and a new `num_classes`-way head."""
    constructor = getattr(torchvision.models, name, None)
    if constructor is None:
        raise ValueError(f"torchvision has no model named {name!r}")
    model: nn.Module = constructor(weights=None)
    head = head_name(model)
    old = model.get_submodule(head)
    assert isinstance(old, nn.Linear)
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(old.in_features, num_classes))
    return model


def head_name(model: nn.Module) -> str:
    """The dotted name of the final Linear layer: `fc` (ResNets) or `classifier.N` (others)."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        return f"classifier.{len(classifier) - 1}"
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def set_train_mode(model: nn.Module, head: str, *, freeze_backbone: bool) -> None:
    """Train mode; with a frozen backbone only the head block trains (BN statistics stay put)."""
    if not freeze_backbone:
        model.train()
        return
    model.eval()
    model.get_submodule(head.split(".")[0]).train()


def load_pretrained(model: nn.Module, path: Path) -> str:
    """Load every tensor of `path` whose name and shape match `model`; return a summary line.

    `path` is a matrec checkpoint or model (a dict with "model_state") or a plain state_dict.
    Tensors that do not fit, such as a head for other classes, are skipped. Raises ValueError
    when nothing matches, which means the file is for another architecture.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read pretrained weights {path}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state"), dict):
        loaded = loaded["model_state"]
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
    state = {
        key.removeprefix("module."): value
        for key, value in loaded.items()
        if isinstance(key, str) and isinstance(value, torch.Tensor)
    }
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(
            f"none of the {len(state)} tensors in {path} match {type(model).__name__} "
            f"(e.g. {next(iter(state), 'nothing')!r}); is it weights for another architecture?"
        )
    model.load_state_dict(matched, strict=False)
    skipped = sorted(k for k in state if k in own and k not in matched)
    missing = [k for k in own if k not in matched]
    summary = f"loaded {len(matched)}/{len(own)} tensors from {path}"
    if skipped:
        summary += f"; skipped for shape: {', '.join(skipped)}"
    if missing:
        summary += f"; {len(missing)} left as initialised"
    return summary


def epoch_batches(size: int, batch_size: int, seed: int) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation cut into full batches (one partial batch
    only when the whole set is smaller than a batch)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    if size < batch_size:
        return [order]
    return [order[i : i + batch_size] for i in range(0, size - batch_size + 1, batch_size)]


def evaluate(
    model: nn.Module, loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over `loader`."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    use_cuda = device.type == "cuda"
    with torch.inference_mode():
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if use_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
                logits = model(images).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == labels).sum().item())
            seen += len(labels)
    if seen == 0:
        return math.nan, math.nan
    return loss_sum / seen, correct / seen


def train_transform(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(image_size / 0.875), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def split_indices(
    targets: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out `val_fraction` of each class (at least one image when a class has two or more),
    chosen by a seeded permutation. Returns sorted (train, val) indices."""
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    for target in sorted(by_class):
        indices = by_class[target]
        order = torch.randperm(len(indices), generator=generator).tolist()
        n_val = min(len(indices) - 1, max(1, round(len(indices) * val_fraction)))
        val.extend(indices[i] for i in order[:n_val])
        train.extend(indices[i] for i in order[n_val:])
    return sorted(train), sorted(val)


def _load_data(config: FinetuneConfig) -> _Data:
    root = Path(config.dataset_path).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset_path {str(root)!r} is not a directory")
    train_tf = train_transform(config.image_size)
    val_tf = eval_transform(config.image_size)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_folder = datasets.ImageFolder(root / "train", transform=train_tf)
        val_folder = datasets.ImageFolder(root / "val", transform=val_tf)
        if val_folder.classes != train_folder.classes:
            raise ValueError(
                f"{root}: train/ and val/ have different class folders "
                f"({train_folder.classes} vs {val_folder.classes})"
            )
        data = _Data(
            train=train_folder,
            val=val_folder,
            train_size=len(train_folder),
            val_size=len(val_folder),
            classes=list(train_folder.classes),
        )
    else:
        folder_root = root / "train" if (root / "train").is_dir() else root
        train_folder = datasets.ImageFolder(folder_root, transform=train_tf)
        val_folder = datasets.ImageFolder(folder_root, transform=val_tf)
        train_idx, val_idx = split_indices(train_folder.targets, config.val_fraction, config.seed)
        data = _Data(
            train=Subset(train_folder, train_idx),
            val=Subset(val_folder, val_idx),
            train_size=len(train_idx),
            val_size=len(val_idx),
            classes=list(train_folder.classes),
        )
    if len(data.classes) < 2:
        raise ValueError(f"{root}: needs at least two class folders, found {data.classes}")
    if data.val_size == 0:
        raise ValueError(f"{root}: no validation images (every class needs two or more images)")
    return data


def _load_checkpoint(path: Path, config: FinetuneConfig, data: _Data) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a matrec training checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {checkpoint.get('version')!r}")
    if checkpoint["classes"] != data.classes:
        raise ValueError(
            f"{path} was trained on classes {checkpoint['classes']}, the dataset now has "
            f"{data.classes}; use a new artifact directory to start over"
        )
    if checkpoint["train_size"] != data.train_size:
        raise ValueError(
            f"{path} was trained on {checkpoint['train_size']} images, the dataset now has "
            f"{data.train_size}; use a new artifact directory to start over"
        )
    saved = checkpoint["config"]
    current = config.model_dump(mode="json")
    changed = sorted(
        key
        for key in current.keys() | saved.keys()
        if key not in _RESUME_TOLERANT_FIELDS and current.get(key) != saved.get(key)
    )
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written for a different config ({detail}); "
            "use a new artifact directory to start over"
        )
    return checkpoint


def _pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config.device is 'cuda' but CUDA is not available on this host")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().to("cpu", memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }


def _atomic_torch_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
