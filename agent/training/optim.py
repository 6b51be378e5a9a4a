"""The optimizer, the learning-rate schedule, and one optimisation step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from matrec.common.specs import FinetuneConfig
from torch import nn
from torch.nn import functional as F


def build_optimizer(groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


def lr_factor(step: int, config: FinetuneConfig, steps_per_epoch: int) -> float:
    """The multiple of each param group's learning rate used by optimizer step `step` (0-based).

    The schedule (cosine to 0 over the whole run, step decay by `gamma` every
    `step_size_epochs`, or constant) is multiplied by a linear warm-up from 1/W to 1 over the
    first W = warmup_epochs * steps_per_epoch steps.
    """
    total = steps_per_epoch * config.epochs
    if config.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * step / total))
    elif config.schedule == "step":
        factor = config.gamma ** (step // (config.step_size_epochs * steps_per_epoch))
    else:
        factor = 1.0
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        factor *= (step + 1) / warmup
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, steps_per_epoch)
    )


def training_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip_norm: float | None,
    sync: Callable[[list[nn.Parameter]], bool] | None = None,
) -> bool:
    """Step with the gradients the step's backward passes left in .grad: `sync` them (a
    distributed run averages them over its ranks), clip their global norm when asked, step, and
    advance the schedule. Returns what `sync` returned (whether the ranks agreed to stop), False
    without one."""
    params = [p for p in model.parameters() if p.grad is not None]
    agreed = sync(params) if sync is not None else False
    if grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(params, grad_clip_norm)
    optimizer.step()
    scheduler.step()
    return agreed
