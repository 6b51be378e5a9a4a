"""Checkpoint and model files: their format, atomic writes, and the checks before a resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from matrec.common.specs import FinetuneConfig
from torch import nn

CHECKPOINT_FORMAT = "matrec-checkpoint"
MODEL_FORMAT = "matrec-model"
CHECKPOINT_VERSION = 2  # 2: strategies, hybrid models, early stopping

# Config fields that may change between attempts without invalidating a checkpoint.
RESUME_TOLERANT_FIELDS = frozenset(
    {
        "dataset_path",
        "pretrained_path",
        "pretrained_weights",
        "num_workers",
        "prefetch_factor",
        "log_every_steps",
        "visualization_level",
        "device",
        "top_k",
        # The ranks split each global batch; any number of them takes the same steps.
        "workers_per_host",
        "hosts",
        "network_interface",
        "backend",
    }
)


def load_checkpoint(
    path: Path, config: FinetuneConfig, classes: list[str], train_size: int
) -> dict[str, Any]:
    """Read a training checkpoint and check that it belongs to this config and dataset."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a matrec training checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: unsupported checkpoint version {checkpoint.get('version')!r}; "
            "use a new artifact directory to start over"
        )
    if checkpoint["classes"] != classes:
        raise ValueError(
            f"{path} was trained on classes {checkpoint['classes']}, the dataset now has "
            f"{classes}; use a new artifact directory to start over"
        )
    if checkpoint["train_size"] != train_size:
        raise ValueError(
            f"{path} was trained on {checkpoint['train_size']} images, the dataset now has "
            f"{train_size}; use a new artifact directory to start over"
        )
    # A field added to FinetuneConfig after the checkpoint was written (such as dense_units)
    # counts as its default there: the code that wrote the checkpoint behaved that way.
    defaults = FinetuneConfig.model_construct(dataset_path="").model_dump(mode="json")
    saved = {**defaults, **checkpoint["config"]}
    current = config.model_dump(mode="json")
    changed = sorted(
        key
        for key in current.keys() | saved.keys()
        if key not in RESUME_TOLERANT_FIELDS and current.get(key) != saved.get(key)
    )
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written for a different config ({detail}); "
            "use a new artifact directory to start over"
        )
    return checkpoint


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().to("cpu", memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }


def atomic_torch_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
