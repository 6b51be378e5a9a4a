"""Training-step throughput of the engine versus a plain hand-written PyTorch loop.

    python benchmarks/engine_throughput.py [--device cpu|cuda] [--model resnet18] [--json OUT]

Both train the same architecture (same initial weights) on the same synthetic batches, which are
preloaded on the device so that data loading is not measured, with AdamW and a cosine schedule.

* engine: the finetune engine's own step, built from its modules exactly as `run_finetune`'s
  loop runs it: the model from `models.build_model`, parameter groups from
  `strategies.param_groups` (strategy full), `optim.build_optimizer` / `build_scheduler`, the
  forward function of `finetune` (on CUDA: channels_last input and bf16 autocast), then
  `optim.training_loss`, `optim.optimizer_step` and the loop's per-step bookkeeping (the loss
  and the correct count read back to the host).
* hand loop: torchvision's constructor, `torch.optim.AdamW`, `CosineAnnealingLR`, and
  zero_grad / forward / cross-entropy / backward / step, with nothing read back per step.

After `--warmup` untimed steps each, the two alternate in timed blocks of `--block` steps
(`--rounds` x `--steps` steps per side; which side goes first flips every pair of blocks),
synchronised before and after each block. On the CPU a block is one step, so that a load spike of
a busy shared machine hits both sides alike; on CUDA a block is `--steps` steps, so that the hand
loop keeps its asynchronous queue and the engine pays for its per-step read-backs. The table shows
the median images per second of each side and the median over block pairs of the ratio
engine / hand loop (target >= 0.97).

With --collective horovod (or torch) the engine's step goes through a one-rank collective as a
distributed job's does: rank 0's weights broadcast at the start (contiguous copies, so a
channels_last model survives it) and the gradients averaged in one flat allreduce per step. On an
H100 the naive Horovod path reached 56 % of the best plain loop (ARCHITECTURE.md); this measures
the engine's way against the same hand loop.

With --device cuda two settings are measured: channels_last + bf16 autocast (the engine's only
CUDA path, and the hand loop doing the same) and plain NCHW fp32 (the hand loop, and the
engine's step with an NCHW fp32 forward, since the engine itself has no such mode on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from matrec.agent.training.collective import Collective

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class Figure:
    setting: str  # "plain" (NCHW fp32) or "channels_last+bf16"
    engine_images_per_s: float  # median over steps
    hand_images_per_s: float
    ratio: float  # median over step pairs of hand seconds / engine seconds
    engine_blocks: list[float]  # images per second of every timed block
    hand_blocks: list[float]


def one_rank_collective(kind: str, device: torch.device) -> Collective:
    """A collective of one rank, as a distributed job's rank 0 has (size 1: no peers)."""
    from matrec.agent.training import collective

    if kind == "none":
        return collective.SingleProcess()
    if kind == "horovod":
        return collective.HorovodCollective()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    return collective.TorchDistributed(0, 1, 0, device)


