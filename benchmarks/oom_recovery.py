"""Out-of-memory recovery on a real device (issue 22): a batch that does not fit trains in the
micro-batches recovery finds, at what throughput relative to the largest batch that fits.

    python benchmarks/oom_recovery.py [--device cuda] [--model resnet50] [--image-size 224]
        [--batch N] [--most 4096] [--steps 20] [--json OUT]

1. The batch-size probe (memory.probe_batch_size, batch_size auto's own code) finds the largest
   batch that fits, trying 2, 4, 8, ... up to --most images (margin: 85 % of GPU memory).
2. A step over --batch images (default: twice that, so it does not fit) runs through
   MicroBatching.train_step, the fine-tune's own step: it runs out of memory, halves, and
   continues; the micro-batch it settles on is reported.
3. Both are timed over --steps optimizer steps (after 2 untimed ones) on synthetic images
   preloaded on the device (data loading not measured); the table gives images per second and
   the ratio split / largest-fitting.

On a CPU (no real out-of-memory errors) set MATREC_TEST_OOM_ABOVE=N to exercise the same path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from matrec.agent.training import finetune, models, optim, strategies
from matrec.agent.training.memory import MicroBatching, probe_batch_size
from matrec.agent.training.reporting import NullReporter
from matrec.common.specs import FinetuneConfig


class _Log(NullReporter):
    def log(self, text: str) -> None:
        print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=0, help="0: twice the largest that fits")
    parser.add_argument("--most", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = FinetuneConfig(dataset_path="", model=args.model, image_size=args.image_size)
    model = models.build_model(args.model, 10).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = optim.build_optimizer(strategies.param_groups(model, config), config)
    scheduler = optim.build_scheduler(optimizer, config, 1000)
    forward = finetune._forward_fn(model, None, device)
    reporter = _Log()

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return optim.training_loss(logits, labels, 0.0)

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = args.image_size
        images = torch.randn(count, 3, size, size, device=device)
        return images, torch.randint(0, 10, (count,), device=device), torch.arange(count)

    model.train()
    fits = probe_batch_size(
        model, forward, loss_fn, sample, args.most, args.image_size, device, reporter
    )
    batch = args.batch or 2 * fits

    def throughput(size: int) -> tuple[float, int]:
        micro = MicroBatching(size, args.image_size, device, reporter)
        images, labels, indices = sample(size)
        for step in range(args.steps + 2):
            if step == 2:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            micro.train_step(model, forward, loss_fn, images, labels, indices, step + 1)
            optim.optimizer_step(model, optimizer, scheduler, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        del images, labels, indices
        return size * args.steps / seconds, micro.size

    split_rate, micro_batch = throughput(batch)
    # With the optimizer's state allocated the probed size may itself need splitting: reported.
    fit_rate, fit_micro_batch = throughput(fits)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": args.model,
        "image_size": args.image_size,
        "largest_batch_that_fits": fits,
        "batch": batch,
        "micro_batch_found": micro_batch,
        "micro_batch_at_largest_fitting": fit_micro_batch,
        "images_per_s_split": round(split_rate, 1),
        "images_per_s_largest_fitting": round(fit_rate, 1),
        "ratio": round(split_rate / fit_rate, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
