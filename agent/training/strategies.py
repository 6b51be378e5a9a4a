"""Fine-tuning strategies: which block groups train in an epoch, and at what learning rate.

The head always trains. Of the backbone's block groups (models.block_groups, input first):

* full: all of them.
* head_only: none (a frozen feature extractor).
* last_n: the last `trainable_blocks`.
* gradual: none in the first `unfreeze_every_epochs` epochs, then one more from the top every
  `unfreeze_every_epochs` epochs, until all train.
* discriminative: all of them; the group i places below the head learns at
  learning_rate * lr_decay**i (the head: i = 0), so features near the input, the most generic
  ones, move least.

A frozen group is also kept in eval mode, so its BatchNorm statistics stay those it was
pretrained with. The optimizer always holds every parameter, one param group per layer group,
so that its state and a checkpoint of it do not change shape when gradual unfreezing moves on;
parameters without gradients are left alone by AdamW and SGD alike.
"""

from __future__ import annotations

from typing import Any

from matrec.agent.training.models import block_groups, group_of, head_name
from matrec.common.specs import FinetuneConfig
from torch import nn


def trainable_group_count(config: FinetuneConfig, groups: int, epoch: int) -> int:
    """How many block groups, counted from the top, train in `epoch` (0-based)."""
    match config.strategy:
        case "full" | "discriminative":
            return groups
        case "head_only":
            return 0
        case "last_n":
            return min(config.trainable_blocks, groups)
        case "gradual":
            return min(groups, epoch // config.unfreeze_every_epochs)
    raise ValueError(f"unknown strategy {config.strategy!r}")


def apply_strategy(model: nn.Module, config: FinetuneConfig, epoch: int) -> int:
    """Set requires_grad for `epoch` and put the model in train mode with frozen groups in eval
    mode. Returns the number of block groups that train."""
    groups = block_groups(model)
    count = trainable_group_count(config, len(groups), epoch)
    frozen = groups[: len(groups) - count]
    frozen_prefixes = tuple(prefix + "." for group in frozen for prefix in group)
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(frozen_prefixes)
    model.train()
    for group in frozen:
        for prefix in group:
            model.get_submodule(prefix).eval()
    return count


def param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimizer param groups: the head first, then the block groups from the top down."""
    groups = block_groups(model)
    head = head_name(model) + "."
    by_group: list[list[nn.Parameter]] = [[] for _ in range(len(groups) + 1)]
    for name, param in model.named_parameters():
        if name.startswith(head):
            by_group[0].append(param)
            continue
        index = group_of(name, groups)
        if index is None:
            raise ValueError(f"parameter {name} is in no block group of {type(model).__name__}")
        by_group[len(groups) - index].append(param)
    decay = config.lr_decay if config.strategy == "discriminative" else 1.0
    return [
        {"params": params, "lr": config.learning_rate * decay**depth}
        for depth, params in enumerate(by_group)
        if params
    ]


def describe_plan(model: nn.Module, config: FinetuneConfig, epoch: int) -> str:
    """One log line: what trains in `epoch`."""
    total = len(block_groups(model))
    count = trainable_group_count(config, total, epoch)
    what = "the head only" if count == 0 else f"the head and the top {count}/{total} block groups"
    return f"epoch {epoch + 1}: strategy {config.strategy}, training {what}"