def engine_step(
    model_name: str,
    classes: int,
    device: torch.device,
    fast: bool,
    steps_per_epoch: int,
    collective: Collective,
) -> Step:
    """One optimisation step as the engine's training loop takes it."""
    from matrec.agent.training import finetune, models, optim, strategies
    from matrec.common.specs import FinetuneConfig

    config = FinetuneConfig(dataset_path="/unused", model=model_name, epochs=1000)
    torch.manual_seed(0)
    model = models.build_model(model_name, classes).to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    collective.broadcast_model(model)
    model.train()
    strategies.apply_strategy(model, config, 0)
    optimizer = optim.build_optimizer(strategies.param_groups(model, config), config)
    scheduler = optim.build_scheduler(optimizer, config, steps_per_epoch)
    if fast or device.type == "cpu":
        forward = finetune._forward_fn(model, None, device)
    else:
        forward = plain_forward(model, device)

    def step(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        logits = forward(images, indices)
        loss = optim.training_loss(logits, labels, config.label_smoothing)
        optim.optimizer_step(
            loss,
            model,
            optimizer,
            scheduler,
            config.grad_clip_norm,
            sync=lambda params: collective.average_gradients(params, False),
        )
        # The loop's bookkeeping: both values go to the host every step.
        loss.item()
        int((logits.argmax(dim=1) == labels).sum().item())

    return step


def plain_forward(
    model: nn.Module, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def forward(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = model(images.to(device, non_blocking=True))
        return logits.float()

    return forward


def hand_step(model_name: str, classes: int, device: torch.device, fast: bool, total: int) -> Step:
    """The loop anyone would write from the PyTorch tutorials."""
    torch.manual_seed(0)
    model: nn.Module = getattr(torchvision.models, model_name)(weights=None, num_classes=classes)
    model = model.to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)

    def step(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        if fast:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return step


def block_seconds(
    step: Step,
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    first: int,
    count: int,
    device: torch.device,
) -> float:
    """Seconds for `count` steps, synchronised before and after."""
    sync(device)
    started = time.perf_counter()
    for i in range(first, first + count):
        step(*batches[i % len(batches)])
    sync(device)
    return time.perf_counter() - started


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, device: torch.device, fast: bool) -> Figure:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.distinct_batches):
        images = torch.randn(
            args.batch_size, 3, args.image_size, args.image_size, generator=generator
        )
        labels = torch.randint(0, args.classes, (args.batch_size,), generator=generator)
        indices = torch.arange(args.batch_size)
        batches.append((images.to(device), labels.to(device), indices))
    total = args.rounds * args.steps + args.warmup + 1
    steps_per_epoch = total
    makers: dict[str, Callable[[], Step]] = {
        "engine": lambda: engine_step(
            args.model, args.classes, device, fast, steps_per_epoch, args.collective_instance
        ),
        "hand": lambda: hand_step(args.model, args.classes, device, fast, total),
    }
    step_fns = {name: make() for name, make in makers.items()}
    for i in range(args.warmup):
        for name in step_fns:
            step_fns[name](*batches[i % len(batches)])
    # Block by block, alternating which side goes first: a load spike on a shared machine then
    # hits both sides alike, and each pair of blocks gives one ratio.
    seconds: dict[str, list[float]] = {"engine": [], "hand": []}
    pair_ratios: list[float] = []
    for pair_index in range(args.rounds * args.steps // args.block):
        first = pair_index * args.block
        order = ["engine", "hand"] if pair_index % 2 == 0 else ["hand", "engine"]
        pair = {
            name: block_seconds(step_fns[name], batches, first, args.block, device)
            for name in order
        }
        for name, value in pair.items():
            seconds[name].append(value)
        pair_ratios.append(pair["hand"] / pair["engine"])
    images = args.block * args.batch_size
    rates = {name: [images / value for value in values] for name, values in seconds.items()}
    setting = "channels_last+bf16" if fast else "plain"
    return Figure(
        setting=setting,
        engine_images_per_s=statistics.median(rates["engine"]),
        hand_images_per_s=statistics.median(rates["hand"]),
        ratio=statistics.median(pair_ratios),
        engine_blocks=rates["engine"],
        hand_blocks=rates["hand"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, help="default 32 on CPU, 256 on CUDA")
    parser.add_argument("--image-size", type=int, help="default 64 on CPU, 224 on CUDA")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--steps", type=int, help="timed pairs per round (10 CPU, 50 CUDA)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--block", type=int, help="steps per timed block (default 1 on CPU, --steps on CUDA)"
    )
    parser.add_argument("--distinct-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--collective",
        choices=("none", "horovod", "torch"),
        default="none",
        help="run the engine's step as a one-rank distributed job of this backend",
    )
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.image_size = args.image_size or (224 if cuda else 64)
    args.steps = args.steps or (50 if cuda else 10)
    args.block = max(1, min(args.block or (args.steps if cuda else 1), args.steps))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    args.collective_instance = one_rank_collective(args.collective, device)

    figures = [measure(args, device, fast=True)] if cuda else []
    figures.append(measure(args, device, fast=False))

    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.model}, batch {args.batch_size}, {args.image_size} px, {args.classes} classes, "
        f"{args.rounds} rounds x {args.steps} steps; {name}; torch {torch.__version__}; "
        f"engine collective: {args.collective}"
    )
    print()
    print("| setting | engine img/s | hand loop img/s | engine / hand |")
    print("|---|---|---|---|")
    for figure in figures:
        print(
            f"| {figure.setting} | {figure.engine_images_per_s:.1f} | "
            f"{figure.hand_images_per_s:.1f} | {figure.ratio:.3f} |"
        )
    if args.json is not None:
        payload: dict[str, Any] = {
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k != "collective_instance"
            },
            "device_name": name,
            "torch": torch.__version__,
            "figures": [asdict(f) for f in figures],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
